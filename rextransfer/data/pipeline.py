"""Train and eval batches for the trainer: the one data interface of train.py.

Two paths, one contract (normalised float NCHW batches on the device, int64 labels):
  * cached (cfg.cache, default): every image is decoded once into an on-disk uint8 pixel cache
    (data/cache.py: whole images for training, eval squares); later batches are memmap reads,
    cropped, flipped and normalised by threads (CPU device) or on the GPU after a pinned upload;
  * standard (--no-cache): DataLoader worker processes decode every file with PIL every epoch.
Pixels stay uint8 until the last step, done by one `Finisher` (augment.py): on the GPU for a
whole batch in batched ops, or, when the device is the CPU, image by image in the loader
threads/workers, where torch does not hand small ops between intra-op threads (that stalls badly
on shared cores). Eval inputs are identical on both paths.

Training crops are torchvision's RandomResizedCrop (same scale and ratio ranges) over the whole
image on both paths: the original on the standard path, the cached copy (shorter side S) on the
cached one.

Determinism (resume must be bit-exact): the order of an epoch is a permutation seeded by (seed,
epoch); the augmentation of the sample at position p of the epoch is row p % batch of a generator
seeded by (seed, epoch, step = p // batch) -- the same numbers on both paths, independent of the
number of ranks, of grad_accum and of where the epoch was resumed. Nothing here draws from torch's
global RNG: DataLoaders get their own generator, and crop boxes come from private generators.

On CUDA the batch iterator works one batch ahead: batch k+1 is uploaded (pinned memory,
non-blocking) and finished on a side stream while the trainer computes on batch k.

A file that breaks after the pre-flight scan raises a one-line DataError naming it (the run stops;
rerunning rescans and skips the file).
"""

from __future__ import annotations

import math
import os
import signal
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..config.settings import Config
from ..core.errors import DataError
from .augment import CENTER, Finisher, center_box, interpolation_mode, sample_crops, step_draws
from .base import SampleSet
from .cache import PixelCache, check_batch, load_failure, open_or_build, threaded
from .rows import Spec, square_pixels
from .images import ImageDecodeError

EVAL_BATCH_CAP = 256         # eval batch = 2 x one-process micro-batch, at most this many images


def resolve_workers(workers: int) -> int:
    return min(8, os.cpu_count() or 1) if workers < 0 else workers


class Loaded(NamedTuple):
    """A batch as the loader hands it over, before the device step.

    finish: "done" (normalised already: CPU device), "none" (uint8 at size), "center" (uint8 to
    center-crop) or "crops" (whole images packed back to back; meta = int64 [B, 8]: first pixel,
    height, width, box top/left/h/w, flip; sizes = (S, L) of the batch's canvas).
    """

    x: Tensor
    y: Tensor
    finish: str
    meta: Tensor | None = None
    sizes: tuple[int, int] | None = None


class _FileBatches(Dataset):
    """Standard path. One item = one micro-batch: decode each file and crop it with PIL.

    Train jobs are [(index, uniforms, flip)]: RandomResizedCrop box from the sample's uniforms
    (augment.step_draws) on the decoded original, then flip. Eval jobs are [index]: `square_pixels`,
    exactly what the eval cache stores. With a finisher (CPU device) the worker also normalises;
    otherwise it returns uint8 [B, H, W, 3] for the GPU.
    """

    def __init__(self, samples: SampleSet, img_size: int, resize: int, interpolation: InterpolationMode,
                 scale: tuple[float, float], finisher: Finisher | None):
        self.samples, self.img_size, self.resize, self.interpolation = samples, img_size, resize, interpolation
        self.scale, self.finisher = scale, finisher

    def __getitem__(self, job: tuple[str, list]) -> Loaded | str:
        kind, items = job
        index = [item[0] for item in items] if kind == "train" else items
        pixels = []
        for k, i in enumerate(index):
            try:
                img = self.samples.load(i)
            except ImageDecodeError as e:
                return load_failure(self.samples, i, e)
            pixels.append(self._train(img, *items[k][1:]) if kind == "train" else
                          square_pixels(img, self.resize, self.interpolation))
        y = torch.tensor([self.samples.labels[i] for i in index])
        if self.finisher is None:
            return Loaded(torch.from_numpy(np.stack(pixels)), y, "none" if kind == "train" else "center")
        boxes = [None if kind == "train" else center_box(self.resize, self.resize, self.img_size)] * len(pixels)
        return Loaded(self.finisher.samples(pixels, boxes, [False] * len(pixels)), y, "done")

    def _train(self, img: Image.Image, u: np.ndarray, flip: bool) -> np.ndarray:
        top, left, h, w = sample_crops([(img.height, img.width)], torch.from_numpy(u)[None], self.scale)[0]
        img = TF.resized_crop(img, top, left, h, w, [self.img_size, self.img_size], InterpolationMode.BILINEAR)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(img, dtype=np.uint8)


class _CacheJob(NamedTuple):
    rows: np.ndarray
    boxes: list | None          # None: eval (center crop of the cached square)
    flips: list[bool]


class _CacheBatches:
    """Cached path, run in loader threads. CPU device: crop, resize and normalise each row
    straight from the memmap. GPU: pack the rows into one pinned buffer for `Finisher.crops`
    (training) or gather the eval squares for a center crop on the device."""

    def __init__(self, cache: PixelCache, img_size: int, finisher: Finisher | None, pin: bool):
        self.cache, self.img_size, self.finisher, self.pin = cache, img_size, finisher, pin

    def __call__(self, job: _CacheJob) -> Loaded:
        rows, boxes, flips = job
        y = torch.from_numpy(self.cache.labels[rows])
        if self.finisher is not None:
            if boxes is None:
                boxes = [center_box(*self.cache.sizes[r], self.img_size) for r in rows]
            return Loaded(self.finisher.samples(self.cache.rows(rows), boxes, flips), y, "done")
        y = y.pin_memory() if self.pin else y
        if boxes is None:
            return Loaded(self.cache.gather(rows, pin=self.pin), y, "center")
        pixels, meta = self.cache.pack(rows, pin=self.pin)
        meta = torch.cat([meta, torch.tensor(boxes, dtype=torch.int64).view(-1, 4),
                          torch.tensor(flips, dtype=torch.int64).view(-1, 1)], 1)
        sizes = (int(meta[:, 1:3].amin(1).max()), int(meta[:, 1:3].amax(1).max()))
        return Loaded(pixels, y, "crops", meta.pin_memory() if self.pin else meta, sizes)


def prefetched(items: Iterable, stage: Callable[[Loaded], tuple[Tensor, Tensor]],
               device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """stage(item) for each item: on CUDA one batch ahead on a side stream, so that the upload
    and finishing of batch k+1 overlap the trainer's compute on batch k; elsewhere in line (on the
    CPU the loader threads/workers already work ahead)."""
    if device.type != "cuda":
        for item in items:
            yield stage(item)
        return
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))  # the finisher's constants are ready

    def issue(item: Loaded):
        with torch.cuda.stream(side):
            x, y = stage(item)
            done = torch.cuda.Event()
            done.record(side)
        return x, y, done

    def hand_over(x: Tensor, y: Tensor, done) -> tuple[Tensor, Tensor]:
        main = torch.cuda.current_stream(device)
        main.wait_event(done)
        x.record_stream(main)  # made on the side stream, used on the main one: keep it till then
        y.record_stream(main)
        return x, y

    ahead = None
    for item in items:
        issued = issue(item)
        if ahead is not None:
            yield hand_over(*ahead)
        ahead = issued
    if ahead is not None:
        yield hand_over(*ahead)


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
        self._caches: dict[tuple[int, bool], tuple[SampleSet, PixelCache]] = {}

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
        bs, seed, hflip = self.cfg.batch_size, self.cfg.seed, self.cfg.hflip
        if not self.cfg.cache:
            jobs = []
            for s in steps:
                u, flips = step_draws(seed, epoch, s, bs, hflip)
                u = u.numpy()
                jobs += [("train", [(order[s * bs + k], u[k].copy(), flips[k]) for k in range(a, b)])
                         for a, b in self._micro_slices()]
            dataset = _FileBatches(samples, self.img_size, self.resize, self.interpolation, self.scale,
                                   self._worker_finisher())
            return self._run(dataset, jobs)
        cache = self._cache(samples, whole=True)

        def jobs_of_steps() -> Iterator[_CacheJob]:
            for s in steps:
                u, flips = step_draws(seed, epoch, s, bs, hflip)
                rows = order[s * bs: (s + 1) * bs]
                boxes = sample_crops([cache.sizes[r] for r in rows], u, self.scale)
                for a, b in self._micro_slices():
                    yield _CacheJob(np.asarray(rows[a:b], dtype=np.int64), boxes[a:b], flips[a:b])

        return self._run(self._cache_batches(cache), jobs_of_steps())

    def eval_batches(self, samples: SampleSet, start: int = 0, stop: int | None = None,
                     cached: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
        """Samples start..stop (default: all) in order: shorter side to S, center crop S, center crop
        img_size; normalised. Batches are eval_batch() samples counted from `start` (a shard of an
        evaluation split across ranks starts at a multiple of it, so its batches are the same).
        `cached=False` reads the files even with the pixel cache on (one pass that is not worth a
        cache on disk, e.g. the training images' features for head_init=ncm); the pixels are the same."""
        n, eb = len(samples) if stop is None else stop, self.eval_batch()
        spans = [(a, min(n, a + eb)) for a in range(start, n, eb)]
        if not self.cfg.cache or not cached:
            jobs = [("eval", list(range(a, b))) for a, b in spans]
            dataset = _FileBatches(samples, self.img_size, self.resize, self.interpolation, self.scale,
                                   self._worker_finisher())
            return self._run(dataset, jobs)
        cached = self._cache_batches(self._cache(samples, whole=False))
        return self._run(cached, [_CacheJob(np.arange(a, b), None, [False] * (b - a)) for a, b in spans])

    def prepare(self, train: SampleSet | None = None, *evals: SampleSet) -> None:
        """Build the pixel caches now (no-op without cache), e.g. before timing epoch 1: the training
        cache of `train` (whole images) and the eval caches (squares) of `evals`."""
        if self.cfg.cache:
            if train is not None:
                self._cache(train, whole=True)
            for samples in evals:
                self._cache(samples, whole=False)

    # -- internals -----------------------------------------------------------------------------------
    def _cache(self, samples: SampleSet, whole: bool) -> PixelCache:
        # Keyed by object identity (holding a reference, so the id stays unique): the fingerprint
        # stats every file, and once per Pipeline is enough.
        entry = self._caches.get((id(samples), whole))
        if entry is None:
            spec = Spec(self.resize, self.interpolation, whole)
            entry = self._caches[(id(samples), whole)] = (samples, open_or_build(samples, spec, self.workers))
        return entry[1]

    def _worker_finisher(self) -> Finisher | None:
        """Finish in the loader workers when the device is the CPU (parallel over processes that
        torch keeps single-threaded, image by image while it is in the CPU cache); on the GPU
        for a whole batch otherwise."""
        return self.finisher if self.device.type == "cpu" else None

    def _cache_batches(self, cache: PixelCache) -> _CacheBatches:
        return _CacheBatches(cache, self.img_size, self._worker_finisher(), pin=self.device.type == "cuda")

    def _stage(self, item: Loaded) -> tuple[Tensor, Tensor]:
        """The device step of a loaded batch: upload, then finish what the loader left to do."""
        x = item.x.to(self.device, non_blocking=True)
        y = item.y.to(self.device, dtype=torch.int64, non_blocking=True)
        if item.finish == "done":
            return x, y
        if item.finish == "crops":
            meta = item.meta.to(self.device, non_blocking=True)
            return self.finisher.crops(x, meta[:, :3], meta[:, 3:7], meta[:, 7].bool(), sizes=item.sizes), y
        return self.finisher.batch(x, CENTER if item.finish == "center" else None), y

    def _run(self, source: Dataset | _CacheBatches, jobs: Iterable) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of `jobs` on the device: a DataLoader over files, or threads over the cache."""
        if isinstance(source, _CacheBatches):
            loaded = threaded(source, jobs, self.workers)
        else:
            loaded = DataLoader(source, sampler=jobs, batch_size=None, num_workers=self.workers,
                                pin_memory=self.device.type == "cuda", worker_init_fn=ignore_sigint,
                                # its own generator: DataLoader otherwise draws a seed from the global RNG
                                generator=torch.Generator().manual_seed(self.cfg.seed))
        return prefetched((check_batch(batch) for batch in loaded), self._stage, self.device)
