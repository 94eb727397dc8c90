"""The pixel cache: whole training images and eval squares, reuse, rebuilds, and that nothing
half-written (a killed build, a truncated file) is ever used."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

from rextransfer.config.settings import Config
from rextransfer.core.errors import EnvironmentProblem
from rextransfer.data.base import FileSamples
from rextransfer.data.cache import open_or_build
from rextransfer.data.rows import MAX_ASPECT, Spec, square_pixels, whole_pixels
from rextransfer.data.pipeline import Pipeline

DATA_CONFIG = {"input_size": (3, 224, 224), "interpolation": "bicubic",
               "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_pct": 0.875}
S = 36  # the cache size of img_size 32 at crop_pct 0.875


class CountingSamples(FileSamples):
    """FileSamples that counts decodes and remembers the draft sizes asked for."""

    loads = 0
    drafts: list = []

    def load(self, i, draft=None):
        CountingSamples.loads += 1
        CountingSamples.drafts.append(draft)
        return super().load(i, draft=draft)


def photo(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    smooth = np.linspace(0, 255, w)[None, :, None] * rng.random((1, 1, 3)) + np.linspace(0, 90, h)[:, None, None]
    return np.clip(smooth * 0.7 + rng.integers(0, 50, (h, w, 3)), 0, 255).astype(np.uint8)


def write_photos(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(folder / f"img_{i:03d}.jpg")
        Image.fromarray(photo(h, w, rng)).save(paths[-1], quality=90)
    return paths


pytestmark = pytest.mark.usefixtures("cache_dir")  # every test with its own cache folder (conftest.py)


@pytest.fixture
def samples(tmp_path):
    rng = np.random.default_rng(1)
    sizes = [(int(h), int(w)) for h, w in rng.integers(34, 70, (24, 2))]
    paths = write_photos(tmp_path / "images", sizes)
    return CountingSamples(paths, list(range(24)), [f"c{i}" for i in range(24)], "train")


def make(**kw) -> Pipeline:
    settings = dict(img_size=32, batch_size=8, workers=0, cache=True, seed=3)
    settings.update(kw)
    data_config = {**DATA_CONFIG, **settings.pop("data_config", {})}
    return Pipeline(Config(**settings), data_config, torch.device("cpu"))


def cache_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "pixels").iterdir() if p.is_dir() and not p.name.startswith("."))


# -- what is stored --------------------------------------------------------------------------------
def test_training_rows_are_whole_images_and_eval_rows_are_the_eval_squares(tmp_path):
    """Training: shorter side S, aspect kept (torchvision's Resize rounding), a panorama's long
    side capped at MAX_ASPECT x S around its centre; variable sizes behind an offset index.
    Eval: exactly the uncached eval path's square."""
    sizes = [(48, 150), (150, 48), (40, 40), (30, 300), (45, 61)]    # 3:1, 1:3, square, 10:1, 4:3
    paths = write_photos(tmp_path / "p", sizes)
    photos = FileSamples(paths, [0] * len(paths), ["c"], "train")
    spec = Spec(S, InterpolationMode.BICUBIC, whole=True)
    cache = open_or_build(photos, spec, workers=0, progress=False)
    assert cache.sizes == [(36, 112), (112, 36), (36, 36), (36, MAX_ASPECT * 36), (36, 48)]
    firsts = cache.index[:, 0]
    assert firsts[0] == 0 and all(firsts[1:] == firsts[:-1] + 3 * cache.index[:-1, 1] * cache.index[:-1, 2])
    for i in range(len(paths)):
        assert np.array_equal(cache.row(i), whole_pixels(np.asarray(photos.load(i)), S, InterpolationMode.BICUBIC))
    # the panorama keeps its centre: the middle 144 columns of the 36 x 360 resize
    from rextransfer.data.augment import resize_u8

    full = resize_u8(torch.from_numpy(np.asarray(photos.load(3))), (36, 360), "bicubic")
    assert np.array_equal(cache.row(3), full[:, 108:252].numpy())
    squares = open_or_build(photos, Spec(S, InterpolationMode.BICUBIC, whole=False), workers=0, progress=False)
    for i in range(len(paths)):
        assert np.array_equal(squares.row(i), square_pixels(photos.load(i), S, InterpolationMode.BICUBIC))


def test_training_rows_decode_large_jpegs_at_reduced_scale(tmp_path):
    """A JPEG with its shorter side >= 2 S is decoded at 1/2, 1/4 or 1/8 scale in the DCT (the
    cheap part of its cost); the row stays close to the full decode. Eval squares decode fully."""
    paths = write_photos(tmp_path / "big", [(320, 480)])
    big = CountingSamples(paths, [0], ["c"], "train")
    CountingSamples.drafts = []
    row = open_or_build(big, Spec(S, InterpolationMode.BICUBIC, True), workers=0, progress=False).row(0)
    square = open_or_build(big, Spec(S, InterpolationMode.BICUBIC, False), workers=0, progress=False).row(0)
    assert CountingSamples.drafts == [(S, S), None]
    full = whole_pixels(np.asarray(big.load(0)), S, InterpolationMode.BICUBIC)
    assert row.shape == full.shape == (36, 54, 3)
    assert np.abs(row.astype(int) - full).mean() < 3
    assert np.array_equal(square, square_pixels(big.load(0), S, InterpolationMode.BICUBIC))


# -- reuse and rebuilds ----------------------------------------------------------------------------
def test_cache_is_reused_and_rebuilt_when_data_or_preprocessing_changes(samples, cache_dir):
    CountingSamples.loads = 0
    make().prepare(samples)
    assert CountingSamples.loads == 24 and len(cache_dirs(cache_dir)) == 1
    first = cache_dirs(cache_dir)[0]
    meta = json.loads((cache_dir / "pixels" / first / "meta.json").read_text())
    assert meta["spec"] == "36|bicubic|whole" and meta["n"] == 24

    # another run, same data and preprocessing: nothing decoded
    make().prepare(CountingSamples(samples.paths, samples.labels, samples.classes, "train"))
    assert CountingSamples.loads == 24 and cache_dirs(cache_dir) == [first]

    # preprocessing changed: S, interpolation, the eval kind -> a new cache each (old ones kept)
    make(crop_pct=0.8).prepare(samples)
    make(data_config={"interpolation": "bilinear"}).prepare(samples)
    make().prepare(None, samples)
    assert CountingSamples.loads == 96 and len(cache_dirs(cache_dir)) == 4

    # a file changed (size/mtime): rebuilt, the new pixels are used, the superseded cache is deleted
    Image.new("RGB", (50, 40), (255, 0, 0)).save(samples.paths[0])
    os.utime(samples.paths[0], ns=(1, 1))
    changed = CountingSamples(samples.paths, samples.labels, samples.classes, "train")
    x, _ = next(iter(make().eval_batches(changed)))
    assert CountingSamples.loads == 120 and len(cache_dirs(cache_dir)) == 4
    red = (torch.tensor([1.0, 0, 0]) - torch.tensor(DATA_CONFIG["mean"])) / torch.tensor(DATA_CONFIG["std"])
    assert torch.allclose(x[0, :, 16, 16], red, atol=0.1)
    make().prepare(changed)   # the training cache of the old files gives way to the new one
    assert CountingSamples.loads == 144 and first not in cache_dirs(cache_dir) and len(cache_dirs(cache_dir)) == 4


def test_concurrent_builds_decode_once(samples, cache_dir):
    CountingSamples.loads = 0
    threads = [threading.Thread(target=make().prepare, args=(samples,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert CountingSamples.loads == 24 and len(cache_dirs(cache_dir)) == 1


def test_parallel_build_writes_the_same_cache(samples, tmp_path):
    spec = Spec(S, InterpolationMode.BICUBIC, True)
    serial = open_or_build(samples, spec, workers=0, root=tmp_path / "a", progress=False)
    parallel = open_or_build(samples, spec, workers=2, root=tmp_path / "b", progress=False)
    assert np.array_equal(serial.index, parallel.index)
    assert (serial.path / "pixels.u8").read_bytes() == (parallel.path / "pixels.u8").read_bytes()


# -- nothing half-written is ever used ---------------------------------------------------------------
def test_a_damaged_cache_is_never_used_but_rebuilt(samples, cache_dir):
    CountingSamples.loads = 0
    make().prepare(samples)
    (folder,) = [cache_dir / "pixels" / name for name in cache_dirs(cache_dir)]
    pixels = folder / "pixels.u8"
    expected = pixels.read_bytes()
    pixels.write_bytes(expected[:-100])                 # truncated
    make().prepare(samples)
    assert CountingSamples.loads == 48 and pixels.read_bytes() == expected
    (folder / "meta.json").unlink()                      # never marked complete
    make().prepare(samples)
    assert CountingSamples.loads == 72 and (folder / "meta.json").exists()


_BUILD_SCRIPT = """
import sys, torch
from torchvision.transforms import InterpolationMode
from rextransfer.data.base import FileSamples
from rextransfer.data.cache import Spec, open_or_build

class Slow(FileSamples):
    def load(self, i, draft=None):
        if i == 5:
            print("started", flush=True)
        if i >= 5:
            import time; time.sleep(0.05)
        return super().load(i, draft=draft)

paths = sys.argv[1:]  # labelled as the test's samples: the same cache key
samples = Slow(paths, list(range(len(paths))), [str(i) for i in range(len(paths))], "train")
open_or_build(samples, Spec(36, InterpolationMode.BICUBIC, True), workers=0, progress=False)
"""


def test_a_killed_build_leaves_nothing_that_is_used(samples, cache_dir):
    """SIGKILL in the middle of a build: no cache appears; the next run cleans up and builds."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT, *map(str, samples.paths)], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.2)                                     # well inside the build: rows are being written
    temp = [p for p in (cache_dir / "pixels").iterdir() if p.name.startswith(".tmp-")]
    assert temp and (temp[0] / "pixels.u8").stat().st_size > 0
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert cache_dirs(cache_dir) == []
    CountingSamples.loads = 0
    x = torch.cat([x for x, _ in make().train_batches(samples, 0)])
    assert CountingSamples.loads == 24 and x.shape == (24, 3, 32, 32)
    assert [p.name for p in (cache_dir / "pixels").iterdir() if p.name.startswith(".tmp-")] == []


def test_no_room_for_the_cache_is_an_environment_problem(samples, cache_dir, monkeypatch):
    import shutil

    from rextransfer.data import cache as cache_module

    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(EnvironmentProblem, match=r"needs \S+ \S*B in .* only .* free; .* --no-cache"):
        make().prepare(samples)
    assert cache_dirs(cache_dir) == []


def test_building_in_threads_leaves_the_trainers_torch_threads_alone(samples):
    """The loader threads run torch single-threaded; a fresh process that builds a cache before
    its first computation (as a run does) still computes with all its threads afterwards."""
    script = (
        "import sys, threading, torch\n"
        "from torchvision.transforms import InterpolationMode\n"
        "from rextransfer.data.base import FileSamples\n"
        "from rextransfer.data.cache import Spec, open_or_build\n"
        "paths = sys.argv[1:]\n"
        "open_or_build(FileSamples(paths, [0] * len(paths), ['c'], 'train'), Spec(36, InterpolationMode.BICUBIC, True),"
        " workers=2, progress=False)\n"
        "later = []\n"
        "t = threading.Thread(target=lambda: later.append(torch.get_num_threads())); t.start(); t.join()\n"
        "print(torch.get_num_threads(), later[0])\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", script, *map(str, samples.paths)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2"]


def test_the_fast_jpeg_decoder_gives_pils_pixels_or_steps_aside(tmp_path):
    """Plain JPEG files are decoded by libjpeg-turbo into numpy at PIL's draft scale: exactly
    `open_rgb(draft)`'s pixels (baseline, progressive, 4:4:4, grey); CMYK, EXIF-rotated, damaged
    and non-JPEG files are left to PIL (None)."""
    from PIL import ImageOps

    from rextransfer.data.images import open_rgb
    from rextransfer.data.rows import decode_jpeg_file

    pytest.importorskip("simplejpeg")
    rng = np.random.default_rng(0)
    pixels = photo(300, 420, rng)
    cases = {"baseline": ({}, "RGB"), "progressive": ({"progressive": True}, "RGB"), "444": ({"subsampling": 0}, "RGB"),
             "grey": ({}, "L")}
    for name, (kw, mode) in cases.items():
        path = tmp_path / f"{name}.jpg"
        Image.fromarray(pixels).convert(mode).save(path, quality=90, **kw)
        for size in (36, 100, 300):   # scales 1/8, 1/2 and 1
            fast = decode_jpeg_file(path, size)
            assert np.array_equal(fast, np.asarray(open_rgb(path, draft=(size, size)))), (name, size)
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6                                 # rotated 90 degrees
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", quality=90, exif=exif)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "baseline.jpg").read_bytes()[:3000])
    Image.fromarray(pixels).save(tmp_path / "png.jpg", format="PNG")
    for name in ("cmyk", "turned", "cut", "png"):
        assert decode_jpeg_file(tmp_path / f"{name}.jpg", 36) is None, name
    assert ImageOps.exif_transpose(Image.open(tmp_path / "turned.jpg")).size == (300, 420)  # PIL turns it


def test_plain_files_and_custom_loaders_give_the_same_training_rows(tmp_path):
    """The fast decoder (plain files, also through subsets) and the PIL path (any other loader)
    store the same rows, so which one ran never changes what a run trains on."""
    rng = np.random.default_rng(2)
    paths = write_photos(tmp_path / "mixed", [(int(h), int(w)) for h, w in rng.integers(40, 200, (10, 2))])
    spec = Spec(S, InterpolationMode.BICUBIC, True)
    plain = FileSamples(paths, list(range(10)), [str(i) for i in range(10)], "train").subset(range(1, 10))
    custom = CountingSamples(paths, list(range(10)), [str(i) for i in range(10)], "train").subset(range(1, 10))
    CountingSamples.loads = 0
    a = open_or_build(plain, spec, workers=0, root=tmp_path / "a", progress=False)
    b = open_or_build(custom, spec, workers=0, root=tmp_path / "b", progress=False)
    assert CountingSamples.loads == 9
    assert np.array_equal(a.index, b.index)
    assert (a.path / "pixels.u8").read_bytes() == (b.path / "pixels.u8").read_bytes()
