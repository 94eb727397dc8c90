"""The shapes every dataset shares: a split of samples, the splits of a run, and registry entries.

A `SampleSet` is one split: labels, the class list shared by all splits, and `load(i)` that
returns an upright RGB PIL image. File-backed and Hub-backed splits implement the same interface,
so the scan, the pixel cache and both loaders never care where pixels come from.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from .images import open_rgb


class SampleSet:
    """One split. Subclasses implement `load`, `key` and `fingerprint`."""

    def __init__(self, labels: Sequence[int], classes: Sequence[str], split: str):
        self.labels = [int(y) for y in labels]
        self.classes = list(classes)
        self.split = split

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def key(self, i: int) -> str:  # pragma: no cover - abstract
        """A stable, human-readable id of sample i (a path, or 'hub:<id>/<split>/<row>')."""
        raise NotImplementedError

    def fingerprint(self) -> str:  # pragma: no cover - abstract
        """A hash of the content identity (names, sizes, mtimes, labels, preprocessing)."""
        raise NotImplementedError

    def subset(self, indices: Sequence[int], split: str | None = None) -> "SampleSet":
        return Subset(self, indices, split or self.split)

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.classes)
        for y in self.labels:
            counts[y] += 1
        return counts


class FileSamples(SampleSet):
    """Images on disk. Optional per-image boxes (x1, y1, x2, y2; Cars) and a bottom crop (Aircraft)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int],
        classes: Sequence[str],
        split: str,
        boxes: Sequence[tuple[int, int, int, int]] | None = None,
        crop_bottom: int = 0,
    ):
        super().__init__(labels, classes, split)
        self.paths = [Path(p) for p in paths]
        if len(self.paths) != len(self.labels):
            raise ValueError("paths and labels differ in length")
        self.boxes = list(boxes) if boxes is not None else None
        self.crop_bottom = int(crop_bottom)

    def load(self, i: int, draft: tuple[int, int] | None = None) -> Image.Image:
        img = open_rgb(self.paths[i], draft=None if (self.boxes or self.crop_bottom) else draft)
        if self.crop_bottom:
            w, h = img.size
            img = img.crop((0, 0, w, max(1, h - self.crop_bottom)))
        if self.boxes is not None:
            x1, y1, x2, y2 = self.boxes[i]
            w, h = img.size
            img = img.crop((max(0, x1), max(0, y1), min(w, x2 + 1), min(h, y2 + 1)))
        return img

    def key(self, i: int) -> str:
        return str(self.paths[i])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"crop_bottom={self.crop_bottom};boxes={self.boxes is not None}\n".encode())
        for i, p in enumerate(self.paths):
            try:
                st = os.stat(p)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            box = self.boxes[i] if self.boxes is not None else ""
            h.update(f"{p}|{stamp}|{self.labels[i]}|{box}\n".encode())
        return h.hexdigest()[:16]


class Subset(SampleSet):
    """A view of some samples of another split (held-out val, bad files dropped, DDP shards)."""

    def __init__(self, parent: SampleSet, indices: Sequence[int], split: str):
        self.parent = parent
        self.indices = [int(i) for i in indices]
        super().__init__([parent.labels[i] for i in self.indices], parent.classes, split)

    def load(self, i: int, **kw: Any) -> Image.Image:
        return self.parent.load(self.indices[i], **kw)

    def key(self, i: int) -> str:
        return self.parent.key(self.indices[i])

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.parent.fingerprint().encode())
        h.update(",".join(map(str, self.indices)).encode())
        return h.hexdigest()[:16]


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic stratified split: (keep, held_out) index lists, held_out ~ fraction per class.

    Every class keeps at least one training sample; a class with >= 2 samples gives at least one
    to the held-out side. Same labels + fraction + seed -> same split, on any machine.
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[int(y)].append(i)
    rng = random.Random(seed)
    keep: list[int] = []
    held: list[int] = []
    for y in sorted(by_class):
        idx = by_class[y][:]
        rng.shuffle(idx)
        n_held = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        else:
            n_held = 0
        held.extend(idx[:n_held])
        keep.extend(idx[n_held:])
    return sorted(keep), sorted(held)


@dataclass
class DataSplits:
    """What a run trains and evaluates on."""

    train: SampleSet
    eval: SampleSet
    eval_split: str                 # "test" (standard protocol) or "val" (held out from train)
    classes: list[str]
    source: str                     # "original" | "hub" | "folder" | "demo"
    metric: str = "top1"            # headline metric: top1 | mean_class_acc
    notes: dict[str, Any] = field(default_factory=dict)  # recorded in env.json (class order source, crops)
    extra: dict[str, SampleSet] = field(default_factory=dict)  # other named splits (val, train_full) for `evaluate --split`


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry for a built-in dataset."""

    name: str
    aliases: tuple[str, ...]
    title: str
    num_classes: int
    train_size: int
    test_size: int
    metric: str                     # top1 | mean_class_acc
    hub_id: str                     # Hugging Face Hub copy ("" = none)
    citation: str                   # whom to cite (`rextransfer datasets` prints it)
    load: Callable[..., DataSplits]  # load(cfg) -> DataSplits
    present: Callable[[Path], bool]  # is the original release under this data root?
    download: Callable[..., Path] | None = None
    url: str = ""                   # the dataset's home page


_REGISTRY: dict[str, DatasetInfo] = {}
_ALIASES: dict[str, str] = {}


def register(info: DatasetInfo) -> DatasetInfo:
    _REGISTRY[info.name] = info
    for alias in (info.name, *info.aliases):
        _ALIASES[alias.lower()] = info.name
    return info


def registry() -> dict[str, DatasetInfo]:
    return dict(_REGISTRY)


def lookup(name: str) -> DatasetInfo | None:
    canonical = _ALIASES.get(name.lower().replace("-", "_"))
    return _REGISTRY.get(canonical) if canonical else None


def default_data_root() -> Path:
    env = os.environ.get("REXTRANSFER_DATA")
    return Path(env).expanduser() if env else Path("~/.cache/rextransfer/data").expanduser()


def data_root(cfg_value: str) -> Path:
    return Path(cfg_value).expanduser() if cfg_value else default_data_root()


def absolute_dataset(name: str) -> str:
    """A registered dataset's name as given; anything else (a folder) as an absolute path, so a
    run's config.yaml names the same folder from any working directory."""
    if not name or lookup(name) is not None:
        return name
    return os.path.abspath(os.path.expanduser(name))


def absolute_paths(cfg):
    """`cfg` with its dataset folder and data root as absolute paths (what a run folder stores)."""
    import dataclasses

    root = os.path.abspath(os.path.expanduser(cfg.data_root)) if cfg.data_root else ""
    return dataclasses.replace(cfg, dataset=absolute_dataset(cfg.dataset), data_root=root)
