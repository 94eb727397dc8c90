"""Custom image folders: `PATH/train/<class>/*` (+ `val/` or `test/`), or `PATH/<class>/*`.

Rules a user can rely on:
  * one class-to-index map, built from the training split (class folder names, sorted), applied
    to every split; a class that appears only in val/test is an error that names it;
  * a class folder with no images is an error that names it; fewer than 2 classes is an error;
  * hidden entries (names starting with a dot: .ipynb_checkpoints, .DS_Store, ._x.jpg) and what
    zips and file browsers leave behind (__MACOSX, Thumbs.db, desktop.ini) are ignored; any other
    folder is a class (`__x` too); non-image files are skipped and counted; images in sub-folders
    of a class folder belong to that class;
  * symbolic links are followed, and every image counts once: a link to a folder being walked
    (a loop such as `red/up -> ..`) or to another class or split folder is not entered, and an
    image reached twice (through links) belongs where the file itself lives, else to the first
    place it was found (train before val/test), so no file is in two splits or two classes;
  * without val/ or test/, a deterministic stratified split (val_fraction, seed) is held out.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.console import log
from ..core.errors import DataError
from .base import DataSplits, FileSamples, stratified_split
from .images import is_image_name

IGNORED = ("__MACOSX", "Thumbs.db", "desktop.ini")
SUPPORTED = ".jpg .jpeg .png .bmp .gif .webp .tif"


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED


def _class_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not _hidden(p.name)), key=lambda p: p.name)


def _images_under(folder: Path, skipped: list[Path], fenced: set[str]) -> list[Path]:
    """Images below `folder`, links followed; never into a folder on the current path (a loop)
    or into `fenced` ones (the dataset, split and class folders: each is walked as itself)."""
    found: list[Path] = []

    def walk(d: Path, chain: frozenset[str]) -> None:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:  # unreadable folder, or a link loop the kernel refuses (ELOOP)
            return
        for entry in entries:
            if _hidden(entry.name):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows links; False for a broken one
            except OSError:  # ELOOP: a link to itself
                is_dir = False
            if is_dir:
                real = os.path.realpath(path)
                if real not in chain and real not in fenced:
                    walk(path, chain | {real})
            elif is_image_name(entry.name):
                found.append(path)
            else:
                skipped.append(path)

    walk(folder, frozenset({os.path.realpath(folder)}))
    return found


def _scan_split(root: Path, skipped: list[Path], fenced: set[str]) -> dict[str, list[Path]]:
    """class name -> image paths for one split folder."""
    return {d.name: _images_under(d, skipped, fenced) for d in _class_dirs(root)}


def _count_once(groups: list[tuple[Path, dict[str, list[Path]]]]) -> int:
    """Keep each image file (by real path) in one place only: where the file itself lives if it
    is reached that way, else where it was reached first. Returns how many repeats were dropped."""
    owner: dict[str, tuple[int, str, Path, bool]] = {}
    for g, (_, by_class) in enumerate(groups):
        for name, paths in by_class.items():
            for p in paths:
                real = os.path.realpath(p)
                direct = real == os.path.abspath(p)
                held = owner.get(real)
                if held is None or (direct and not held[3]):
                    owner[real] = (g, name, p, direct)
    kept = {(g, name, p) for g, name, p, _ in owner.values()}
    repeats = 0
    for g, (root, by_class) in enumerate(groups):
        for name in list(by_class):
            paths = by_class[name]
            by_class[name] = [p for p in paths if (g, name, p) in kept]
            repeats += len(paths) - len(by_class[name])
            if not by_class[name]:
                raise DataError(f"class folder {root / name} has no images of its own (supported: {SUPPORTED})")
    return repeats


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
    found: dict[str, Path] = {}
    if train_dir is not None:
        found["train"] = train_dir
        for split_name, names in (("val", ("val", "valid", "validation")), ("test", ("test",))):
            d = _find_split_dir(path, names)
            if d is not None:
                found[split_name] = d
    tops = list(found.values()) or [path]
    fenced = {os.path.realpath(d) for d in (path, *tops, *(c for top in tops for c in _class_dirs(top)))}
    groups = [(d, _scan_split(d, skipped, fenced)) for d in tops]
    repeats = _count_once(groups)
    train_by_class = groups[0][1]
    layout = "train/val" if train_dir is not None else "class folders"
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
        for (split_name, d), (_, by_class) in zip(list(found.items())[1:], groups[1:]):
            extra[split_name] = _samples(by_class, class_to_idx, split_name, d)
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
    if repeats:
        log(f"{repeats} image(s) in {path} were reached twice through symbolic links; each counts once")
    notes["non_image_files_skipped"] = len(skipped)
    notes["repeated_images_skipped"] = repeats
    return DataSplits(train=train, eval=eval_set, eval_split=eval_split, classes=classes,
                      source="folder", metric="top1", notes=notes, extra=extra)
