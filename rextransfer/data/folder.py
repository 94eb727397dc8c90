"""Custom image folders: `PATH/train/<class>/*` (+ `val/` or `test/`), or `PATH/<class>/*`.

Rules a user can rely on:
  * one class-to-index map, built from the training split (class folder names, sorted), applied
    to every split; a class that appears only in val/test is an error that names it;
  * a class folder with no images is an error that names it; fewer than 2 classes is an error;
  * hidden entries (.ipynb_checkpoints, .DS_Store, __MACOSX) are ignored; non-image files are
    skipped and counted; images in sub-folders of a class folder belong to that class;
  * without val/ or test/, a deterministic stratified split (val_fraction, seed) is held out.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.console import log
from ..core.errors import DataError
from .base import DataSplits, FileSamples, stratified_split
from .images import is_image_name


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__") or name == "Thumbs.db"


def _class_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not _hidden(p.name)), key=lambda p: p.name)


def _images_under(folder: Path, skipped: list[Path]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in sorted(filenames):
            if _hidden(name):
                continue
            (found if is_image_name(name) else skipped).append(Path(dirpath) / name)
    return found


def _scan_split(root: Path, skipped: list[Path]) -> dict[str, list[Path]]:
    """class name -> image paths for one split folder."""
    classes = {}
    for d in _class_dirs(root):
        images = _images_under(d, skipped)
        if not images:
            raise DataError(f"class folder {d} has no images (supported: .jpg .jpeg .png .bmp .gif .webp .tif)")
        classes[d.name] = images
    return classes


def _find_split_dir(path: Path, names: tuple[str, ...]) -> Path | None:
    by_lower = {p.name.lower(): p for p in path.iterdir() if p.is_dir()}
    for name in names:
        if name in by_lower:
            return by_lower[name]
    return None


def _samples(by_class: dict[str, list[Path]], class_to_idx: dict[str, int], split: str, where: Path) -> FileSamples:
    unknown = sorted(set(by_class) - set(class_to_idx))
    if unknown:
        raise DataError(f"class {unknown[0]!r} is in {where} but not in the training split"
                        + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    paths, labels = [], []
    for name, files in by_class.items():
        paths += files
        labels += [class_to_idx[name]] * len(files)
    return FileSamples(paths, labels, sorted(class_to_idx, key=class_to_idx.get), split)


def load_folder(path: Path, val_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"dataset folder not found: {path}")
    if not path.is_dir():
        raise DataError(f"{path} is not a folder; expected PATH/<class>/*.jpg or PATH/train/<class>/*.jpg")
    skipped: list[Path] = []
    train_dir = _find_split_dir(path, ("train",))
    if train_dir is not None:
        train_by_class = _scan_split(train_dir, skipped)
        layout = "train/val"
    else:
        train_by_class = _scan_split(path, skipped)
        layout = "class folders"
    if not train_by_class:
        raise DataError(f"no class folders in {train_dir or path}; expected {path}/<class>/*.jpg or {path}/train/<class>/*.jpg")
    if len(train_by_class) < 2:
        raise DataError(f"only one class ({next(iter(train_by_class))!r}) in {train_dir or path}; classification needs at least 2")

    classes = sorted(train_by_class)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    train = _samples(train_by_class, class_to_idx, "train", train_dir or path)
    extra = {}
    notes: dict = {"layout": layout, "class_order": "sorted class folder names of the training split"}
    if train_dir is not None:
        val_dir = _find_split_dir(path, ("val", "valid", "validation"))
        test_dir = _find_split_dir(path, ("test",))
        for split_name, d in (("val", val_dir), ("test", test_dir)):
            if d is not None:
                extra[split_name] = _samples(_scan_split(d, skipped), class_to_idx, split_name, d)
        if not extra:
            raise DataError(f"{path} has train/ but no val/ or test/; add one, or put class folders directly in {path}")
        eval_split = "val" if "val" in extra else "test"
        eval_set = extra[eval_split]
    else:
        keep, held = stratified_split(train.labels, val_fraction, seed)
        if not held:
            raise DataError(f"too few images in {path} to hold out a validation split; add images or a val/ folder")
        extra["train_full"] = train
        eval_set = extra["val"] = train.subset(held, "val")
        train = train.subset(keep, "train")
        eval_split = "val"
        notes["val_fraction"] = val_fraction
    if skipped:
        log(f"skipped {len(skipped)} non-image file(s) in {path} (e.g. {skipped[0].name})")
    notes["non_image_files_skipped"] = len(skipped)
    return DataSplits(train=train, eval=eval_set, eval_split=eval_split, classes=classes,
                      source="folder", metric="top1", notes=notes, extra=extra)
