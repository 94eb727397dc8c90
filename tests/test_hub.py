"""Hugging Face Hub copies map onto the original releases: same classes in the same order, same
splits, every label carried over by name. Each Hub copy is imitated locally with its real split names,
columns and ClassLabel order (from the dataset cards), built from the same tree the original loader reads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from fgvc_trees import AIRCRAFT_VARIANTS, make_aircraft_tree, make_cars_tree, make_flowers_tree, make_food_tree, need_fixtures
from rextransfer.config.settings import Config
from rextransfer.data import get_splits, lookup
from rextransfer.data.fgvc import flower_names, hub_splits_from
from rextransfer.data.images import ImageDecodeError
from rextransfer.core.errors import DataError

datasets = pytest.importorskip("datasets")
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image  # noqa: E402


def image(path: Path) -> dict:
    return {"bytes": path.read_bytes(), "path": path.name}


def split_of(rows: list[tuple[Path, str]], names: list[str], column: str = "label", extra: dict | None = None) -> Dataset:
    """A Hub-style split: `image` plus a ClassLabel column whose ids follow the copy's own name order."""
    features = {"image": Image(), column: ClassLabel(names=names)}
    data = {"image": [image(p) for p, _ in rows], column: [names.index(c) for _, c in rows]}
    for key, (values, feature) in (extra or {}).items():
        features[key], data[key] = feature, values
    return Dataset.from_dict(data, features=Features(features))


def lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


# --- one imitation per Hub copy ------------------------------------------------------------------
def hub_flowers(root: Path) -> DatasetDict:
    """dpdl-benchmark/oxford_flowers102: train / validation / test; label names = the common names."""
    import scipy.io as sio

    base = root / "flowers-102"
    labels = sio.loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"]
    setid = sio.loadmat(base / "setid.mat", squeeze_me=True)
    names = flower_names()  # the card lists the same 102 names: '0': pink primrose ... '101': blackberry lily
    rows = lambda key: [(base / "jpg" / f"image_{int(i):05d}.jpg", names[int(labels[int(i) - 1]) - 1]) for i in setid[key]]
    return DatasetDict(train=split_of(rows("trnid"), names), validation=split_of(rows("valid"), names),
                       test=split_of(rows("tstid"), names))


def hub_food(root: Path) -> DatasetDict:
    """ethz/food101: train / validation (the official test); label names in classes.txt order."""
    meta = root / "food-101" / "meta"
    names = lines(meta / "classes.txt")

    def rows(split):
        data = json.loads((meta / f"{split}.json").read_text())
        return [(root / "food-101" / "images" / f"{rel}.jpg", c) for c in data for rel in data[c]]

    return DatasetDict(train=split_of(rows("train"), names), validation=split_of(rows("test"), names))


def hub_cars(root: Path) -> DatasetDict:
    """tanganke/stanford_cars: train / test (+ corrupted copies of test); label names in cars_meta.mat order."""
    import scipy.io as sio

    base = root / "stanford_cars"
    names = [str(c) for c in sio.loadmat(base / "devkit" / "cars_meta.mat", squeeze_me=True)["class_names"]]

    def rows(annos, folder):
        return [(base / folder / str(a["fname"]), names[int(a["class"]) - 1])
                for a in sio.loadmat(annos, squeeze_me=True)["annotations"]]

    test = rows(base / "cars_test_annos_withlabels.mat", "cars_test")
    return DatasetDict(train=split_of(rows(base / "devkit" / "cars_train_annos.mat", "cars_train"), names),
                       test=split_of(test, names), contrast=split_of(test, names))


def hub_aircraft(root: Path, variants: list[str] | None = None) -> DatasetDict:
    """Donghyun99/FGVC-Aircraft: train / val / test; `label` = families, `variation` = the 100 variants
    in an arbitrary order (on the card 707-320 is id 95), `manufacturer` = 30 makers."""
    data = root / "fgvc-aircraft-2013b" / "data"
    names = list(variants or AIRCRAFT_VARIANTS)
    random.Random(95).shuffle(names)
    family = lambda v: v.split("-")[0].split(" ")[0]
    families = sorted({family(v) for v in AIRCRAFT_VARIANTS})
    makers = sorted({f[0] for f in families})

    def split(name):
        rows = [(data / "images" / f"{line.split(' ', 1)[0]}.jpg", line.split(" ", 1)[1])
                for line in lines(data / f"images_variant_{name}.txt")]
        return split_of(rows, names, column="variation", extra={
            "label": ([families.index(family(v)) for _, v in rows], ClassLabel(names=families)),
            "manufacturer": ([makers.index(family(v)[0]) for _, v in rows], ClassLabel(names=makers))})

    return DatasetDict(train=split("train"), val=split("val"), test=split("test"))


# --- trees -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    need_fixtures()
    root = tmp_path_factory.mktemp("data")
    make_flowers_tree(root)  # full size: 8,189 rows
    make_cars_tree(root, n_per_class=2)
    make_aircraft_tree(root, n_per_class=2)
    make_food_tree(root, per_class=3)
    return root


def original(name: str, root: Path, **settings):
    return get_splits(Config(dataset=name, data_root=str(root), source="original", **settings))


def from_hub(name: str, dataset_dict, root: Path, **settings):
    return hub_splits_from(dataset_dict, lookup(name), Config(dataset=name, data_root=str(root), source="hub", **settings))


def hub_names_in_order(dataset_dict, hub_splits, column):
    """The class name of every Hub row, in the order the rows make up our split."""
    out = []
    for split in hub_splits:
        ds = dataset_dict[split]
        out += [ds.features[column].int2str(int(y)) for y in ds[column]]
    return out


@pytest.mark.parametrize("name,build,column,train_from,test_from", [
    ("flowers102", hub_flowers, "label", ("train", "validation"), ("test",)),
    ("food101", hub_food, "label", ("train",), ("validation",)),
    ("cars", hub_cars, "label", ("train",), ("test",)),
    ("aircraft", hub_aircraft, "variation", ("train", "val"), ("test",)),
])
def test_hub_copy_maps_to_the_original_classes_and_splits(root, name, build, column, train_from, test_from):
    dataset_dict = build(root)
    hub, orig = from_hub(name, dataset_dict, root), original(name, root)
    assert hub.source == "hub" and orig.source == "original"
    assert hub.classes == orig.classes  # same names, same order (Aircraft: reordered by name)
    assert (hub.eval_split, hub.metric) == (orig.eval_split, orig.metric) == ("test", lookup(name).metric)
    assert (len(hub.train), len(hub.eval)) == (len(orig.train), len(orig.eval))
    assert hub.train.class_counts() == orig.train.class_counts()
    assert hub.eval.class_counts() == orig.eval.class_counts()
    # every row keeps its class *name* through the id mapping
    assert [hub.classes[y] for y in hub.train.labels] == hub_names_in_order(dataset_dict, train_from, column)
    assert [hub.classes[y] for y in hub.eval.labels] == hub_names_in_order(dataset_dict, test_from, column)
    assert set(hub.notes["hub_splits"]["test"]) == set(test_from)


def test_flowers_hub_copy_has_the_standard_split_sizes(root):
    hub = from_hub("flowers102", hub_flowers(root), root)
    assert (len(hub.train), len(hub.eval), len(hub.classes)) == (2040, 6149, 102)
    assert set(hub.train.labels) == set(range(102))


def test_aircraft_hub_copy_uses_variants_not_families(root):
    dataset_dict = hub_aircraft(root)
    assert dataset_dict["train"].features["variation"].names != AIRCRAFT_VARIANTS  # the copy's own order
    hub = from_hub("aircraft", dataset_dict, root)
    assert len(hub.classes) == 100 and hub.classes == AIRCRAFT_VARIANTS
    assert hub.notes["label_column"] == "variation"
    assert hub.train.load(0).size == (32, 20) and hub.notes["banner_crop_px"] == 20  # banner cropped here too
    assert from_hub("aircraft", dataset_dict, root, aircraft_banner=False).train.load(0).size == (32, 40)


def test_food_hub_copy_keeps_classes_txt_order(root):
    hub = from_hub("food101", hub_food(root), root)
    assert (hub.classes[16], hub.classes[17]) == ("cheesecake", "cheese_plate")


def test_cars_hub_copy_ignores_the_corrupted_splits_and_refuses_bbox(root):
    dataset_dict = hub_cars(root)
    hub = from_hub("cars", dataset_dict, root)
    assert len(hub.eval) == len(dataset_dict["test"])
    assert hub.classes[0] == "AM General Hummer SUV 2000" and hub.classes[-1] == "smart fortwo Convertible 2012"
    with pytest.raises(DataError, match="no boxes"):
        from_hub("cars", dataset_dict, root, cars_bbox=True)


def test_saved_hub_copy_is_found_under_the_data_root(root, tmp_path):
    hub_flowers(root).save_to_disk(str(tmp_path / "flowers102-hub"))
    for source in ("hub", "auto"):  # auto: the original is not under tmp_path, the saved copy is
        s = get_splits(Config(dataset="flowers", data_root=str(tmp_path), source=source))
        assert (s.source, len(s.train), len(s.eval), s.classes) == ("hub", 2040, 6149, flower_names())
    assert s.train.key(0) == "hub:dpdl-benchmark/oxford_flowers102/train/0"
    assert s.eval.key(1) == "hub:dpdl-benchmark/oxford_flowers102/test/1"
    assert s.train.key(1020) == "hub:dpdl-benchmark/oxford_flowers102/validation/0"
    img = s.train.load(0)
    assert img.mode == "RGB" and img.size == (16, 16)
    with_val = get_splits(Config(dataset="flowers", data_root=str(tmp_path), source="hub", val_split=0.5))
    assert (with_val.eval_split, len(with_val.eval), len(with_val.extra["test"])) == ("val", 1020, 6149)


def test_hub_images_decode_lazily_and_robustly(root):
    dataset_dict = hub_flowers(root)
    rows = dataset_dict["test"].to_dict()
    rows["image"][3] = {"bytes": b"not a jpeg", "path": "broken.jpg"}
    dataset_dict["test"] = Dataset.from_dict(rows, features=dataset_dict["test"].features)
    hub = from_hub("flowers102", dataset_dict, root)  # building the splits decodes nothing
    assert hub.eval.load(2).size == (16, 16)
    with pytest.raises(ImageDecodeError):
        hub.eval.load(3)
    assert hub.eval.fingerprint() == from_hub("flowers102", dataset_dict, root).eval.fingerprint()


def test_a_hub_copy_that_changed_is_a_one_line_error(root):
    dataset_dict = hub_flowers(root)
    renamed = DatasetDict(train=dataset_dict["train"], valid=dataset_dict["validation"], test=dataset_dict["test"])
    with pytest.raises(DataError) as e:
        from_hub("flowers102", renamed, root)
    assert "validation" in str(e.value) and "\n" not in str(e.value)
    no_variants = DatasetDict({k: v.remove_columns("variation") for k, v in hub_aircraft(root).items()})
    with pytest.raises(DataError, match="variation"):
        from_hub("aircraft", no_variants, root)
    fewer = hub_aircraft(root, variants=AIRCRAFT_VARIANTS + ["Concorde"])
    with pytest.raises(DataError, match="101 classes, expected 100"):
        from_hub("aircraft", fewer, root)


def test_hub_source_offline_without_a_copy_is_a_fast_one_line_error(tmp_path):
    with pytest.raises(DataError) as e:
        get_splits(Config(dataset="cars", data_root=str(tmp_path), source="hub"))
    message = str(e.value)
    assert "tanganke/stanford_cars" in message and "--source hub" in message and "\n" not in message


# --- offline: a download in the datasets cache, and the copy `download` saves ------------------------
def datasets_cache(dataset_dict: DatasetDict, hub_id: str, cache: Path, data_files: dict | None = None) -> Path:
    """Lay `dataset_dict` out in `cache` exactly as `datasets` leaves a download of `hub_id`:
    <cache>/<namespace>___<name>/<config>/0.0.0/<commit>/{dataset_info.json, <name>-<split>.arrow}.

    Built by the library's own Parquet builder from parquet files of the splits, as the Hub path
    does: the card's one config ("default"), or, when the user passes `data_files` (our Stanford
    Cars), a config named after those files ("default-<hash>"). The Hub path also records the repo
    (which makes the builder insist on hf:// files), so the folder is built under <name> and moved
    to <namespace>___<name>, the only part of the path the repo id decides."""
    import shutil

    from datasets import DatasetInfo
    from datasets.data_files import DataFilesDict, sanitize_patterns
    from datasets.load import configure_builder_class
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.parquet.parquet import Parquet, ParquetConfig

    namespace, repo_name = hub_id.split("/")
    name = camelcase_to_snakecase(repo_name)
    repo, built = cache.parent / f"{name}-repo", cache.parent / f"{name}-building"
    for split, ds in dataset_dict.items():
        (repo / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(repo / "data" / f"{split}-00000-of-00001.parquet"))
    info = DatasetInfo(features=next(iter(dataset_dict.values())).features)  # the card's dataset_info
    commit = "0123456789abcdef0123456789abcdef01234567"
    if data_files is not None:
        files = DataFilesDict.from_patterns(sanitize_patterns(data_files), base_path=str(repo))
        builder = Parquet(cache_dir=str(built), dataset_name=name, hash=commit, base_path=str(repo), data_files=files, info=info)
    else:
        files = DataFilesDict.from_patterns(sanitize_patterns({s: f"data/{s}-*" for s in dataset_dict}), base_path=str(repo))
        card = configure_builder_class(Parquet, [ParquetConfig(name="default", data_files=files)],
                                       default_config_name="default", dataset_name=name)
        builder = card(cache_dir=str(built), dataset_name=name, hash=commit, base_path=str(repo), config_name="default", info=info)
    builder.download_and_prepare()
    cache.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built / name), str(cache / f"{namespace}___{name}"))
    shutil.rmtree(repo)
    return cache


HUB_COPIES = {"flowers102": hub_flowers, "food101": hub_food, "cars": hub_cars, "aircraft": hub_aircraft}


def cached_root(name: str, root: Path, tmp_path: Path) -> Path:
    """A data root holding nothing but the datasets cache of `name`'s Hub copy."""
    from rextransfer.data.fgvc import _SPECS

    spec = _SPECS[name].hub
    datasets_cache(HUB_COPIES[name](root), spec.hub_id, tmp_path / "data" / "hf-datasets", spec.data_files)
    return tmp_path / "data"


def dry_run(name: str, data_root: Path):
    from faultkit import FAST, rx

    return rx("finetune", name, "--source", "hub", "--data-root", data_root, *FAST, "--dry-run",
              cwd=data_root.parent)


@pytest.mark.parametrize("name", sorted(HUB_COPIES))
def test_each_hub_copy_loads_offline_from_the_datasets_cache_through_the_cli(root, tmp_path, name):
    from rextransfer.data.fgvc import _SPECS

    data_root = cached_root(name, root, tmp_path)
    spec = _SPECS[name].hub
    # the layout is the library's: its own offline reload finds it, except with data_files (datasets#6837)
    if spec.data_files is None:
        assert set(datasets.load_dataset(spec.hub_id, cache_dir=str(data_root / "hf-datasets"))) >= set(needed(spec))
    else:
        with pytest.raises(ValueError, match="Couldn't find cache"):
            datasets.load_dataset(spec.hub_id, cache_dir=str(data_root / "hf-datasets"), data_files=spec.data_files)
    result = dry_run(name, data_root)
    assert result.returncode == 0, result.stderr
    orig = original(name, root)
    assert (f"source hub); classes {len(orig.classes)}; train {len(orig.train)} " in result.stdout
            and f"eval {len(orig.eval)} on test" in result.stdout), result.stdout


def needed(spec) -> list[str]:
    return [s for names in spec.splits.values() for s in names]


def test_download_saves_a_copy_that_loads_offline_without_the_cache(root, tmp_path):
    import shutil

    from faultkit import rx

    data_root = cached_root("cars", root, tmp_path)
    saved = rx("download", "cars", "--source", "hub", "--data-root", data_root)  # offline: from the cache
    assert saved.returncode == 0, saved.stderr
    assert str(data_root / "cars-hub") in saved.stdout
    assert sorted(DatasetDict.load_from_disk(str(data_root / "cars-hub"))) == ["test", "train"]  # no corrupted copies
    shutil.rmtree(data_root / "hf-datasets")
    result = dry_run("cars", data_root)
    assert result.returncode == 0, result.stderr
    assert f"train {len(original('cars', root).train)} " in result.stdout


def test_a_broken_datasets_cache_is_a_one_line_error(root, tmp_path):
    from faultkit import one_line

    data_root = cached_root("food101", root, tmp_path)
    for arrow in (data_root / "hf-datasets").rglob("*.arrow"):
        arrow.write_bytes(arrow.read_bytes()[:200])  # a download cut short
    one_line(dry_run("food101", data_root), 3, "Hub copy ethz/food101 of food101 is unavailable")


def test_flower_names_are_the_hub_cards_and_torchvisions():
    names = flower_names()
    assert len(names) == len(set(names)) == 102
    # the card of dpdl-benchmark/oxford_flowers102: '0': pink primrose, '59': pink-yellow dahlia?, '101': blackberry lily
    assert (names[0], names[59], names[101]) == ("pink primrose", "pink-yellow dahlia?", "blackberry lily")
    from torchvision.datasets import Flowers102

    if hasattr(Flowers102, "classes"):  # torchvision >= 0.22 carries the same list
        assert names == list(Flowers102.classes)
