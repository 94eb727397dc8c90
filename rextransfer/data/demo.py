"""The embedded demo dataset: procedurally drawn "birds" whose species differ in small details.

Every image shows the same kind of bird (body, head, eye, wing, beak, tail) at a random position,
size, pose and colour on a cluttered background; the 8 species differ only in three details —
wing-bar colour, beak length, tail stripes — as fine-grained classes do. Deterministic by seed,
written as a JPEG folder (train/ and test/) so the demo exercises the real folder path.
"""

from __future__ import annotations

import colorsys
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from .base import DataSplits, DatasetInfo, register

WING = {"amber": (235, 150, 30), "teal": (30, 160, 170)}
BEAK = {"short": 0.22, "long": 0.8}  # beak length / head scale: visible at 64 px, yet a small detail
TAIL = {"plain": 0, "barred": 3}
SPECIES = [(w, b, t) for w in WING for b in BEAK for t in TAIL]
VERSION = 4  # bump when the drawing changes, so stale demo folders are regenerated


def species_name(wing: str, beak: str, tail: str) -> str:
    return f"{wing}-wing_{beak}-beak_{tail}-tail"


def draw_bird(rng: random.Random, wing: str, beak: str, tail: str, size: int) -> Image.Image:
    s = size / 96  # drawn at any size; geometry is specified at 96 px
    hue = rng.random()
    bg1 = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.25, 0.55 + 0.4 * rng.random()))
    img = Image.new("RGB", (size, size), bg1)
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 7)):  # clutter: leaves and pebbles in background colours
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(4, 16) * s
        tone = tuple(int(255 * c) for c in colorsys.hsv_to_rgb((hue + rng.uniform(-0.15, 0.15)) % 1, 0.35, rng.uniform(0.3, 0.9)))
        d.ellipse((x - r, y - r * 0.6, x + r, y + r * 0.6), fill=tone)
    body_hue = rng.random()
    body = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(body_hue, rng.uniform(0.1, 0.4), rng.uniform(0.35, 0.7)))
    # The bird spans -44k (tail tip) .. +71k (long beak tip) around its body centre: scale and shift
    # it so the whole bird, long beak included, stays in the frame.
    k = rng.uniform(0.6, 0.75) * s  # bird scale
    facing = rng.choice((-1, 1))
    cx = size / 2 - facing * 13.5 * k + rng.uniform(-6, 6) * s
    cy = size / 2 + 5 * k + rng.uniform(-10, 10) * s
    bw, bh = 26 * k, 16 * k
    # tail (drawn first, behind the body): a wedge with optional dark bars
    tx = cx - facing * bw
    tail_pts = [(tx, cy - 3 * k), (tx - facing * 18 * k, cy - 9 * k), (tx - facing * 18 * k, cy + 7 * k), (tx, cy + 3 * k)]
    d.polygon(tail_pts, fill=body)
    for i in range(TAIL[tail]):  # bars about 2 px wide at 64 px: thin, but they survive the resize
        bx = tx - facing * (4.5 + 5 * i) * k
        d.line((bx, cy - (4 + 1.5 * i) * k, bx, cy + (3 + 1.3 * i) * k), fill=(15, 15, 15), width=max(2, round(4 * k)))
    d.ellipse((cx - bw, cy - bh, cx + bw, cy + bh), fill=body)
    # wing with a coloured bar — the wing colour is one of the species' details
    wx, wy = cx - facing * 4 * k, cy - 2 * k
    d.ellipse((wx - 15 * k, wy - 7 * k, wx + 15 * k, wy + 7 * k), fill=tuple(max(0, c - 35) for c in body))
    d.rectangle((wx - 10 * k, wy - 2.2 * k, wx + 10 * k, wy + 2.2 * k), fill=WING[wing])
    # head, eye, beak — beak length is another detail
    hx, hy = cx + facing * (bw + 4 * k), cy - 10 * k
    d.ellipse((hx - 10 * k, hy - 10 * k, hx + 10 * k, hy + 10 * k), fill=body)
    d.ellipse((hx + facing * 3 * k - 2 * k, hy - 4 * k, hx + facing * 3 * k + 2 * k, hy), fill=(10, 10, 10))
    length = BEAK[beak] * 40 * k
    bx0 = hx + facing * 9 * k
    d.polygon([(bx0, hy - 4 * k), (bx0 + facing * length, hy + 1 * k), (bx0, hy + 5 * k)], fill=(240, 200, 40))
    img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0, 0.6) * s))
    # sensor-like noise so no two pixels are exactly clean
    noise = Image.effect_noise((size, size), rng.uniform(4, 12)).convert("RGB")
    return Image.blend(img, noise, 0.06)


def generate(root: Path, *, train_per_class: int = 150, test_per_class: int = 50, size: int = 96, seed: int = 0) -> Path:
    """Write the demo dataset to root (train/ and test/), unless an identical one is there."""
    root = Path(root)
    stamp = {"version": VERSION, "train_per_class": train_per_class, "test_per_class": test_per_class, "size": size, "seed": seed}
    marker = root / "demo.json"
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return root
    for split, per_class, offset in (("train", train_per_class, 0), ("test", test_per_class, 10_000_000)):
        for c, (wing, beak, tail) in enumerate(SPECIES):
            folder = root / split / species_name(wing, beak, tail)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                rng = random.Random(seed * 1_000_003 + offset + c * 100_000 + i)
                draw_bird(rng, wing, beak, tail, size).save(folder / f"{i:05d}.jpg", quality=90)
    marker.write_text(json.dumps(stamp))
    return root


def _load(cfg) -> DataSplits:
    """`finetune demo`: generate (once) under the data root, then load it as a folder dataset."""
    from .base import data_root
    from .folder import load_folder

    root = generate(data_root(cfg.data_root) / "demo", seed=0)
    splits = load_folder(root, val_fraction=cfg.val_fraction, seed=cfg.seed)
    splits.source = "demo"
    return splits


register(DatasetInfo(
    name="demo", aliases=("birds",), title="rextransfer demo birds (procedural)", num_classes=len(SPECIES),
    train_size=150 * len(SPECIES), test_size=50 * len(SPECIES), metric="top1",
    hub_id="",
    citation="generated by rextransfer.data.demo", load=_load,
    present=lambda root: (root / "demo" / "demo.json").exists(),
))
