"""Custom image folders: layouts, one class map, deterministic stratified split, clear errors."""

from pathlib import Path

import pytest
from PIL import Image

from rextransfer.data.base import stratified_split
from rextransfer.data.folder import load_folder
from rextransfer.core.errors import DataError


def img(path: Path, mode: str = "RGB", size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"RGB": (200, 10, 10), "L": 128, "RGBA": (0, 200, 0, 128), "P": 3, "CMYK": (0, 0, 0, 0)}[mode]
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def class_tree(root: Path, counts: dict[str, int], ext=".jpg") -> Path:
    for name, n in counts.items():
        for i in range(n):
            img(root / name / f"{i}{ext}")
    return root


def test_class_folders_get_a_stratified_deterministic_split(tmp_path):
    class_tree(tmp_path, {"b_cls": 10, "a_cls": 20, "c_cls": 5})
    s1 = load_folder(tmp_path, val_fraction=0.2, seed=3)
    s2 = load_folder(tmp_path, val_fraction=0.2, seed=3)
    assert s1.classes == ["a_cls", "b_cls", "c_cls"]
    assert s1.eval_split == "val"
    assert [s1.train.key(i) for i in range(len(s1.train))] == [s2.train.key(i) for i in range(len(s2.train))]
    assert sorted(s1.eval.class_counts()) == [1, 2, 4]  # 20% of each class, rounded
    assert len(s1.train) + len(s1.eval) == 35
    train_keys = {s1.train.key(i) for i in range(len(s1.train))}
    assert not train_keys & {s1.eval.key(i) for i in range(len(s1.eval))}
    s3 = load_folder(tmp_path, val_fraction=0.2, seed=4)
    assert {s3.eval.key(i) for i in range(len(s3.eval))} != {s1.eval.key(i) for i in range(len(s1.eval))}


def test_stratified_split_keeps_every_class_in_train():
    labels = [0] * 2 + [1] * 1 + [2] * 50
    keep, held = stratified_split(labels, 0.5, seed=0)
    kept = [labels[i] for i in keep]
    assert set(kept) == {0, 1, 2}
    assert [labels[i] for i in held].count(1) == 0
    assert sorted(keep + held) == list(range(len(labels)))


def test_train_val_layout_uses_one_class_map_from_train(tmp_path):
    class_tree(tmp_path / "train", {"cat": 3, "dog": 3, "eel": 2})
    class_tree(tmp_path / "val", {"dog": 2, "eel": 1})  # a class may be missing from val
    splits = load_folder(tmp_path)
    assert splits.classes == ["cat", "dog", "eel"]
    assert splits.eval_split == "val"
    assert sorted(set(splits.eval.labels)) == [1, 2]
    assert splits.eval.classes == splits.train.classes


def test_test_folder_is_used_when_there_is_no_val(tmp_path):
    class_tree(tmp_path / "train", {"a": 2, "b": 2})
    class_tree(tmp_path / "test", {"a": 1, "b": 1})
    splits = load_folder(tmp_path)
    assert splits.eval_split == "test" and len(splits.eval) == 2


def test_class_only_in_val_is_an_error_naming_it(tmp_path):
    class_tree(tmp_path / "train", {"a": 2, "b": 2})
    class_tree(tmp_path / "val", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match="'zebra'.*not in the training split"):
        load_folder(tmp_path)


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    class_tree(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "empty_one").mkdir()
    with pytest.raises(DataError, match="empty_one.*no images"):
        load_folder(tmp_path)


def test_one_class_and_empty_and_missing_are_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_folder(tmp_path / "empty")
    class_tree(tmp_path / "one", {"only": 4})
    with pytest.raises(DataError, match="only one class"):
        load_folder(tmp_path / "one")


def test_hidden_folders_and_non_images_are_ignored(tmp_path):
    class_tree(tmp_path, {"a": 3, "b": 3})
    class_tree(tmp_path, {".ipynb_checkpoints": 2, "__MACOSX": 1})
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "a" / "notes.txt").write_text("hello")
    img(tmp_path / "a" / "nested" / "deep.PNG")  # uppercase extension, in a sub-folder
    splits = load_folder(tmp_path, val_fraction=0.25)
    assert splits.classes == ["a", "b"]
    keys = [splits.extra["train_full"].key(i) for i in range(len(splits.extra["train_full"]))]
    assert any(k.endswith("deep.PNG") for k in keys)
    assert not any(".DS_Store" in k or "notes.txt" in k or "ipynb" in k for k in keys)
    assert splits.notes["non_image_files_skipped"] == 1


@pytest.mark.parametrize("mode,ext", [("L", ".png"), ("RGBA", ".png"), ("P", ".gif"), ("CMYK", ".jpg")])
def test_images_always_arrive_as_rgb(tmp_path, mode, ext):
    for c in ("a", "b"):
        for i in range(3):
            img(tmp_path / c / f"{i}{ext}", mode=mode)
    splits = load_folder(tmp_path)
    im = splits.train.load(0)
    assert im.mode == "RGB" and im.size == (12, 10)


def test_unicode_and_uppercase_names(tmp_path):
    for name in ("café_crème", "Ötzi", "鳥"):
        for i, stem in enumerate(("ünïcode", "UPPER", "mixed Case")):
            img(tmp_path / name / f"{stem}{i}.JPG")
    splits = load_folder(tmp_path, val_fraction=0.34)
    assert splits.classes == sorted(["café_crème", "Ötzi", "鳥"])
    full = splits.extra["train_full"]
    assert len(full) == 9
    assert all(full.load(i).mode == "RGB" for i in range(len(full)))


def test_symlink_loops_count_each_image_once_with_its_own_label(tmp_path):
    import os

    class_tree(tmp_path, {"blue": 6, "green": 6, "red": 6})
    os.symlink("..", tmp_path / "red" / "up")                     # the dataset again, inside red
    os.symlink(".", tmp_path / "green" / "self")                  # a loop
    os.symlink("../blue", tmp_path / "green" / "blues")           # another class's folder
    os.symlink("../blue/0.jpg", tmp_path / "red" / "linked.jpg")  # another class's image
    os.symlink("itself", tmp_path / "red" / "itself")             # a link to itself (ELOOP)
    splits = load_folder(tmp_path, val_fraction=0.34, seed=1)
    full = splits.extra["train_full"]
    assert (len(full), full.class_counts()) == (18, [6, 6, 6])
    for i in range(len(full)):  # every image labelled by the folder the file itself is in
        assert Path(os.path.realpath(full.key(i))).parent.name == full.classes[full.labels[i]]
    real = lambda s: [os.path.realpath(s.key(i)) for i in range(len(s))]
    assert len(set(real(full))) == 18
    assert not set(real(splits.train)) & set(real(splits.eval))
    assert splits.notes["repeated_images_skipped"] == 1


def test_a_val_class_that_links_to_the_train_class_is_an_error_not_a_leak(tmp_path):
    import os

    class_tree(tmp_path / "train", {"a": 3, "b": 3})
    class_tree(tmp_path / "val", {"b": 1})
    os.symlink("../train/a", tmp_path / "val" / "a")
    with pytest.raises(DataError, match=r"val/a has no images of its own"):
        load_folder(tmp_path)


def test_underscore_names_are_classes_and_only_dot_names_and_zip_leftovers_are_ignored(tmp_path):
    class_tree(tmp_path, {"__x": 2, "_y": 2, "z": 2, "__MACOSX": 2, ".git": 2})
    (tmp_path / "z" / "Thumbs.db").write_bytes(b"\0")
    assert load_folder(tmp_path, val_fraction=0.5).classes == ["__x", "_y", "z"]
