"""Pre-flight scan: what it flags (per reason), what it accepts, its cache, and `rextransfer scan`."""

from __future__ import annotations

import csv
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rextransfer.cli.app import app
from rextransfer.data.base import FileSamples
from rextransfer.data.scan import scan_samples, write_bad_files_csv
from rextransfer.core.errors import DataError


class CountingSamples(FileSamples):
    loads = 0

    def load(self, i, draft=None):
        CountingSamples.loads += 1
        return super().load(i, draft=draft)


def png_header(width: int, height: int) -> bytes:
    """A small PNG that claims width x height pixels: what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def make_files(folder: Path) -> dict[str, Path]:
    """One file per case; bad ones are named by the reason the scan must give."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def put(name: str, data: bytes | None = None, image: Image.Image | None = None, **save) -> None:
        path = folder / name
        if image is not None:
            image.save(path, **save)
        else:
            path.write_bytes(data)
        files[name] = path

    put("good.jpg", image=Image.fromarray(photo()))
    put("gray.png", image=Image.fromarray(photo()[..., 0], "L"))
    put("rgba.png", image=Image.fromarray(np.dstack([photo(), np.full((48, 64), 128, np.uint8)]), "RGBA"))
    put("cmyk.jpg", image=Image.fromarray(photo()).convert("CMYK"))
    put("deep16.png", image=Image.fromarray((np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21)))
    put("progressive.jpg", image=Image.fromarray(photo()), progressive=True)
    put("photo.webp", image=Image.fromarray(photo()))
    # EXIF orientation 6 (rotate 90 deg clockwise to display): stored 64x48, upright 48x64; left half red
    rotated = np.zeros((48, 64, 3), np.uint8)
    rotated[:, :32] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    put("exif_rotated.jpg", image=Image.fromarray(rotated), exif=exif)

    good = io.BytesIO()
    Image.fromarray(photo(200, 300)).save(good, "JPEG")
    put("empty-file.jpg", b"")
    put("truncated.jpg", good.getvalue()[: len(good.getvalue()) // 2])
    put("not-an-image.jpg", os.urandom(2000))
    put("notes.txt", b"these are not pixels\n")
    put("decompression-bomb.png", png_header(100_000, 100_000))
    return files


BAD = {"empty-file.jpg": "empty-file", "truncated.jpg": "truncated", "not-an-image.jpg": "not-an-image",
       "notes.txt": "not-an-image", "decompression-bomb.png": "decompression-bomb"}


@pytest.fixture
def files(tmp_path, cache_dir):
    return make_files(tmp_path / "images")


def samples_of(files: dict[str, Path]) -> CountingSamples:
    names = sorted(files)
    return CountingSamples([files[n] for n in names], [0] * len(names), ["only"], "train")


def test_scan_flags_each_broken_file_with_its_reason_and_keeps_the_rest(files):
    samples = samples_of(files)
    result = scan_samples(samples, workers=0, progress=False)
    names = sorted(files)
    assert {Path(key).name: reason for key, reason in result.bad} == BAD
    assert result.counts == {"empty-file": 1, "truncated": 1, "not-an-image": 2, "decompression-bomb": 1}
    assert sorted(names[i] for i in result.good) == sorted(set(names) - set(BAD))
    assert result.summary() == ("scanned 13 images (train split): 8 good, 5 unusable "
                                "(decompression-bomb 1, empty-file 1, not-an-image 2, truncated 1)")


def test_valid_odd_formats_decode_as_upright_rgb(files):
    samples = samples_of(files)
    names = sorted(files)
    for name in set(names) - set(BAD):
        img = samples.load(names.index(name))
        assert img.mode == "RGB" and img.size in ((64, 48), (48, 64)), name
    upright = np.asarray(samples.load(names.index("exif_rotated.jpg")))
    assert upright.shape == (64, 48, 3)                   # rotated to portrait
    assert upright[5, 24, 0] > 200 and upright[58, 24, 0] < 60  # the red half is now on top
    deep = np.asarray(samples.load(names.index("deep16.png")))
    assert deep.max() > 100                               # 16-bit scaled down, not clipped to white


def test_second_scan_uses_the_cache_and_rechecks_only_changed_files(files):
    samples = samples_of(files)
    scan_samples(samples, workers=0, progress=False)
    CountingSamples.loads = 0
    again = scan_samples(samples_of(files), workers=0, progress=False)
    assert CountingSamples.loads == 0 and again.decoded == 0
    assert again.counts["not-an-image"] == 2 and len(again.good) == 8

    # a bad file fixed (new size and mtime): only it is decoded again, and it is now good
    Image.fromarray(photo()).save(files["truncated.jpg"], "JPEG")
    third = scan_samples(samples_of(files), workers=0, progress=False)
    assert CountingSamples.loads == 1 and third.decoded == 1
    assert "truncated" not in third.counts and len(third.good) == 9


def test_fail_policy_raises_with_the_count_and_first_bad_file(files):
    with pytest.raises(DataError, match=r"^5 unusable images in the train split \(first: .*decompression-bomb\.png"):
        scan_samples(samples_of(files), policy="fail", workers=0, progress=False)


def test_bad_files_csv_lists_every_bad_file(files, tmp_path):
    result = scan_samples(samples_of(files), workers=0, progress=False)
    write_bad_files_csv(result, tmp_path / "bad_files.csv")
    rows = list(csv.DictReader(open(tmp_path / "bad_files.csv")))
    assert {Path(r["file"]).name: r["reason"] for r in rows} == BAD
    assert {r["split"] for r in rows} == {"train"}


def test_scan_command_reports_bad_files_and_exits_by_strictness(tmp_path, cache_dir):
    root = tmp_path / "birds"
    for c, cls in enumerate(("crow", "wren")):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(photo(seed=10 * c + i)).save(root / cls / f"{i}.jpg")
    (root / "wren" / "broken.jpg").write_bytes(b"")
    runner = CliRunner()
    result = runner.invoke(app, ["scan", str(root), "--workers", "0", "--csv", str(tmp_path / "bad.csv")])
    assert result.exit_code == 0, result.output
    assert "1 unusable (empty-file 1)" in result.output   # one summary line per split
    assert "broken.jpg" in result.output and "empty-file" in result.output
    assert "broken.jpg" in (tmp_path / "bad.csv").read_text()

    strict = subprocess.run([sys.executable, "-m", "rextransfer.cli", "scan", str(root), "--workers", "0", "--strict"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert strict.returncode == 3, strict.stderr
    assert strict.stderr.strip().splitlines()[-1].startswith("error: 1 unusable images")
    (root / "wren" / "broken.jpg").unlink()
    clean = runner.invoke(app, ["scan", str(root), "--workers", "0", "--strict"])
    assert clean.exit_code == 0 and "all images are usable" in clean.output
