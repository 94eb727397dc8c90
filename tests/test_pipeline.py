"""The trainer's data interface: identical eval inputs on both paths, exact determinism, training
crops over the whole image (torchvision's RandomResizedCrop distribution) on both paths, and the
batched GPU placement of the finishing step (run here on CPU tensors)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rextransfer.data.augment import Finisher, sample_crops, step_draws
from rextransfer.config.settings import Config
from rextransfer.data.base import FileSamples
from rextransfer.core.errors import DataError, EnvironmentProblem
from rextransfer.data.pipeline import Pipeline

DATA_CONFIG = {"input_size": (3, 224, 224), "interpolation": "bicubic",
               "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_pct": 0.875}


class CountingSamples(FileSamples):
    """FileSamples that counts decodes (tests run loaders in-process: workers=0)."""

    loads = 0

    def load(self, i, draft=None):
        CountingSamples.loads += 1
        return super().load(i, draft=draft)


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Photos of varied size and aspect (odd and even sides, portrait and landscape)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(34, 70)), int(rng.integers(34, 70))
        smooth = np.linspace(0, 255, w)[None, :, None] * rng.random((1, 1, 3))
        arr = np.clip(smooth + rng.integers(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img_{i:03d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths


pytestmark = pytest.mark.usefixtures("cache_dir")  # every test with its own cache folder (conftest.py)


@pytest.fixture
def samples(tmp_path):
    paths = write_images(tmp_path / "images", 24)
    # label = index: every label identifies its sample, so batches can be compared by content
    return CountingSamples(paths, list(range(24)), [f"c{i}" for i in range(24)], "train")


def make(cache: bool, **kw) -> Pipeline:
    settings = dict(img_size=32, batch_size=8, workers=0, cache=cache, seed=3)
    settings.update(kw)
    data_config = {**DATA_CONFIG, **settings.pop("data_config", {})}
    rank, world = settings.pop("rank", 0), settings.pop("world", 1)
    return Pipeline(Config(**settings), data_config, torch.device("cpu"), rank, world)


def batches(pipe: Pipeline, samples, epoch=0, start_step=0):
    return [(x.clone(), y.clone()) for x, y in pipe.train_batches(samples, epoch, start_step=start_step)]


# -- sizes and preprocessing ------------------------------------------------------------------------
def test_resize_follows_timm_rule_and_batch_arithmetic():
    from timm.data import create_transform
    from torchvision.transforms import Resize

    for size, crop_pct in ((224, 0.875), (224, 0.95), (32, 0.9), (300, 1.0)):
        pipe = Pipeline(Config(img_size=size, crop_pct=crop_pct), DATA_CONFIG, torch.device("cpu"))
        timm_resize = next(t for t in create_transform(size, crop_pct=crop_pct).transforms if isinstance(t, Resize))
        expected = timm_resize.size[0] if isinstance(timm_resize.size, (list, tuple)) else timm_resize.size
        assert pipe.resize == expected
    pipe = Pipeline(Config(batch_size=64, grad_accum=2), DATA_CONFIG, torch.device("cpu"), rank=1, world=4)
    assert pipe.micro_batch() == 8
    assert pipe.steps_per_epoch(1000) == 15 and pipe.steps_per_epoch(10) == 1
    # crop_pct 0 takes the weights' value
    assert Pipeline(Config(crop_pct=0.0), {**DATA_CONFIG, "crop_pct": 0.95}, torch.device("cpu")).resize == 235


@pytest.mark.parametrize("img_size,crop_pct,interp", [(32, 0.875, "bicubic"), (29, 0.9, "bilinear")])
def test_both_paths_give_identical_eval_inputs_and_accuracy(samples, img_size, crop_pct, interp):
    from torchvision import transforms as T

    kw = dict(img_size=img_size, crop_pct=crop_pct, data_config={"interpolation": interp})
    standard = list(make(False, **kw).eval_batches(samples))
    cached = list(make(True, **kw).eval_batches(samples))
    assert len(standard) == len(cached) == 2          # eval batch = 2 x micro-batch = 16
    for (xs, ys), (xc, yc) in zip(standard, cached):
        assert xs.dtype == torch.float32 and xs.shape[1:] == (3, img_size, img_size)
        assert torch.equal(xs, xc) and torch.equal(ys, yc)

    # ...and they are the usual timm eval transform (resize shorter side, center crop, normalise)
    S = int(img_size / crop_pct)
    reference = T.Compose([T.Resize(S, interpolation=T.InterpolationMode(interp)), T.CenterCrop(S),
                           T.CenterCrop(img_size), T.ToTensor(), T.Normalize(DATA_CONFIG["mean"], DATA_CONFIG["std"])])
    expected = torch.stack([reference(samples.load(i)) for i in range(len(samples))])
    assert torch.allclose(torch.cat([x for x, _ in standard]), expected, atol=1e-5)

    # the same fixed model scores the same on both
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * img_size * img_size, 24))
    torch.nn.init.normal_(model[1].weight, generator=torch.Generator().manual_seed(0))
    accuracy = [sum((model(x).argmax(1) == y).sum().item() for x, y in run) for run in (standard, cached)]
    assert accuracy[0] == accuracy[1]


# -- determinism ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", [False, True])
def test_batches_are_a_pure_function_of_seed_and_epoch(samples, cache):
    pipe = make(cache)
    torch.manual_seed(1)
    first = batches(pipe, samples, epoch=2)
    torch.manual_seed(999)  # the global RNG has no say
    again = batches(pipe, samples, epoch=2)
    assert len(first) == 3 and first[0][0].shape == (8, 3, 32, 32)
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = batches(pipe, samples, epoch=3)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other))
    # every sample once per epoch (24 images, batch 8: nothing dropped)
    assert sorted(torch.cat([y for _, y in first]).tolist()) == list(range(24))


@pytest.mark.parametrize("cache", [False, True])
def test_start_step_resumes_with_exactly_the_rest_of_the_epoch(samples, cache):
    pipe = make(cache, batch_size=4, grad_accum=2)
    full = batches(pipe, samples, epoch=1)
    assert len(full) == 12 and full[0][0].shape[0] == 2      # 6 steps x 2 micro-batches of 2
    CountingSamples.loads = 0
    tail = batches(pipe, samples, epoch=1, start_step=4)
    assert len(tail) == 4
    for (x1, y1), (x2, y2) in zip(full[8:], tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    if not cache:
        assert CountingSamples.loads == 8  # skipped steps are not decoded


@pytest.mark.parametrize("cache", [False, True])
def test_ranks_split_each_global_batch_disjointly(samples, cache):
    single = batches(make(cache), samples)
    ranks = [batches(make(cache, rank=r, world=2), samples) for r in (0, 1)]
    for step, (x, y) in enumerate(single):
        parts = [ranks[0][step], ranks[1][step]]
        assert set(parts[0][1].tolist()).isdisjoint(parts[1][1].tolist())
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        # a sample is augmented the same whatever the number of ranks
        assert torch.equal(torch.cat([p[0] for p in parts]), x)


@pytest.mark.parametrize("cache", [False, True])
def test_train_batches_leave_the_global_rng_alone(samples, cache):
    torch.manual_seed(7)
    state = torch.get_rng_state()
    for _ in make(cache).train_batches(samples, 0):
        pass
    list(make(cache).eval_batches(samples))
    assert torch.equal(torch.get_rng_state(), state)


def test_train_batches_are_normalised_augmented_and_channels_last(samples):
    pipe = make(True, channels_last="on")
    x, y = next(iter(pipe.train_batches(samples, 0)))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    low = (0 - torch.tensor(DATA_CONFIG["mean"])) / torch.tensor(DATA_CONFIG["std"])
    assert (x.amin(dim=(0, 2, 3)) >= low - 1e-5).all() and x.std() > 0.3
    # crops differ from the plain center crop (augmentation happens)
    evals = torch.cat([e for e, _ in pipe.eval_batches(samples)])
    assert not torch.equal(x, evals[y])


def test_a_dataset_smaller_than_a_batch_still_fills_it(samples):
    small = samples.subset(range(5))
    (x, y), = batches(make(True), small)
    assert x.shape[0] == 8 and set(y.tolist()) == set(range(5))


@pytest.mark.parametrize("cache", [False, True])
def test_a_file_broken_after_the_scan_is_a_one_line_data_error(samples, cache, cache_dir):
    samples.paths[5].write_bytes(samples.paths[5].read_bytes()[:200])
    with pytest.raises(DataError, match=r"cannot decode .*img_005\.jpg \(truncated") as info:
        list(make(cache).eval_batches(samples))
    assert "\n" not in str(info.value)
    if cache:  # nothing half-written is left to be used later
        assert not [p for p in (cache_dir / "pixels").iterdir() if p.is_dir()]


# -- training crops: RandomResizedCrop over the whole image ------------------------------------------
def scalar_get_params(H: int, W: int, u: np.ndarray, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision.transforms.RandomResizedCrop.get_params, statement by statement, with its
    global-RNG draws replaced by the given uniforms (area, log-aspect, top, left per try)."""
    import math

    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for t in range(10):
        target_area = H * W * (scale[0] + (scale[1] - scale[0]) * u[t, 0])
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[t, 1])
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= W and 0 < h <= H:
            return int(u[t, 2] * (H - h + 1)), int(u[t, 3] * (W - w + 1)), h, w
    in_ratio = W / H
    if in_ratio < min(ratio):
        w, h = W, int(round(W / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = H, int(round(H * max(ratio)))
    else:
        w, h = W, H
    return (H - h) // 2, (W - w) // 2, h, w


def test_crop_boxes_follow_torchvisions_rule_exactly():
    rng = np.random.default_rng(0)
    sizes = [(int(h), int(w)) for h, w in rng.integers(1, 400, (2000, 2))] + [(10, 200), (200, 10), (1, 1), (256, 768)]
    u, _ = step_draws(0, 0, 0, len(sizes), True)
    boxes = sample_crops(sizes, u, (0.08, 1.0))
    assert boxes == [scalar_get_params(H, W, u[k].numpy()) for k, (H, W) in enumerate(sizes)]
    for (H, W), (top, left, h, w) in zip(sizes, boxes):
        assert 0 <= top and 0 <= left and 1 <= h and 1 <= w and top + h <= H and left + w <= W


def _within_sampling_error(a: np.ndarray, b: np.ndarray, sigmas: float = 4.5) -> bool:
    """Two Bernoulli/bin shares from independent samples of sizes len(a), len(b) agree."""
    p = (a.sum() + b.sum()) / (len(a) + len(b))
    return abs(a.mean() - b.mean()) <= sigmas * np.sqrt(p * (1 - p) * (1 / len(a) + 1 / len(b))) + 1e-9


def test_training_crop_boxes_have_torchvisions_distribution_over_the_whole_image():
    """On a 3:1 photo, the boxes the cached path draws on its copy (shorter side 256) and those
    torchvision's RandomResizedCrop draws on the original (1536 x 512) agree: the share touching
    the outer sixths, the area and aspect histograms -- the centre-square restriction is gone."""
    from torchvision.transforms import RandomResizedCrop

    n = 6000
    torch.manual_seed(0)
    original = torch.empty(3, 512, 1536)
    theirs = np.array([RandomResizedCrop.get_params(original, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)], float)
    theirs /= [512, 1536, 512, 1536]                  # relative to the image: top, left, h, w
    u = torch.cat([step_draws(5, 0, s, 600, True).u for s in range(n // 600)])
    ours = np.array(sample_crops([(256, 768)] * n, u, (0.08, 1.0)), float) / [256, 768, 256, 768]

    def outer(b):  # touches the left or the right sixth
        return (b[:, 1] < 1 / 6) | (b[:, 1] + b[:, 3] > 5 / 6)

    assert 0.25 < outer(ours).mean() < 0.6            # ~40%: the ends of the photo are seen
    assert _within_sampling_error(outer(ours), outer(theirs))
    for left_part in (outer(ours) & (ours[:, 1] < 1 / 6), outer(theirs) & (theirs[:, 1] < 1 / 6)):
        assert left_part.mean() > 0.1                 # both ends, not one
    area = lambda b: b[:, 2] * b[:, 3]  # noqa: E731
    aspect = lambda b: np.log(b[:, 3] * 3 / b[:, 2])  # noqa: E731  (w/h in pixels; the image is 3:1)
    for measure, edges in ((area, np.linspace(0, 0.45, 10)), (aspect, np.linspace(np.log(3 / 4), np.log(4 / 3), 9))):
        for lo, hi in zip(edges[:-1], edges[1:]):
            assert _within_sampling_error((measure(ours) >= lo) & (measure(ours) < hi),
                                          (measure(theirs) >= lo) & (measure(theirs) < hi)), (measure, lo)


@pytest.fixture
def wide_photo(tmp_path):
    """A 3:1 photo: red left sixth, blue right sixth, grey middle (432 x 144)."""
    arr = np.full((144, 432, 3), 128, np.uint8)
    arr[:, :72] = (230, 20, 20)
    arr[:, -72:] = (20, 20, 230)
    path = tmp_path / "wide" / "wide.png"
    path.parent.mkdir()
    Image.fromarray(arr).save(path)
    return FileSamples([path], [0], ["wide"], "train")


def _touch_shares(crops: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per crop (uint8-scale float [N, 3, h, w]): does it show red / blue pixels?"""
    r, b = crops[:, 0], crops[:, 2]
    return ((r - b) > 80).flatten(1).any(1).numpy(), ((b - r) > 80).flatten(1).any(1).numpy()


@pytest.mark.parametrize("cache", [True, False])
def test_training_crops_see_the_ends_of_a_wide_photo_as_torchvision_does(wide_photo, cache):
    """End to end, in pixels: the crops the trainer gets show the photo's red and blue ends as
    often as torchvision's RandomResizedCrop on the original photo shows them."""
    from torchvision import transforms as T

    pipe = make(cache, batch_size=64, img_size=16, hflip=False)
    mean, std = torch.tensor(DATA_CONFIG["mean"]).view(1, 3, 1, 1), torch.tensor(DATA_CONFIG["std"]).view(1, 3, 1, 1)
    ours = torch.cat([x for e in range(16) for x, _ in pipe.train_batches(wide_photo, e)]) * std * 255 + mean * 255
    torch.manual_seed(0)
    rrc, img = T.Compose([T.RandomResizedCrop(16), T.PILToTensor()]), wide_photo.load(0)
    theirs = torch.stack([rrc(img) for _ in range(len(ours))]).float()
    (our_red, our_blue), (their_red, their_blue) = _touch_shares(ours), _touch_shares(theirs)
    assert our_red.mean() > 0.12 and our_blue.mean() > 0.12
    assert _within_sampling_error(our_red, their_red) and _within_sampling_error(our_blue, their_blue)


def smooth_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Smooth (gradient) photos of varied size: crops of the same region look alike at any scale."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(60, 140)), int(rng.integers(60, 140))
        y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
        c = rng.random((3, 3))
        arr = np.clip(c[:, 0, None, None] * x + c[:, 1, None, None] * y + 0.2 * c[:, 2, None, None] * np.sin(6 * x * y), 0, 1)
        paths.append(folder / f"smooth_{i:02d}.png")
        Image.fromarray((255 * arr.transpose(1, 2, 0)).astype(np.uint8)).save(paths[-1])
    return paths


def test_both_paths_crop_the_same_region_of_each_sample(tmp_path):
    """A sample's crop and flip come from the same random numbers with or without the cache, so
    the cached path trains on (a resampled copy of) what --no-cache trains on."""
    paths = smooth_images(tmp_path / "smooth", 16)
    smooth = FileSamples(paths, list(range(16)), [str(i) for i in range(16)], "train")
    standard, cached = (torch.cat([x for x, _ in make(c).train_batches(smooth, 1)]) for c in (False, True))
    other_epoch = torch.cat([x for x, _ in make(True).train_batches(smooth, 2)])
    grey = 255 * min(DATA_CONFIG["std"])
    same = ((standard - cached).abs() * grey).flatten(1).mean(1)
    different = ((standard - other_epoch).abs() * grey).flatten(1).mean(1)
    assert same.mean() < 3 and same.max() < 15        # grey levels
    assert different.min() > 20


# -- the GPU placement, run on CPU tensors -----------------------------------------------------------
def whole_rows(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Cache-like rows: shorter side `size`, landscape and portrait, textured."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        long = int(rng.integers(size, 3 * size))
        h, w = (size, long) if k % 2 else (long, size)
        base = np.linspace(0, 255, w)[None, :, None] * rng.random((1, 1, 3)) + np.linspace(0, 200, h)[:, None, None] * rng.random((1, 1, 3))
        rows.append(np.clip(base * 0.5 + rng.integers(0, 120, (h, w, 3)), 0, 255).astype(np.uint8))
    return rows


def test_per_image_finishing_is_torchvisions_resized_crop_and_flip_exactly():
    """The CPU placement (Finisher.samples: a TorchScript-compiled loop, so loader threads do not
    queue for the GIL) gives, pixel for pixel, torchvision v2's uint8 resized_crop (antialiased
    bilinear) and hflip of each box, normalised -- and the same loop run as plain Python agrees."""
    from torchvision.transforms.v2 import functional as TF2

    from rextransfer.data.augment import _finish_rows

    finisher = Finisher(32, DATA_CONFIG["mean"], DATA_CONFIG["std"], False, torch.device("cpu"))
    rows = whole_rows(16, 36)
    u, flips = step_draws(0, 0, 0, 16, True)
    boxes = sample_crops([r.shape[:2] for r in rows], u, (0.08, 1.0))
    boxes[3] = None                                   # already at size: no resize
    rows[3] = np.ascontiguousarray(rows[3][:32, :32])
    batch = finisher.samples(rows, boxes, flips)
    for k, (row, box, flip) in enumerate(zip(rows, boxes, flips)):
        x = torch.from_numpy(row).permute(2, 0, 1)
        x = TF2.resized_crop(x, *box, [32, 32], antialias=True) if box else x
        x = TF2.horizontal_flip(x) if flip else x
        assert torch.equal(batch[k], x.float() * finisher.scale[0] + finisher.shift[0]), k
    plain = torch.empty_like(batch)
    full = [list(b) if b else [0, 0, 32, 32] for b in boxes]
    _finish_rows([torch.from_numpy(r) for r in rows], full, flips, plain, finisher.scale[0], finisher.shift[0], 32)
    assert torch.equal(plain, batch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_batched_crops_match_the_per_image_path(dtype):
    """Finisher.crops (GPU placement: one gather and two batched matmuls for the whole batch) and
    Finisher.samples (CPU placement: torch's uint8 kernel image by image) agree to one grey level,
    for landscape and portrait images, flipped or not -- float16 is what CUDA uses."""
    finisher = Finisher(32, DATA_CONFIG["mean"], DATA_CONFIG["std"], False, torch.device("cpu"))
    rows = whole_rows(16, 36)
    u, flips = step_draws(0, 0, 0, 16, True)
    assert 0 < sum(flips) < 16
    boxes = sample_crops([r.shape[:2] for r in rows], u, (0.08, 1.0))
    per_image = finisher.samples(rows, boxes, flips)
    pixels = torch.from_numpy(np.concatenate([r.reshape(-1, 3) for r in rows]))
    first = np.cumsum([0] + [r.shape[0] * r.shape[1] for r in rows])[:-1]
    meta = torch.tensor([[f, *r.shape[:2]] for f, r in zip(first, rows)])
    batched = finisher.crops(pixels, meta, torch.tensor(boxes), torch.tensor(flips), dtype=dtype)
    grey = (per_image - batched).abs() * 255 * torch.tensor(DATA_CONFIG["std"]).view(1, 3, 1, 1)
    assert batched.shape == per_image.shape and grey.max() <= 1.01 and grey.mean() < 0.3
    mirrored = finisher.crops(pixels, meta, torch.tensor(boxes), ~torch.tensor(flips), dtype=dtype)
    assert torch.allclose(mirrored, batched.flip(3), atol=1.01 / 255 / min(DATA_CONFIG["std"]))


def test_gpu_style_loading_gives_the_cpu_style_batches(samples):
    """The whole GPU route -- rows packed into one buffer, the device step, batched crops; eval
    squares gathered and center-cropped -- run on CPU tensors gives the CPU route's batches."""
    from rextransfer.data.pipeline import _CacheBatches, _CacheJob

    pipe = make(True)
    train_cache, eval_cache = pipe._cache(samples, whole=True), pipe._cache(samples, whole=False)
    rows = np.arange(8)
    u, flips = step_draws(0, 0, 0, 8, True)
    boxes = sample_crops([train_cache.sizes[r] for r in rows], u, pipe.scale)
    for cache, job, tolerance in ((train_cache, _CacheJob(rows, boxes, flips), 1.01), (eval_cache, _CacheJob(rows, None, [False] * 8), 0)):
        cpu_x, cpu_y = pipe._stage(_CacheBatches(cache, 32, pipe.finisher, pin=False)(job))
        loaded = _CacheBatches(cache, 32, None, pin=False)(job)
        assert loaded.finish == ("crops" if job.boxes else "center")
        gpu_x, gpu_y = pipe._stage(loaded)
        assert torch.equal(cpu_y, gpu_y)
        assert ((cpu_x - gpu_x).abs() * 255 * min(DATA_CONFIG["std"])).max() <= tolerance + 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_both_paths_agree_and_batches_are_deterministic(samples):
    def on(device, cache):
        return Pipeline(Config(img_size=32, batch_size=8, workers=2, cache=cache, seed=3), DATA_CONFIG, torch.device(device))

    standard, cached = on("cuda", False), on("cuda", True)
    for (xs, ys), (xc, yc) in zip(standard.eval_batches(samples), cached.eval_batches(samples)):
        assert xs.is_cuda and xs.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(xs, xc, atol=1e-6) and torch.equal(ys, yc)
    # the side-stream prefetch hands over the same batches, in order, as the CPU placement
    on_cpu = [(x, y) for x, y in on("cpu", True).train_batches(samples, 1)]
    on_gpu = [(x.cpu(), y.cpu()) for x, y in cached.train_batches(samples, 1)]
    for (a, ya), (b, yb) in zip(on_cpu, on_gpu):
        assert torch.equal(ya, yb) and ((a - b).abs() * 255 * min(DATA_CONFIG["std"])).max() <= 1.01
    for pipe in (standard, cached):
        first = [(x.cpu(), y.cpu()) for x, y in pipe.train_batches(samples, 1)]
        tail = [(x.cpu(), y.cpu()) for x, y in pipe.train_batches(samples, 1, start_step=1)]
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first[1:], tail))


@pytest.mark.parametrize("channels_last", ["off", "on"])
def test_loader_workers_never_change_a_batch(samples, channels_last):
    """--no-cache with worker processes (batches built in shared memory) and the cache with loader
    threads give exactly the in-process batches, in the asked memory layout."""
    for cache in (False, True):
        inline = batches(make(cache, channels_last=channels_last), samples, epoch=1)
        parallel = list(make(cache, workers=2, channels_last=channels_last).train_batches(samples, 1))
        assert len(inline) == len(parallel) == 3
        for (x1, y1), (x2, y2) in zip(inline, parallel):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
            assert x2.is_contiguous(memory_format=torch.channels_last if channels_last == "on" else torch.contiguous_format)
