"""Hugging Face Hub copies of the built-in datasets, mapped explicitly onto the original releases.

Hub copies differ from the original releases in split names (`validation` standing for the official
test split), label columns (FGVC Aircraft's `label` holds the 70 families; the 100 variants are in
`variation`) and class order. A `HubSpec` states each of these for one copy, and `hub_parts` applies
it: it returns splits named like the original protocol ("train", "test") whose labels index the
original release's class list. `datasets` is imported inside functions so `rextransfer.data` stays light.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..core.errors import DataError
from .base import SampleSet
from .images import open_rgb


@dataclass(frozen=True)
class HubSpec:
    """How one Hub copy maps onto the original release."""

    hub_id: str
    # our split -> the Hub splits that make it up, concatenated in this order
    splits: dict[str, tuple[str, ...]]
    label_column: str = "label"
    image_column: str = "image"
    # "hub": the copy's ClassLabel order is the original's (checked on the dataset card);
    # "sorted": the original lists classes in code-point order and the copy's order is arbitrary,
    # so we sort the copy's names (mapping every label by name).
    class_order: str = "hub"
    # restrict the download to these files: tanganke/stanford_cars also ships 7 corrupted copies of test
    data_files: dict[str, str] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


class HubSamples(SampleSet):
    """A split backed by rows of one or more `datasets.Dataset` objects; images decode on `load`."""

    def __init__(
        self,
        parts: Sequence[tuple[str, Any]],
        labels: Sequence[int],
        classes: Sequence[str],
        split: str,
        *,
        hub_id: str,
        image_column: str = "image",
        crop_bottom: int = 0,
    ):
        super().__init__(labels, classes, split)
        from datasets import Image as ImageFeature

        # decode=False: rows give {"bytes", "path"} and we decode through open_rgb (EXIF, modes, bombs)
        self.parts = [
            (name, ds.select_columns([image_column]).cast_column(image_column, ImageFeature(decode=False)))
            for name, ds in parts
        ]
        self.image_column = image_column
        self.hub_id = hub_id
        self.crop_bottom = int(crop_bottom)
        self._starts = []
        total = 0
        for _, ds in self.parts:
            self._starts.append(total)
            total += len(ds)
        if total != len(self.labels):
            raise ValueError("rows and labels differ in length")

    def _locate(self, i: int) -> tuple[int, int]:
        part = bisect.bisect_right(self._starts, i) - 1
        return part, i - self._starts[part]

    def load(self, i: int, draft: tuple[int, int] | None = None) -> Image.Image:
        part, row = self._locate(i)
        value = self.parts[part][1][row][self.image_column]
        source = value.get("bytes") or value.get("path")
        if source is None:
            from .images import ImageDecodeError

            raise ImageDecodeError("missing", f"row {row} has no image")
        img = open_rgb(source, draft=None if self.crop_bottom else draft)
        if self.crop_bottom:
            w, h = img.size
            img = img.crop((0, 0, w, max(1, h - self.crop_bottom)))
        return img

    def key(self, i: int) -> str:
        part, row = self._locate(i)
        return f"hub:{self.hub_id}/{self.parts[part][0]}/{row}"

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.hub_id};crop_bottom={self.crop_bottom}\n".encode())
        for name, ds in self.parts:
            h.update(f"{name}|{len(ds)}|{getattr(ds, '_fingerprint', '')}\n".encode())
        h.update(",".join(map(str, self.labels)).encode())
        return h.hexdigest()[:16]


def saved_copy(root: Path, name: str) -> Path:
    """Where a copy saved with `DatasetDict.save_to_disk` is looked for: <data root>/<name>-hub/."""
    return root / f"{name}-hub"


def cache_dir(root: Path) -> Path:
    """The `datasets` cache used for Hub downloads, kept under the data root with everything else."""
    return root / "hf-datasets"


def needed_splits(spec: HubSpec) -> list[str]:
    return [s for names in spec.splits.values() for s in names]


def cached_download(spec: HubSpec, root: Path) -> Path | None:
    """The newest complete copy of `spec` in the datasets cache under the data root, as the
    library lays out a download: <cache>/<namespace>___<name>/<config>/<version>/<commit>/
    with dataset_info.json and <name>-<split>*.arrow. Only one holding every split we use counts."""
    if not cache_dir(root).is_dir():  # the common case, answered without importing datasets (~2 s)
        return None
    from datasets.naming import camelcase_to_snakecase

    namespace, _, repo = spec.hub_id.rpartition("/")
    folder = cache_dir(root) / "___".join([*([namespace] if namespace else []), camelcase_to_snakecase(repo)])
    found = []
    for info in folder.glob("*/*/*/dataset_info.json"):
        if info.parent.name.endswith(".incomplete"):
            continue
        try:
            splits = json.loads(info.read_text()).get("splits") or {}
            mtime = info.stat().st_mtime
        except (OSError, ValueError, AttributeError):
            continue
        if all(s in splits for s in needed_splits(spec)):
            found.append((mtime, info.parent))
    return max(found)[1] if found else None


def load_cached(spec: HubSpec, root: Path) -> Any:
    """A DatasetDict from the datasets cache, without the network and without `load_dataset`'s
    offline lookup, which hashes `data_files` patterns instead of the files they resolved to and so
    never finds a copy downloaded with `data_files` (huggingface/datasets#6837). Reads through the
    library's own cache builder. FileNotFoundError if there is none."""
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.cache.cache import Cache

    found = cached_download(spec, root)
    if found is None:
        raise FileNotFoundError(f"{spec.hub_id} is not in the datasets cache {cache_dir(root)}")
    config, version, commit = found.parts[-3:]
    builder = Cache(cache_dir=str(cache_dir(root)), dataset_name=camelcase_to_snakecase(spec.hub_id.rpartition("/")[2]),
                    repo_id=spec.hub_id, config_name=config, version=version, hash=commit)
    return builder.as_dataset()


def local_copy(spec: HubSpec, root: Path, name: str) -> Any | None:
    """The Hub copy from disk: a saved copy under the data root, else a download in the datasets
    cache; None if neither is there. Never touches the network."""
    saved = saved_copy(root, name)
    if (saved / "dataset_dict.json").exists():
        import datasets

        return datasets.load_from_disk(str(saved))
    if cached_download(spec, root) is not None:
        return load_cached(spec, root)
    return None


def open_hub(spec: HubSpec, root: Path, name: str) -> Any:
    """The Hub copy as a DatasetDict: from disk if it is there (`local_copy`), else
    `datasets.load_dataset` (downloads into <data root>/hf-datasets).

    Raises ConnectionError/FileNotFoundError/OSError/ValueError/RuntimeError from `datasets`
    unchanged; callers phrase them.
    """
    import datasets

    here = local_copy(spec, root, name)
    if here is not None:
        return here
    return datasets.load_dataset(spec.hub_id, cache_dir=str(cache_dir(root)), data_files=spec.data_files)


def save_copy(dataset_dict: Any, spec: HubSpec, root: Path, name: str) -> Path:
    """Save the splits we use with `save_to_disk` at <data root>/<name>-hub (written beside it and
    renamed into place, so an interrupted save leaves no half copy): it loads offline as is."""
    import shutil

    from datasets import DatasetDict

    missing = [s for s in needed_splits(spec) if s not in dataset_dict]
    if missing:
        raise DataError(f"Hub copy {spec.hub_id} has splits {', '.join(dataset_dict) or 'none'} but needs "
                        f"{', '.join(missing)}; it may have changed on the Hub: use the original release")
    final = saved_copy(root, name)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        DatasetDict({s: dataset_dict[s] for s in needed_splits(spec)}).save_to_disk(str(tmp))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def hub_parts(dataset_dict: Any, spec: HubSpec, num_classes: int, crop_bottom: int = 0) -> tuple[dict[str, HubSamples], list[str]]:
    """Apply `spec` to a DatasetDict: {"train": ..., "test": ...} with labels in the original class order."""
    from datasets import ClassLabel

    available = list(dataset_dict.keys())
    wanted = [s for names in spec.splits.values() for s in names]
    missing = [s for s in wanted if s not in available]
    if missing:
        raise DataError(
            f"Hub copy {spec.hub_id} has splits {', '.join(available) or 'none'} but needs {', '.join(missing)}; "
            "it may have changed on the Hub: use the original release (--source original)"
        )
    first = dataset_dict[wanted[0]]
    feature = first.features.get(spec.label_column)
    if not isinstance(feature, ClassLabel):
        raise DataError(
            f"Hub copy {spec.hub_id}: column {spec.label_column!r} is not a class-label column "
            f"(columns: {', '.join(first.column_names)}); use the original release (--source original)"
        )
    hub_names = list(feature.names)
    if len(set(hub_names)) != num_classes:
        raise DataError(
            f"Hub copy {spec.hub_id}: {spec.label_column!r} has {len(set(hub_names))} classes, expected {num_classes}; "
            "use the original release (--source original)"
        )
    classes = sorted(hub_names) if spec.class_order == "sorted" else hub_names
    to_ours = [classes.index(name) for name in hub_names]  # Hub id -> original id, by name

    parts: dict[str, HubSamples] = {}
    for ours, hub_splits in spec.splits.items():
        pieces, labels = [], []
        for hub_split in hub_splits:
            ds = dataset_dict[hub_split]
            if ds.features.get(spec.label_column) != feature:
                raise DataError(f"Hub copy {spec.hub_id}: split {hub_split!r} uses a different class list than {wanted[0]!r}")
            # read the column through arrow: iterating a datasets Column costs ~1 s per 75k rows
            labels.extend(to_ours[y] for y in ds.with_format("arrow")[spec.label_column].to_pylist())
            pieces.append((hub_split, ds))
        parts[ours] = HubSamples(
            pieces, labels, classes, ours, hub_id=spec.hub_id, image_column=spec.image_column, crop_bottom=crop_bottom
        )
    return parts, classes
