"""The trainer's data interface: identical eval inputs on both paths, exact determinism, the cache."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rextransfer.data.augment import sample_crops
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


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("REXTRANSFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


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


def test_random_resized_crop_boxes_stay_inside_and_in_range():
    g = torch.Generator().manual_seed(0)
    sizes = [(int(h), int(w)) for h, w in np.random.default_rng(0).integers(1, 400, (500, 2))] + [(10, 200), (200, 10)]
    for (H, W), (top, left, h, w) in zip(sizes, sample_crops(sizes, g, (0.08, 1.0))):
        assert 0 <= top and 0 <= left and 1 <= h and 1 <= w and top + h <= H and left + w <= W
    boxes = sample_crops([(256, 256)] * 2000, g, (0.08, 1.0))
    area = np.array([h * w for _, _, h, w in boxes]) / 256**2
    aspect = np.array([w / h for _, _, h, w in boxes])
    assert area.min() >= 0.075 and area.max() <= 1.0 and 0.3 < area.mean() < 0.7
    assert aspect.min() >= 0.74 and aspect.max() <= 1.36


# -- the cache --------------------------------------------------------------------------------------
def cache_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "pixels").iterdir() if p.is_dir() and not p.name.startswith("."))


def test_cache_is_reused_and_rebuilt_when_data_or_preprocessing_changes(samples, cache_dir):
    CountingSamples.loads = 0
    make(True).prepare(samples)
    assert CountingSamples.loads == 24 and len(cache_dirs(cache_dir)) == 1
    first = cache_dirs(cache_dir)[0]
    meta = json.loads((cache_dir / "pixels" / first / "meta.json").read_text())
    assert meta["size"] == 36 and meta["n"] == 24

    # another run, same data and preprocessing: nothing decoded
    make(True).prepare(CountingSamples(samples.paths, samples.labels, samples.classes, "train"))
    assert CountingSamples.loads == 24 and cache_dirs(cache_dir) == [first]

    # preprocessing changed: resize size S, interpolation -> a new cache each (old ones kept)
    make(True, crop_pct=0.8).prepare(samples)
    make(True, data_config={"interpolation": "bilinear"}).prepare(samples)
    assert CountingSamples.loads == 72 and len(cache_dirs(cache_dir)) == 3

    # a file changed (size/mtime): rebuilt, the new pixels are used, the superseded cache is deleted
    Image.new("RGB", (50, 40), (255, 0, 0)).save(samples.paths[0])
    os.utime(samples.paths[0], ns=(1, 1))
    changed = CountingSamples(samples.paths, samples.labels, samples.classes, "train")
    x, _ = next(iter(make(True).eval_batches(changed)))
    assert CountingSamples.loads == 96 and len(cache_dirs(cache_dir)) == 3 and first not in cache_dirs(cache_dir)
    red = (torch.tensor([1.0, 0, 0]) - torch.tensor(DATA_CONFIG["mean"])) / torch.tensor(DATA_CONFIG["std"])
    assert torch.allclose(x[0, :, 16, 16], red, atol=0.1)


def test_concurrent_builds_decode_once(samples, cache_dir):
    CountingSamples.loads = 0
    threads = [threading.Thread(target=make(True).prepare, args=(samples,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert CountingSamples.loads == 24 and len(cache_dirs(cache_dir)) == 1


@pytest.mark.parametrize("cache", [False, True])
def test_a_file_broken_after_the_scan_is_a_one_line_data_error(samples, cache, cache_dir):
    samples.paths[5].write_bytes(samples.paths[5].read_bytes()[:200])
    with pytest.raises(DataError, match=r"cannot decode .*img_005\.jpg \(truncated") as info:
        list(make(cache).eval_batches(samples))
    assert "\n" not in str(info.value)
    if cache:  # nothing half-written is left to be used later
        assert cache_dirs(cache_dir) == []


def test_no_room_for_the_cache_is_an_environment_problem(samples, cache_dir, monkeypatch):
    import shutil

    from rextransfer.data import cache as cache_module

    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(EnvironmentProblem, match="needs .* GiB .* --no-cache"):
        make(True).prepare(samples)
    assert cache_dirs(cache_dir) == []


def test_gpu_style_batch_finishing_matches_per_image_finishing(samples):
    """Finisher.batch (GPU placement: gather mirrored rows, crop the batch) and Finisher.samples
    (CPU placement: crop each row from the memmap) agree, so CPU and GPU runs augment alike."""
    from rextransfer.data.augment import CENTER, center_box

    pipe = make(True)
    cache = pipe._cache(samples)
    rows = np.arange(8)
    crops = sample_crops([(cache.size, cache.size)] * 8, torch.Generator().manual_seed(0), (0.08, 1.0))
    flips = [k % 2 == 0 for k in range(8)]
    per_image = pipe.finisher.samples([cache.row(r) for r in rows], crops, flips)
    batched = pipe.finisher.batch(cache.gather(rows, flips), crops)
    assert (per_image - batched).abs().max() <= 1.01 / 255 / min(DATA_CONFIG["std"])  # at most 1 grey level
    center = [center_box(cache.size, cache.size, 32)] * 8
    assert torch.equal(pipe.finisher.samples([cache.row(r) for r in rows], center, [False] * 8),
                       pipe.finisher.batch(cache.gather(rows, [False] * 8), CENTER))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_both_paths_agree_and_batches_are_deterministic(samples):
    def on_cuda(cache):
        return Pipeline(Config(img_size=32, batch_size=8, workers=2, cache=cache, seed=3), DATA_CONFIG,
                        torch.device("cuda"))

    standard, cached = on_cuda(False), on_cuda(True)
    for (xs, ys), (xc, yc) in zip(standard.eval_batches(samples), cached.eval_batches(samples)):
        assert xs.is_cuda and xs.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(xs, xc, atol=1e-6) and torch.equal(ys, yc)
    for pipe in (standard, cached):
        first = [(x.cpu(), y.cpu()) for x, y in pipe.train_batches(samples, 1)]
        tail = [(x.cpu(), y.cpu()) for x, y in pipe.train_batches(samples, 1, start_step=1)]
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first[1:], tail))
