"""Tiny learnable image-folder datasets for training tests (generated, deterministic)."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

PATTERNS = ("horizontal", "vertical", "diagonal", "dots")


def pattern_image(kind: str, rng: random.Random, size: int) -> Image.Image:
    bg = tuple(rng.randint(0, 255) for _ in range(3))
    fg = tuple(255 - c for c in bg)
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    step = max(3, size // 6)
    off = rng.randint(0, step - 1)
    for k in range(-size, 2 * size, step):
        p = k + off
        if kind == "horizontal":
            d.line((0, p, size, p), fill=fg, width=2)
        elif kind == "vertical":
            d.line((p, 0, p, size), fill=fg, width=2)
        elif kind == "diagonal":
            d.line((p, 0, p + size, size), fill=fg, width=2)
        elif 0 <= p < size:
            for q in range(off, size, step):
                d.ellipse((p - 1, q - 1, p + 1, q + 1), fill=fg)
    return im


def make_patterns(root: Path, *, per_class: int = 24, test_per_class: int = 8, size: int = 40,
                  classes: tuple[str, ...] = PATTERNS, seed: int = 0, split_layout: bool = True) -> Path:
    """`root/train/<pattern>/*.jpg` + `root/test/...` (or `root/<pattern>/*` when split_layout=False)."""
    rng = random.Random(seed)
    splits = (("train", per_class), ("test", test_per_class)) if split_layout else (("", per_class + test_per_class),)
    for split, n in splits:
        for c in classes:
            folder = root / split / c if split else root / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pattern_image(c, rng, size).save(folder / f"{i:03d}.png")
    return root
