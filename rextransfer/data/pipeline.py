"""Train and eval batches for the trainer: the one data interface of train.py.

Two paths, one contract (normalised float NCHW batches on the device, int64 labels):
  * cached (cfg.cache, default): every image is decoded once into an on-disk uint8 pixel cache
    (data/cache.py); later batches are memmap reads, cropped, flipped and normalised by threads
    (CPU device) or on the GPU after a pinned upload;
  * standard (--no-cache): DataLoader worker processes decode every file with PIL every epoch.
Pixels stay uint8 until the last step, done by one `Finisher` (augment.py: crop/resize, float,
mean/std, memory layout) for both paths: on the GPU for a whole batch, or, when the device is the
CPU, image by image in the loader threads/workers, where torch does not hand small ops between
intra-op threads (that stalls badly on shared cores). Eval inputs are identical on both paths.

Determinism (resume must be bit-exact): the order of an epoch is a permutation seeded by (seed,
epoch); augmentation is seeded per sample by (seed, epoch, position in the epoch) on the standard
path and per optimizer step by (seed, epoch, step) on the cached path, so it does not depend on
the number of ranks or on grad_accum. Nothing here draws from torch's global RNG: DataLoaders get
their own generator, and crop boxes come from private generators through our copy of
torchvision's RandomResizedCrop sampling (its `get_params` uses the global RNG).

A file that breaks after the pre-flight scan raises a one-line DataError naming it (the run stops;
rerunning rescans and skips the file).
"""

from __future__ import annotations

import math
import os
import signal
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .augment import CENTER, Finisher, center_box, interpolation_mode, mix_seed, sample_crops
from ..config.settings import Config
from .base import SampleSet
from .cache import PixelCache, check_batch, load_failure, open_or_build, square_pixels
from .images import ImageDecodeError
from ..core.errors import DataError, UsageError

EVAL_BATCH_CAP = 256         # eval batch = 2 x one-process micro-batch, at most this many images


def resolve_workers(workers: int) -> int:
    return min(8, os.cpu_count() or 1) if workers < 0 else workers


class _FileBatches(Dataset):
    """Standard path. One item = one micro-batch: decode each file and crop it with PIL.

    Train jobs are [(index, seed)]: random-resized-crop + flip seeded per sample. Eval jobs are
    [index]: `square_pixels`, exactly what the cache stores. With a finisher (CPU device) the
    worker also normalises; otherwise it returns uint8 [B, H, W, 3] for the GPU.
    """

    def __init__(self, samples: SampleSet, img_size: int, resize: int, interpolation: InterpolationMode,
                 scale: tuple[float, float], hflip: bool, finisher: Finisher | None):
        self.samples, self.img_size, self.resize, self.interpolation = samples, img_size, resize, interpolation
        self.scale, self.hflip, self.finisher = scale, hflip, finisher

    def __getitem__(self, job: tuple[str, list]):
        kind, items = job
        index = [item[0] for item in items] if kind == "train" else items
        pixels = []
        for k, i in enumerate(index):
            try:
                img = self.samples.load(i)
            except ImageDecodeError as e:
                return load_failure(self.samples, i, e)
            pixels.append(self._train(img, items[k][1]) if kind == "train" else
                          square_pixels(img, self.resize, self.interpolation))
        y = torch.tensor([self.samples.labels[i] for i in index])
        if self.finisher is None:
            return torch.from_numpy(np.stack(pixels)), y
        boxes = [None if kind == "train" else center_box(self.resize, self.resize, self.img_size)] * len(pixels)
        return self.finisher.samples([torch.from_numpy(p) for p in pixels], boxes, [False] * len(pixels)), y

    def _train(self, img: Image.Image, seed: int) -> np.ndarray:
        g = torch.Generator().manual_seed(seed)
        top, left, h, w = sample_crops([(img.height, img.width)], g, self.scale)[0]
        flip = bool(torch.rand(1, generator=g) < 0.5) and self.hflip
        img = TF.resized_crop(img, top, left, h, w, [self.img_size, self.img_size], InterpolationMode.BILINEAR)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.array(img, dtype=np.uint8)


class _CacheBatches:
    """Cached path. One job = one micro-batch of cache rows: (rows, crops or CENTER, flips).

    CPU device: crops and normalises each row straight from the memmap (no gather copy).
    GPU: gathers the rows into one (pinned) uint8 batch, mirrored where flipped, for `Finisher.batch`.
    """

    def __init__(self, cache: PixelCache, img_size: int, finisher: Finisher | None, pin: bool):
        self.cache, self.img_size, self.finisher, self.pin = cache, img_size, finisher, pin

    def __call__(self, job: tuple[np.ndarray, list | str, list]) -> tuple[Tensor, Tensor]:
        rows, crops, flips = job
        y = torch.from_numpy(self.cache.labels[rows])
        if self.finisher is None:
            return self.cache.gather(rows, flips, pin=self.pin), y
        if crops == CENTER:
            crops = [center_box(self.cache.size, self.cache.size, self.img_size)] * len(rows)
        return self.finisher.samples([self.cache.row(r) for r in rows], crops, flips), y


def threaded(fn, jobs: list, workers: int) -> Iterator:
    """fn(job) for each job, in order, `workers` at a time in threads (0: inline), 2 x workers ahead.

    The cached path uses threads, not DataLoader processes: a batch is a memmap read plus a few
    C-level ops that release the GIL, and a process would have to copy every finished batch into
    shared memory for the main process (measured: 25% more img/s, 35% less CPU per image).
    """
    if workers == 0:
        yield from map(fn, jobs)
        return
    # Each loader thread is one unit of parallelism: torch ops inside it run single-threaded (the
    # OpenMP setting is per thread; the training thread keeps its own), or 2 threads x 2 OpenMP
    # threads oversubscribe the cores (measured ~20% fewer img/s on 2 cores).
    with ThreadPoolExecutor(workers, thread_name_prefix="rextransfer-batches",
                            initializer=torch.set_num_threads, initargs=(1,)) as pool:
        pending: deque = deque()
        try:
            for job in jobs:
                pending.append(pool.submit(fn, job))
                if len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # the consumer stopped early (end of training, Ctrl-C): drop what is queued
            for future in pending:
                future.cancel()


def ignore_sigint(_worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the trainer. A terminal sends SIGINT to every process of the
    group; a worker that died of it could make the next batch fail before the trainer has saved."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def reuse_freed_memory() -> None:
    """Let glibc reuse freed batch buffers instead of returning them to the OS.

    A float batch is tens of MB; glibc serves allocations that large with a fresh mmap each time,
    and the first touch of every page then faults: measured 0.29 ms per 224-px image just to
    stack a batch, more than cropping and normalising it, vs 0.03 ms once freed memory is reused.
    Only the allocator's thresholds change (Linux/glibc; elsewhere this does nothing).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters from <malloc.h>
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        pass


_MALLOC_TUNED = False


class Pipeline:
    """Batches for one run on one rank; sizes from cfg, preprocessing from the weights' data_config."""

    def __init__(self, cfg: Config, data_config: dict, device: torch.device, rank: int = 0, world: int = 1):
        self.cfg = cfg
        self.device = torch.device(device)
        self.rank, self.world = rank, world
        cfg.micro_batch(world)  # checks that the global batch splits evenly
        self.img_size = cfg.img_size
        self.crop_pct = cfg.crop_pct or float(data_config.get("crop_pct") or 0.875)
        self.resize = int(math.floor(self.img_size / self.crop_pct))  # timm's eval resize rule
        self.interpolation = interpolation_mode(data_config.get("interpolation") or "bilinear")
        self.channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and self.device.type == "cuda")
        self.finisher = Finisher(self.img_size, data_config["mean"], data_config["std"], self.channels_last, self.device)
        reuse_freed_memory()
        self.workers = resolve_workers(cfg.workers)
        self.scale = (cfg.rrc_scale_min, 1.0)
        self._caches: dict[int, tuple[SampleSet, PixelCache]] = {}

    # -- sizes ---------------------------------------------------------------------------------------
    def micro_batch(self) -> int:
        return self.cfg.micro_batch(self.world)

    def steps_per_epoch(self, n: int) -> int:
        """Optimizer steps per epoch (the last partial batch is dropped; at least one step)."""
        return max(1, n // self.cfg.batch_size)

    def eval_batch(self) -> int:
        """The same on any number of ranks (2 x the one-process micro-batch): a rank's shard of an
        evaluation is then made of exactly the batches one process evaluates."""
        return min(2 * self.cfg.micro_batch(1), EVAL_BATCH_CAP)

    # -- order ---------------------------------------------------------------------------------------
    def epoch_order(self, n: int, epoch: int) -> list[int]:
        """Sample index at each position of the epoch: steps_per_epoch * batch_size positions.

        A dataset smaller than one batch is repeated (as further seeded permutations) to fill it.
        """
        if n == 0:
            raise DataError("no training images left (all were skipped or the split is empty)")
        need = self.steps_per_epoch(n) * self.cfg.batch_size
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        parts = [torch.randperm(n, generator=g)]
        while sum(len(p) for p in parts) < need:
            parts.append(torch.randperm(n, generator=g))
        return torch.cat(parts)[:need].tolist()

    def _micro_slices(self) -> list[tuple[int, int]]:
        """This rank's micro-batches as [start, end) offsets inside a global batch."""
        per_rank = self.cfg.batch_size // self.world
        mb = self.micro_batch()
        first = self.rank * per_rank
        return [(first + m * mb, first + (m + 1) * mb) for m in range(self.cfg.grad_accum)]

    # -- batches -------------------------------------------------------------------------------------
    def train_batches(self, samples: SampleSet, epoch: int, start_step: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's micro-batches of the epoch, from optimizer step `start_step` on (earlier steps
        are skipped without decoding anything)."""
        order = self.epoch_order(len(samples), epoch)
        steps = range(start_step, self.steps_per_epoch(len(samples)))
        bs, seed = self.cfg.batch_size, self.cfg.seed
        if not self.cfg.cache:
            jobs = [("train", [(order[s * bs + k], mix_seed(seed, epoch, s * bs + k)) for k in range(a, b)])
                    for s in steps for a, b in self._micro_slices()]
            dataset = _FileBatches(samples, self.img_size, self.resize, self.interpolation, self.scale,
                                   self.cfg.hflip, self._worker_finisher())
            return self._run(dataset, jobs, [None] * len(jobs))
        cache = self._cache(samples)
        jobs = []
        for s in steps:
            g = torch.Generator().manual_seed(mix_seed(seed, epoch, s, "cached"))
            crops = sample_crops([(cache.size, cache.size)] * bs, g, self.scale)
            flips = [f and self.cfg.hflip for f in (torch.rand(bs, generator=g) < 0.5).tolist()]
            for a, b in self._micro_slices():
                jobs.append((np.asarray(order[s * bs + a: s * bs + b], dtype=np.int64), crops[a:b], flips[a:b]))
        return self._run(self._cache_batches(cache), jobs, [job[1] for job in jobs])

    def eval_batches(self, samples: SampleSet, start: int = 0, stop: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Samples start..stop (default: all) in order: shorter side to S, center crop S, center crop
        img_size; normalised. Batches are eval_batch() samples counted from `start` (a shard of an
        evaluation split across ranks starts at a multiple of it, so its batches are the same)."""
        n, eb = len(samples) if stop is None else stop, self.eval_batch()
        spans = [(a, min(n, a + eb)) for a in range(start, n, eb)]
        if not self.cfg.cache:
            jobs = [("eval", list(range(a, b))) for a, b in spans]
            dataset = _FileBatches(samples, self.img_size, self.resize, self.interpolation, self.scale,
                                   self.cfg.hflip, self._worker_finisher())
        else:
            jobs = [(np.arange(a, b), CENTER, [False] * (b - a)) for a, b in spans]
            dataset = self._cache_batches(self._cache(samples))
        return self._run(dataset, jobs, [CENTER] * len(jobs))

    def prepare(self, *sample_sets: SampleSet) -> None:
        """Build the pixel caches now (no-op without cache), e.g. before timing epoch 1."""
        if self.cfg.cache:
            for samples in sample_sets:
                self._cache(samples)

    # -- internals -----------------------------------------------------------------------------------
    def _cache(self, samples: SampleSet) -> PixelCache:
        # Keyed by object identity (holding a reference, so the id stays unique): the fingerprint
        # stats every file, and once per Pipeline is enough.
        entry = self._caches.get(id(samples))
        if entry is None:
            cache = open_or_build(samples, self.resize, self.interpolation, self.workers)
            entry = self._caches[id(samples)] = (samples, cache)
        return entry[1]

    def _worker_finisher(self) -> Finisher | None:
        """Finish in the loader workers when the device is the CPU (parallel over processes that
        torch keeps single-threaded, image by image while it is in the CPU cache); on the GPU
        for a whole batch otherwise."""
        return self.finisher if self.device.type == "cpu" else None

    def _cache_batches(self, cache: PixelCache) -> _CacheBatches:
        return _CacheBatches(cache, self.img_size, self._worker_finisher(), pin=self.device.type == "cuda")

    def _run(self, source: Dataset | _CacheBatches, jobs: list, crops: list) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of `jobs` on the device: a DataLoader over files, or threads over the cache."""
        if isinstance(source, _CacheBatches):
            loaded = threaded(source, jobs, self.workers)
        else:
            loaded = DataLoader(source, sampler=jobs, batch_size=None, num_workers=self.workers,
                                pin_memory=self.device.type == "cuda", worker_init_fn=ignore_sigint,
                                # its own generator: DataLoader otherwise draws a seed from the global RNG
                                generator=torch.Generator().manual_seed(self.cfg.seed))
        finish_here = self._worker_finisher() is None

        def batches() -> Iterator[tuple[Tensor, Tensor]]:
            for batch, crop in zip(loaded, crops):
                x, y = check_batch(batch)
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, dtype=torch.int64, non_blocking=True)
                yield (self.finisher.batch(x, crop) if finish_here else x), y

        return batches()
