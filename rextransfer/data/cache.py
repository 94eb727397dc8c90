"""Decode-once pixel cache: every image decoded and resized once, stored as uint8 rows on disk.

Why: decoding a JPEG costs ~10x more CPU than cropping its pixels. A run decodes each image once
(in parallel threads, with a progress bar) into a flat file of variable-size uint8 rows with an
offset index, and every later epoch -- and every later run on the same data and preprocessing --
only reads rows from a memory map.

Two kinds of cache (`Spec.whole`), because training and evaluation need different pixels:
  * training (whole): the whole image, aspect kept, shorter side to S = floor(img_size /
    crop_pct). RandomResizedCrop then samples its boxes over the whole image, exactly the
    distribution torchvision draws on the original. The long side is capped at MAX_ASPECT x S
    (rows.py; center crop): a 10:1 panorama cannot blow up the cache; the cost is that training
    on an image wider (or taller) than 4:1 never sees the ends beyond that -- no photo of the four
    fine-grained datasets is that wide. A row is S x L x 3 bytes (L <= 4 S: at most 4x the eval
    square; 1.3-1.5x for typical 4:3-3:2 photos). JPEGs are decoded at reduced scale where S allows
    (DCT-domain downscale by 2, 4 or 8) and resized with torch's antialiased uint8 kernel. The
    other cost of a cache at S: a small crop is upsampled from S-scale pixels, where --no-cache
    resamples it from the original (at S = 256 a 0.08-area crop of a 1000 x 700 photo has ~100 px
    of detail across instead of ~280 before it is resized to 224).
  * evaluation (square): the center S x S square, the timm eval preprocessing (`square_pixels`,
    PIL, full decode), the very function the uncached eval path uses, so evaluating from the cache
    and from the files gives identical inputs.

Layout: `<root>/pixels/<key>/{pixels.u8, index.npy, labels.npy, meta.json}` with root =
$REXTRANSFER_CACHE or ~/.cache/rextransfer, index = int64 [N, 3] (first byte, height, width) and
key = sha256(format version, samples.fingerprint(), the Spec). A changed file (size/mtime), label,
S, interpolation or cache kind gives a new key, so a stale cache is never read; the older cache of
the same files is deleted after the new one is built. A cache is written to a temp folder and
renamed into place when complete (meta.json last), under an exclusive lock, so concurrent runs
(or DDP ranks) build it once, and a killed build leaves nothing that is ever used.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..core.console import err
from ..core.errors import DataError, EnvironmentProblem
from .base import SampleSet
from .images import ImageDecodeError
from .rows import Spec, load_for

FORMAT_VERSION = 2
_SPACE_MARGIN = 256 * 2**20   # leave this much free disk after the cache, bytes


def cache_root() -> Path:
    env = os.environ.get("REXTRANSFER_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/rextransfer").expanduser()


class LoadFailure(str):
    """What a loader worker returns instead of pixels when a file broke after the scan.

    Raising in a worker would reach the main process wrapped in a multi-line traceback; returning
    this lets `check_batch` raise a one-line DataError that names the file.
    """


def load_failure(samples: SampleSet, i: int, e: ImageDecodeError) -> LoadFailure:
    return LoadFailure(
        f"cannot decode {samples.key(i)} ({e.reason}{': ' + e.detail if e.detail else ''}); it changed "
        f"after the pre-flight scan -- rerun to skip it, or check the data with `rextransfer scan`")


def check_batch(batch):
    if isinstance(batch, LoadFailure):
        raise DataError(str(batch))
    return batch


def threaded(fn: Callable, jobs: Iterable, workers: int) -> Iterator:
    """fn(job) for each job, in order, `workers` at a time in threads (0: inline), 2 x workers ahead.

    Threads, not processes: decoding, resizing and cropping happen in C code that releases the
    GIL, and a process would have to copy every result into shared memory for the main process
    (measured on the cached path: 25% more img/s, 35% less CPU per image).
    """
    if workers == 0:
        yield from map(fn, jobs)
        return
    # Each thread is one unit of parallelism: torch ops inside it run single-threaded, or 2 threads
    # x 2 OpenMP threads oversubscribe the cores (measured ~20% fewer img/s on 2 cores). The
    # OpenMP setting is per thread, but torch.set_num_threads also sets the default that a thread
    # takes at its first parallel op: the caller (the trainer) fixes its own first and gets the
    # default back at the end, or a trainer that had not computed yet would train on one core.
    caller_threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="rextransfer-data",
                                initializer=torch.set_num_threads, initargs=(1,)) as pool:
            pending: deque = deque()
            try:
                for job in jobs:
                    pending.append(pool.submit(fn, job))
                    if len(pending) > 2 * workers:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:  # the consumer stopped early (end of training, Ctrl-C, an error): drop the queue
                for future in pending:
                    future.cancel()
    finally:
        torch.set_num_threads(caller_threads)


def cache_key(samples: SampleSet, spec: Spec) -> str:
    text = f"v{FORMAT_VERSION}|{samples.fingerprint()}|{spec.text()}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _identity(samples: SampleSet) -> str:
    """Which files, regardless of their content: used to delete superseded caches."""
    h = hashlib.sha256()
    for i in range(len(samples)):
        h.update(samples.key(i).encode() + b"\n")
    return h.hexdigest()[:20]


class PixelCache:
    """A built cache: rows of a read-only memmap (opened lazily), their sizes, the labels."""

    def __init__(self, path: Path, index: np.ndarray, labels: np.ndarray, spec: Spec):
        self.path = Path(path)
        self.index = index                     # int64 [N, 3]: first byte, height, width
        self.sizes = [(int(h), int(w)) for h, w in index[:, 1:]]
        self.labels = labels
        self.spec = spec
        self._flat: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)

    def flat(self) -> np.ndarray:
        # Copy-on-write mapping: rows can be wrapped as (writable) tensors without a copy; nothing
        # ever writes to them, and the file itself is never modified.
        if self._flat is None:
            total = int(self.index[-1, 0] + self.index[-1, 1] * self.index[-1, 2] * 3) if len(self) else 0
            self._flat = (np.memmap(self.path / "pixels.u8", dtype=np.uint8, mode="c", shape=(total,))
                          if total else np.zeros(0, np.uint8))
        return self._flat

    def row(self, i: int) -> np.ndarray:
        """Sample i's uint8 [h, w, 3] pixels, without copying."""
        first, h, w = (int(v) for v in self.index[i])
        return self.flat()[first: first + h * w * 3].reshape(h, w, 3)

    def rows(self, rows: np.ndarray) -> list[torch.Tensor]:
        """Samples' uint8 [h, w, 3] pixels as tensors over the map, without copying (a tensor view
        costs ~2 us of Python; a numpy memmap slice and reshape ~15 us, per image per batch)."""
        flat = torch.from_numpy(self.flat())
        return [flat[f: f + h * w * 3].view(h, w, 3) for f, h, w in self.index[rows].tolist()]

    def gather(self, rows: np.ndarray, pin: bool = False) -> torch.Tensor:
        """Rows of one size (eval squares) as one uint8 batch [B, h, w, 3] (pinned if `pin`)."""
        h, w = self.sizes[int(rows[0])]
        x = torch.empty((len(rows), h, w, 3), dtype=torch.uint8, pin_memory=pin)
        out = x.numpy()
        for k, r in enumerate(rows):
            out[k] = self.row(int(r))
        return x

    def pack(self, rows: np.ndarray, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of any sizes back to back: (uint8 [P, 3] pixels, int64 [B, 3] first pixel/h/w),
        what `Finisher.crops` takes; one upload of exactly the pixels of the batch."""
        sizes = self.index[rows, 1] * self.index[rows, 2]
        firsts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        pixels = torch.empty((int(sizes.sum()), 3), dtype=torch.uint8, pin_memory=pin)
        out, flat = pixels.numpy().reshape(-1), self.flat()
        for r, first, n in zip(rows, firsts * 3, sizes * 3):
            start = int(self.index[r, 0])
            out[first: first + n] = flat[start: start + n]
        meta = torch.from_numpy(np.stack([firsts, self.index[rows, 1], self.index[rows, 2]], 1))
        return pixels, meta

    @classmethod
    def open(cls, path: Path, expect: dict, spec: Spec) -> "PixelCache | None":
        """The complete cache at `path`, or None if absent, incomplete or not what we expect."""
        try:
            meta = json.loads((path / "meta.json").read_text())
            if any(meta.get(k) != v for k, v in expect.items()):
                return None
            index = np.load(path / "index.npy")
            labels = np.load(path / "labels.npy")
            n = int(meta["n"])
            if index.shape != (n, 3) or len(labels) != n:
                return None
            ends = index[:, 0] + index[:, 1] * index[:, 2] * 3
            if n and (index[0, 0] != 0 or (index[1:, 0] != ends[:-1]).any()):
                return None
            if (path / "pixels.u8").stat().st_size != (int(ends[-1]) if n else 0):
                return None
        except (OSError, ValueError, KeyError):
            return None
        return cls(path, index, labels, spec)


def open_or_build(samples: SampleSet, spec: Spec, workers: int, root: Path | None = None,
                  progress: bool = True) -> PixelCache:
    """The cache of `samples` for `spec`, built now if no complete one exists."""
    base = (root or cache_root()) / "pixels"
    key = cache_key(samples, spec)
    final = base / key
    expect = {"version": FORMAT_VERSION, "n": len(samples), "spec": spec.text()}
    cache = PixelCache.open(final, expect, spec)
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
        cache = PixelCache.open(final, expect, spec)
        if cache is not None:
            return cache
        for stale in base.glob(f".tmp-{key}-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # incomplete or foreign content under our key
            shutil.rmtree(final, ignore_errors=True)
        _build(samples, spec, workers, base, key, expect, progress)
        cache = PixelCache.open(final, expect, spec)
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


def _build(samples: SampleSet, spec: Spec, workers: int, base: Path, key: str, expect: dict,
           progress: bool) -> None:
    """Decode everything into base/.tmp-<key>-<pid>, then rename it to base/<key>."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    n = len(samples)
    need = n * spec.size * spec.size * 3  # every row holds at least the S x S square
    free = shutil.disk_usage(base).free
    if free < need + _SPACE_MARGIN:
        raise EnvironmentProblem(
            f"the pixel cache of {n} images at {spec.size} px needs {_size(need + _SPACE_MARGIN)} in {base} (with a "
            f"{_size(_SPACE_MARGIN)} margin), only {_size(free)} free; free space, set REXTRANSFER_CACHE to a bigger disk, or use --no-cache")
    tmp = base / f".tmp-{key}-{os.getpid()}"

    def decode(i: int) -> np.ndarray | LoadFailure:
        try:
            return load_for(samples, i, spec)
        except ImageDecodeError as e:
            return load_failure(samples, i, e)

    kind = "training images" if spec.whole else "eval squares"
    bar = Progress(TextColumn(f"caching {samples.split} pixels ({kind}, {spec.size} px)"), BarColumn(),
                   MofNCompleteColumn(), TimeRemainingColumn(), console=err, transient=True, disable=not progress)
    index = np.zeros((n, 3), dtype=np.int64)
    try:
        tmp.mkdir()
        with open(tmp / "pixels.u8", "wb") as f, bar:
            task = bar.add_task("cache", total=n)
            offset = 0
            # Sequential writes (not a writable memmap): a full disk is then an OSError we can
            # report, not a SIGBUS that kills the process.
            for i, pixels in enumerate(threaded(decode, range(n), workers if n > 16 else 0)):
                pixels = check_batch(pixels)
                f.write(memoryview(pixels).cast("B"))
                index[i] = offset, pixels.shape[0], pixels.shape[1]
                offset += pixels.nbytes
                bar.advance(task)
        np.save(tmp / "index.npy", index)
        np.save(tmp / "labels.npy", np.asarray(samples.labels, dtype=np.int64))
        meta = {**expect, "split": samples.split, "fingerprint": samples.fingerprint(),
                "identity": _identity(samples), "created": time.time()}
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
