"""Decode-once pixel cache: every image resized and center-cropped to S x S uint8, on disk.

Why: decoding a JPEG costs ~100x more CPU than copying its pixels. A run decodes each image once
(in parallel DataLoader workers, with a progress bar), stores `[N, S, S, 3]` uint8 rows in a flat
file, and every later epoch -- and every later run on the same data and preprocessing -- only
gathers rows from a memory map. Random crops and flips then happen on the device for a whole
batch (see pipeline.py).

The stored square is exactly the evaluation preprocessing (`square_pixels`: shorter side to
S = floor(img_size / crop_pct), then a center S x S crop), so evaluating from the cache and from
the decoded files gives identical inputs. Training crops are drawn from that S x S square, so for
non-square photos the outer parts of the long side are never seen in training (the price of a
fixed-shape cache; use --no-cache to crop from the full image).

Layout: `<root>/pixels/<key>/{pixels.u8, labels.npy, meta.json}` with root = $REXTRANSFER_CACHE
or ~/.cache/rextransfer, key = sha256(format version, samples.fingerprint(), S, interpolation).
A changed file (size/mtime), label, S or interpolation gives a new key, so a stale cache is never
read; the older cache of the same files is deleted after the new one is built. A cache is
written to a temp folder and renamed into place when complete, under an exclusive lock, so
concurrent runs (or DDP ranks) build it once and a half-written cache is never used.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..core.console import err
from ..core.errors import DataError, EnvironmentProblem
from .base import SampleSet
from .images import ImageDecodeError

FORMAT_VERSION = 1
_SPACE_MARGIN = 256 * 2**20   # leave this much free disk after the cache, bytes


def cache_root() -> Path:
    env = os.environ.get("REXTRANSFER_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/rextransfer").expanduser()


def square_pixels(img: Image.Image, size: int, interpolation: InterpolationMode) -> np.ndarray:
    """Shorter side to `size` (antialiased, torchvision/timm rounding), center crop size x size.

    The one function behind both the cache and the uncached eval path: uint8 [size, size, 3].
    """
    img = TF.resize(img, size, interpolation=interpolation)
    img = TF.center_crop(img, [size, size])
    return np.array(img, dtype=np.uint8)


class LoadFailure(str):
    """What a loader worker returns instead of pixels when a file broke after the scan.

    Raising in a worker would reach the main process wrapped in a multi-line traceback; returning
    this lets `check_batch` raise a one-line DataError that names the file.
    """


def load_failure(samples: SampleSet, i: int, e: ImageDecodeError) -> LoadFailure:
    return LoadFailure(
        f"cannot decode {samples.key(i)} ({e.reason}{': ' + e.detail if e.detail else ''}); it changed "
        f"after the pre-flight scan -- rerun to skip it, or check the data with `rextransfer scan`")


def collate(items: list):
    """default_collate, except that one LoadFailure makes the whole batch that failure."""
    for item in items:
        if isinstance(item, LoadFailure):
            return item
        if isinstance(item, tuple) and any(isinstance(x, LoadFailure) for x in item):
            return next(x for x in item if isinstance(x, LoadFailure))
    return torch.utils.data.default_collate(items)


def check_batch(batch):
    if isinstance(batch, LoadFailure):
        raise DataError(str(batch))
    return batch


def cache_key(samples: SampleSet, size: int, interpolation: InterpolationMode) -> str:
    text = f"v{FORMAT_VERSION}|{samples.fingerprint()}|{size}|{interpolation.value}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _identity(samples: SampleSet) -> str:
    """Which files, regardless of their content: used to delete superseded caches."""
    h = hashlib.sha256()
    for i in range(len(samples)):
        h.update(samples.key(i).encode() + b"\n")
    return h.hexdigest()[:20]


class PixelCache:
    """A built cache: `pixels()` is a read-only memmap [N, S, S, 3] (opened lazily per process)."""

    def __init__(self, path: Path, n: int, size: int, labels: np.ndarray):
        self.path = Path(path)
        self.n = n
        self.size = size
        self.labels = labels
        self._mm: np.memmap | None = None

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict:
        # DataLoader workers re-open the memmap instead of pickling its contents.
        return {**self.__dict__, "_mm": None}

    def pixels(self) -> np.memmap:
        # Copy-on-write mapping: rows can be wrapped as (writable) tensors without a copy; nothing
        # ever writes to them, and the file itself is never modified.
        if self._mm is None:
            self._mm = np.memmap(self.path / "pixels.u8", dtype=np.uint8, mode="c",
                                 shape=(self.n, self.size, self.size, 3))
        return self._mm

    def row(self, i: int) -> torch.Tensor:
        """Sample i's S x S x 3 uint8 square, without copying."""
        return torch.from_numpy(self.pixels()[i])

    def gather(self, rows: np.ndarray, flips: list[bool], pin: bool = False) -> torch.Tensor:
        """Copy rows into one uint8 batch [B, S, S, 3] (pinned for a fast upload if `pin`);
        flips[k] mirrors row k (numpy copies the reversed view at memcpy speed)."""
        x = torch.empty((len(rows), self.size, self.size, 3), dtype=torch.uint8, pin_memory=pin)
        out, mm = x.numpy(), self.pixels()
        for k, row in enumerate(rows):
            out[k] = mm[row, :, ::-1] if flips[k] else mm[row]
        return x

    @classmethod
    def open(cls, path: Path, expect: dict) -> "PixelCache | None":
        """The complete cache at `path`, or None if absent, incomplete or not what we expect."""
        try:
            meta = json.loads((path / "meta.json").read_text())
            if any(meta.get(k) != v for k, v in expect.items()):
                return None
            n, size = int(meta["n"]), int(meta["size"])
            if (path / "pixels.u8").stat().st_size != n * size * size * 3:
                return None
            labels = np.load(path / "labels.npy")
        except (OSError, ValueError, KeyError):
            return None
        return cls(path, n, size, labels)


def open_or_build(samples: SampleSet, size: int, interpolation: InterpolationMode, workers: int,
                  root: Path | None = None, progress: bool = True) -> PixelCache:
    """The cache of `samples` at `size`, built now if no complete one exists."""
    base = (root or cache_root()) / "pixels"
    key = cache_key(samples, size, interpolation)
    final = base / key
    expect = {"version": FORMAT_VERSION, "n": len(samples), "size": size, "interpolation": interpolation.value}
    cache = PixelCache.open(final, expect)
    if cache is not None:
        return cache
    try:
        base.mkdir(parents=True, exist_ok=True)
        lock = open(base / f"{key}.lock", "a+")
    except OSError as e:
        raise _env_problem(e, base) from None
    with lock:
        _lock(lock, key)
        # Another process may have finished while we waited for the lock: use theirs.
        cache = PixelCache.open(final, expect)
        if cache is not None:
            return cache
        for stale in base.glob(f".tmp-{key}-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # incomplete or foreign content under our key
            shutil.rmtree(final, ignore_errors=True)
        _build(samples, size, interpolation, workers, base, key, progress)
        cache = PixelCache.open(final, expect)
        if cache is not None:
            _prune_superseded(base, key, expect)
    if cache is None:  # pragma: no cover - we just built and renamed it
        raise EnvironmentProblem(f"the pixel cache at {final} could not be read back; delete it and rerun")
    return cache


def _lock(handle, key: str) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: rely on the atomic rename alone
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        err.print(f"waiting for another process that is building pixel cache {key} ...")
        fcntl.flock(handle, fcntl.LOCK_EX)


class _SquareSet(Dataset):
    def __init__(self, samples: SampleSet, size: int, interpolation: InterpolationMode):
        self.samples, self.size, self.interpolation = samples, size, interpolation

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor | LoadFailure:
        try:
            return torch.from_numpy(square_pixels(self.samples.load(i), self.size, self.interpolation))
        except ImageDecodeError as e:
            return load_failure(self.samples, i, e)


def _build(samples: SampleSet, size: int, interpolation: InterpolationMode, workers: int,
           base: Path, key: str, progress: bool) -> None:
    """Decode everything into base/.tmp-<key>-<pid>, then rename it to base/<key>."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    n = len(samples)
    need = n * size * size * 3
    free = shutil.disk_usage(base).free
    if free < need + _SPACE_MARGIN:
        raise EnvironmentProblem(
            f"the pixel cache of {n} images at {size} px needs {_size(need + _SPACE_MARGIN)} in {base} (with a "
            f"{_size(_SPACE_MARGIN)} margin), only {_size(free)} free; free space, set REXTRANSFER_CACHE to a bigger disk, or use --no-cache")
    tmp = base / f".tmp-{key}-{os.getpid()}"
    workers = workers if n > 128 else 0  # starting processes (~0.2 s) costs more than a few dozen decodes
    loader = DataLoader(_SquareSet(samples, size, interpolation), batch_size=32, num_workers=workers,
                        collate_fn=collate, generator=torch.Generator().manual_seed(0))  # never draws from the global RNG
    bar = Progress(TextColumn(f"caching {samples.split} pixels ({size} px)"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=err, transient=True, disable=not progress)
    try:
        tmp.mkdir()
        with open(tmp / "pixels.u8", "wb") as f, bar:
            task = bar.add_task("cache", total=n)
            # Sequential writes (not a writable memmap): a full disk is then an OSError we can
            # report, not a SIGBUS that kills the process.
            for batch in loader:
                batch = check_batch(batch)
                f.write(batch.numpy().tobytes())
                bar.advance(task, batch.shape[0])
        np.save(tmp / "labels.npy", np.asarray(samples.labels, dtype=np.int64))
        meta = {"version": FORMAT_VERSION, "n": n, "size": size, "interpolation": interpolation.value,
                "split": samples.split, "fingerprint": samples.fingerprint(), "identity": _identity(samples),
                "created": time.time()}
        (tmp / "meta.json").write_text(json.dumps(meta))  # written last: marks the folder complete
        os.rename(tmp, base / key)
    except OSError as e:
        raise _env_problem(e, base) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _prune_superseded(base: Path, key: str, expect: dict) -> None:
    """Delete caches of the same files and preprocessing whose content changed since (disk hygiene).

    A run still reading one keeps its open memmap: unlinking does not free the pages until it closes.
    """
    identity = json.loads((base / key / "meta.json").read_text())["identity"]
    same = {**expect, "identity": identity}
    for other in base.iterdir():
        if other.name == key or other.name.startswith(".") or not other.is_dir():
            continue
        try:
            meta = json.loads((other / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if all(meta.get(k) == v for k, v in same.items()):
            shutil.rmtree(other, ignore_errors=True)


def _size(n: int) -> str:
    """Bytes for people, in the largest unit that is at least 1 (never "0.0 GiB"): 1.5 GiB, 1020 KiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n} bytes"


def _env_problem(e: OSError, where: Path) -> EnvironmentProblem:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk is full"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "it is not writable"
    else:
        why = e.strerror or str(e)
    return EnvironmentProblem(
        f"cannot write the pixel cache in {where}: {why}; set REXTRANSFER_CACHE to a writable disk "
        f"with space, or use --no-cache")
