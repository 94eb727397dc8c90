"""Pre-flight scan: find the images a run cannot use before it starts, not hours into it.

Every sample is decoded once through the same `load` the loaders use (so it reports exactly what
`open_rgb` rejects: zero-byte, truncated, not-an-image, decompression bombs, unreadable, images
with no pixels). JPEGs are decoded in draft mode (DCT downscaling): several times faster, and a
truncated file still fails because every scan of the entropy-coded data is read.

Results are remembered per file in `<cache root>/scan/<hash of the folder>.json`, keyed by
(key, file size, mtime): a rerun decodes only new or changed files, so it is instant.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from torch.utils.data import DataLoader, Dataset

from ..core.console import err
from ..core.errors import DataError, EnvironmentProblem
from .base import SampleSet, Subset
from .cache import cache_root
from .images import ImageDecodeError

SCAN_VERSION = 1
DRAFT = (64, 64)   # JPEG draft size for the scan: decode at >= 64 px instead of full size
SMALL = 128        # at most this many images to decode: no worker processes


@dataclass
class ScanResult:
    good: list[int]                          # sample indices that decode
    bad: list[tuple[str, str]]               # (key, reason) of the ones that do not
    counts: dict[str, int] = field(default_factory=dict)  # reason -> number of files
    split: str = ""
    decoded: int = 0                         # how many samples were decoded (the rest came from the cache)

    @property
    def total(self) -> int:
        return len(self.good) + len(self.bad)

    def summary(self) -> str:
        what = f"{self.split} split" if self.split else "images"
        line = f"scanned {self.total} images ({what}): {len(self.good)} good, {len(self.bad)} unusable"
        if self.counts:
            line += " (" + ", ".join(f"{reason} {n}" for reason, n in sorted(self.counts.items())) + ")"
        return line


def check_sample(samples: SampleSet, i: int, draft: bool) -> str | None:
    """None if sample i decodes to a non-empty RGB image, else the reason it does not."""
    try:
        img = samples.load(i, draft=DRAFT) if draft else samples.load(i)
    except ImageDecodeError as e:
        return e.reason
    except (OSError, ValueError, SyntaxError):  # e.g. a bounding box outside the image
        return "corrupt"
    if img.width == 0 or img.height == 0:
        return "no-pixels"
    return None


def scan_samples(samples: SampleSet, policy: str = "skip", workers: int = -1, progress: bool = True,
                 root: Path | None = None) -> ScanResult:
    """Decode-check every sample (cached per file); policy "fail" raises DataError on any bad one."""
    from .pipeline import resolve_workers

    keys = [samples.key(i) for i in range(len(samples))]
    store = _Store(root or cache_root(), keys)
    set_stamp: list[str] = []   # samples without a file (Hub rows): stamped by the whole set's fingerprint

    def stamp(key: str) -> str:
        try:
            st = os.stat(key)
            return f"{st.st_size}:{st.st_mtime_ns}"
        except (OSError, ValueError):
            if not set_stamp:
                set_stamp.append("set:" + samples.fingerprint())
            return set_stamp[0]

    stamps = [stamp(k) for k in keys]
    reasons: list[str | None] = [None] * len(keys)
    todo = []
    for i, key in enumerate(keys):
        hit = store.entries.get(key)
        if hit is not None and hit[0] == stamps[i]:
            reasons[i] = hit[1]
        else:
            todo.append(i)
    if todo:
        # Starting worker processes (~0.2 s) costs more than decoding a few dozen images inline.
        _decode(samples, todo, reasons, resolve_workers(workers) if len(todo) > SMALL else 0, progress)
        for i in todo:
            store.entries[keys[i]] = [stamps[i], reasons[i]]
        store.save()
    bad = [(keys[i], r) for i, r in enumerate(reasons) if r is not None]
    result = ScanResult(good=[i for i, r in enumerate(reasons) if r is None], bad=bad,
                        counts=dict(Counter(r for _, r in bad)), split=samples.split, decoded=len(todo))
    if bad and policy == "fail":
        key, reason = bad[0]
        raise DataError(f"{len(bad)} unusable images in the {samples.split} split (first: {key}: {reason}); "
                        f"remove or fix them, or use --bad-files skip to leave them out")
    return result


def check_cache_root(required: bool, root: Path | None = None) -> None:
    """Before any work: the cache root (REXTRANSFER_CACHE) is a folder or can be made one, on a
    writable disk. Without it the pixel cache cannot be built (`required`: EnvironmentProblem,
    exit 7); the scan cache only costs a rescan next time (a note)."""
    root = Path(root or cache_root())
    existing = next((p for p in (root, *root.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        problem = f"the cache folder {root} cannot be created: {existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"the cache folder {root} is not writable ({existing})"
    else:
        return
    if required:
        raise EnvironmentProblem(f"{problem}; set REXTRANSFER_CACHE to a writable folder, or use --no-cache")
    _UNSAVED.add(root)
    err.print(f"note: {problem}; images are scanned again next time (set REXTRANSFER_CACHE to a writable folder)",
              markup=False)


def write_bad_files_csv(results: ScanResult | Sequence[ScanResult], path: str | Path) -> None:
    """CSV of unusable files (file, reason, split) of one scan or of several splits' scans."""
    results = [results] if isinstance(results, ScanResult) else list(results)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "reason", "split"])
        for result in results:
            writer.writerows([key, reason, result.split] for key, reason in result.bad)


# -- internals -----------------------------------------------------------------------------------
def _takes_draft(samples: SampleSet) -> bool:
    while isinstance(samples, Subset):
        samples = samples.parent
    return "draft" in inspect.signature(samples.load).parameters


class _Check(Dataset):
    def __init__(self, samples: SampleSet, todo: list[int]):
        self.samples, self.todo, self.draft = samples, todo, _takes_draft(samples)

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, j: int) -> tuple[int, str | None]:
        i = self.todo[j]
        return i, check_sample(self.samples, i, self.draft)


def _as_list(items: list) -> list:
    return items


def _decode(samples: SampleSet, todo: list[int], reasons: list, workers: int, progress: bool) -> None:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    loader = DataLoader(_Check(samples, todo), batch_size=32, num_workers=workers, collate_fn=_as_list,
                        generator=torch.Generator())  # never draws from the global RNG
    bar = Progress(TextColumn(f"scanning {samples.split} images"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=err, transient=True, disable=not progress)
    with bar:
        task = bar.add_task("scan", total=len(todo))
        for batch in loader:
            for i, reason in batch:
                reasons[i] = reason
            bar.advance(task, len(batch))


_UNSAVED: set[Path] = set()  # cache roots already reported as unwritable


class _Store:
    """The per-folder JSON of earlier verdicts: {key: [stamp, reason or null]}."""

    def __init__(self, root: Path, keys: list[str]):
        prefix = os.path.commonprefix(keys) if keys else ""
        group = prefix[: prefix.rfind("/") + 1] if "/" in prefix else prefix
        name = hashlib.sha256(f"v{SCAN_VERSION}|{group}".encode()).hexdigest()[:16]
        self.path = root / "scan" / f"{name}.json"
        self.group = group
        try:
            data = json.loads(self.path.read_text())
            self.entries = data["entries"] if data.get("version") == SCAN_VERSION else {}
        except (OSError, ValueError, KeyError, TypeError):
            self.entries = {}

    def save(self) -> None:
        # Atomic replace; a cache that cannot be written only costs a rescan next time.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"version": SCAN_VERSION, "group": self.group, "entries": self.entries}))
            os.replace(tmp, self.path)
        except OSError as e:
            if self.path.parent.parent not in _UNSAVED:  # one note per cache root
                _UNSAVED.add(self.path.parent.parent)
                err.print(f"note: could not save the scan cache {self.path} ({e.strerror}); the next scan decodes again",
                          markup=False)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # e.g. its folder is a file: there is no temp file either
                pass
