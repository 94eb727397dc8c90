"""Augmentation and pixel finishing shared by both loader paths of pipeline.py.

* The random numbers of training (`step_draws`): one private generator per optimizer step, seeded
  by (seed, epoch, step); sample k of the global batch takes row k. Both paths use the same rows,
  so a sample gets the same crop (relative to its image) and flip with or without the cache, on
  any number of ranks and any grad_accum.
* `sample_crops`: torchvision's RandomResizedCrop box sampling (10 tries of area x log-uniform
  aspect, then the clamped central crop), vectorised, from those numbers only (torchvision's
  `get_params` draws from the global RNG).
* The `Finisher`: uint8 pixels -> the model's normalised float input, in two placements with the
  same arithmetic: `samples` crops and resizes image by image (CPU device: in the loader threads,
  torch's uint8 antialiased kernel, in a TorchScript-compiled loop that holds no GIL), `crops`
  does a whole batch of whole images in batched ops on the device (GPU: two batched matmuls with
  per-sample antialiased-bilinear resampling matrices, the exact filter of `samples`, so CPU and
  GPU runs augment alike).
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
import warnings
from typing import Callable, List, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode

from ..core.errors import ModelError

# np.asarray(PIL image) is read-only, and torch warns -- once per process, "suppressed for the rest
# of this program" -- about wrapping such an array, although we only read it. A writable copy
# costs 0.1-0.3 ms per photo (measured), so that one warning is spent here, silently.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _read_only = np.zeros(1, np.uint8)
    _read_only.flags.writeable = False
    torch.from_numpy(_read_only)

RRC_RATIO = (3 / 4, 4 / 3)   # aspect-ratio range of RandomResizedCrop (torchvision/timm default)
RRC_ATTEMPTS = 10            # torchvision's tries before its central-crop fallback
CENTER = "center"            # `crops` value of an eval batch: center crop


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple: distinct tuples give unrelated streams (unlike seed + offset)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class Draws(NamedTuple):
    """The random numbers of some samples: RandomResizedCrop uniforms [n, tries, 4] and flips."""

    u: Tensor
    flips: list[bool]


def step_draws(seed: int, epoch: int, step: int, n: int, hflip: bool) -> Draws:
    """The draws of the n samples of optimizer step `step` (row k = position k in the global batch)."""
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, step, "train"))
    u = torch.rand(n, RRC_ATTEMPTS, 4, generator=g, dtype=torch.float64)
    flips = (torch.rand(n, generator=g) < 0.5).tolist()
    return Draws(u, [bool(f) and hflip for f in flips])


def sample_crops(sizes: Sequence[tuple[int, int]], u: Tensor | np.ndarray, scale: tuple[float, float],
                 ratio: tuple[float, float] = RRC_RATIO) -> list[tuple[int, int, int, int]]:
    """RandomResizedCrop boxes (top, left, height, width) for images of (height, width) `sizes`.

    u[k] holds sample k's uniforms: per try (area, log-aspect, top, left). The rule is
    torchvision's `RandomResizedCrop.get_params` line by line (same rounding, same fallback),
    vectorised in numpy (a batch costs ~0.1 ms, not the ~10 ms of per-element tensor indexing).
    """
    u = np.asarray(u, dtype=np.float64)
    hw = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    height, width = hw[:, :1], hw[:, 1:]
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = np.round(np.sqrt(area * aspect))
    h = np.round(np.sqrt(area / aspect))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    rows, first = np.arange(len(hw)), ok.argmax(axis=1)     # the first try that fits
    w, h, u_top, u_left = w[rows, first], h[rows, first], u[rows, first, 2], u[rows, first, 3]
    top = np.floor(u_top * (height[:, 0] - h + 1))
    left = np.floor(u_left * (width[:, 0] - w + 1))
    # fallback (no try fits): the central crop with the aspect clamped into `ratio`
    H, W = height[:, 0], width[:, 0]
    in_ratio = W / H
    fh = np.where(in_ratio < ratio[0], np.round(W / ratio[0]), H)
    fw = np.where(in_ratio > ratio[1], np.round(H * ratio[1]), W)
    fits = ok.any(axis=1)
    top = np.where(fits, top, (H - fh) // 2)
    left = np.where(fits, left, (W - fw) // 2)
    h, w = np.where(fits, h, fh), np.where(fits, w, fw)
    return list(zip(*(v.astype(np.int64).tolist() for v in (top, left, h, w))))


def interpolation_mode(name: str) -> InterpolationMode:
    try:
        return InterpolationMode(name)
    except ValueError:
        raise ModelError(f"unsupported interpolation {name!r} in the model's pretrained config") from None


def center_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """torchvision's center-crop offsets (round half to even), as a (top, left, h, w) box."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0)), size, size


def resize_u8(pixels: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Antialiased resize of uint8 [h, w, 3] pixels to [*size, 3] (contiguous), torch's AVX2 kernel.

    The kernel wants a dense channels-last [1, 3, h, w] input and answers in the layout the input's
    strides suggest: built as [1, h, w, 3] then permuted, it reads as channels-last and writes
    channels-last (measured 110 us for 200 x 260 -> 224 x 224 on one core); `hwc.permute(2, 0, 1)
    [None]`, with its batch stride of 3, reads as planar and gets a planar result at twice the cost.
    """
    x = pixels.contiguous().unsqueeze(0).permute(0, 3, 1, 2)
    return F.interpolate(x, size=[size[0], size[1]], mode=mode, align_corners=False, antialias=True)[0].permute(1, 2, 0)


def aa_weights(start: Tensor, length: Tensor, in_size: int, out_size: int, dtype: torch.dtype) -> Tensor:
    """[n, out_size, in_size] matrices of antialiased bilinear resampling of the pixel span
    [start, start + length) to out_size pixels: torch's/PIL's rule (triangle filter widened by the
    downscale factor, weights renormalised inside the span), so matrix @ pixels == the AA resize
    of the cropped span."""
    f32 = torch.float32
    start, length = start.to(f32)[:, None, None], length.to(f32)[:, None, None]
    scale = length / out_size
    center = start + (torch.arange(out_size, dtype=f32, device=start.device)[None, :, None] + 0.5) * scale
    j = torch.arange(in_size, dtype=f32, device=start.device)[None, None, :]
    w = (1 - ((j + 0.5 - center) / scale.clamp(min=1.0)).abs()).clamp(min=0)
    w = w * ((j >= start) & (j < start + length))
    return (w / w.sum(-1, keepdim=True)).to(dtype)


def _finish_rows(sources: List[Tensor], boxes: List[List[int]], flips: List[bool], out: Tensor,
                 scale: Tensor, shift: Tensor, size: int) -> None:
    """out[k] = normalised float of sources[k] (uint8 [H, W, 3]) cropped to boxes[k] (top, left,
    h, w), resized to size x size (torch's uint8 antialiased kernel), mirrored if flips[k]."""
    for k in range(len(sources)):
        top, left, h, w = boxes[k][0], boxes[k][1], boxes[k][2], boxes[k][3]
        x = sources[k][top: top + h, left: left + w]  # a view; resize_u8 copies the box's rows
        if h != size or w != size:
            x = resize_u8(x, (size, size))
        if flips[k]:
            x = x.flip(1)  # mirror the small result, not the source
        # interleaved uint8 -> planar float in one pass, then (x / 255 - mean) / std in place
        out[k].copy_(x.permute(2, 0, 1)).mul_(scale).add_(shift)


_COMPILING = threading.Lock()


@functools.cache
def _compiled() -> Callable[..., None]:
    """`_finish_rows` compiled by TorchScript: its loop runs in C++ and releases the GIL once per
    batch instead of ~8 times per image, so two loader threads stop queueing for it (measured on
    2 cores, 224-px crops: 1.3-1.5x the images/s of the same loop in Python, identical pixels).
    torch 2.14 marks torch.jit.script deprecated (torch.compile, its successor, specialises graphs on
    shapes, and every crop box has its own); where scripting fails the same function runs in Python."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.script(_finish_rows)
    except Exception:  # noqa: BLE001 - a torch without (this much) TorchScript: the same loop, in Python
        return _finish_rows


def finish_rows() -> Callable[..., None]:
    """The compiled loop, compiled once per process (TorchScript's compiler is not thread-safe,
    and the first batches arrive in two loader threads at once)."""
    with _COMPILING:
        return _compiled()


class Finisher:
    """uint8 pixels -> the model's input: crop/resize, float, (x / 255 - mean) / std, memory layout.

    A flip mirrors the crop (the box is in the unflipped image), as RandomResizedCrop followed by
    RandomHorizontalFlip does.
    """

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float], channels_last: bool,
                 device: torch.device):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply and one add
        self.scale, self.shift = 1.0 / (255.0 * std_t), -mean_t / std_t
        self.size = img_size
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        if torch.device(device).type == "cpu":
            finish_rows()  # compiled once here: forked loader workers inherit it, not compile it every epoch

    def _empty(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        shape = (n, 3, self.size, self.size)
        if torch.utils.data.get_worker_info() is not None:
            # inside a DataLoader worker: straight into shared memory, as default_collate does, so
            # the batch crosses to the trainer without another copy
            flat = torch.empty(0).new(torch.empty(0)._typed_storage()._new_shared(math.prod(shape)))
            if self.format == torch.channels_last:
                return flat.view(n, self.size, self.size, 3).permute(0, 3, 1, 2)
            return flat.view(shape)
        return torch.empty(shape, dtype=torch.float32, device=device, memory_format=self.format)

    def samples(self, sources: Sequence[np.ndarray | Tensor], boxes: Sequence[tuple[int, int, int, int] | None],
                flips: Sequence[bool]) -> Tensor:
        """Per image: uint8 [H, W, 3] source (a cache row or a decoded array), box (top, left,
        h, w) or None (already at size), flip. Each image is written into its slot of the batch
        while it is in the CPU cache (no per-image float tensors, no stacking copy)."""
        out = self._empty(len(sources))
        full = [list(box) if box is not None else [0, 0, *src.shape[:2]] for src, box in zip(sources, boxes)]
        finish_rows()([torch.as_tensor(src) for src in sources], full, [bool(f) for f in flips],
                      out, self.scale[0], self.shift[0], self.size)
        return out

    def batch(self, x: Tensor, crops: str | None) -> Tensor:
        """uint8 [B, H, W, 3] on the device, at size (None) or to center-crop (CENTER)."""
        x = x.permute(0, 3, 1, 2)  # NCHW view with channels-last strides; no copy
        if crops == CENTER:
            top, left, h, w = center_box(x.shape[2], x.shape[3], self.size)
            x = x[:, :, top: top + h, left: left + w]
        out = self._empty(x.shape[0], x.device)
        out.copy_(x)  # layout and dtype in one pass
        return out.mul_(self.scale).add_(self.shift)

    def crops(self, pixels: Tensor, meta: Tensor, boxes: Tensor, flips: Tensor,
              sizes: tuple[int, int] | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """A batch of whole images -> cropped, resized, flipped, normalised, in batched ops.

        pixels: uint8 [P, 3], the images' rows back to back; meta: int64 [B, 3] (first pixel,
        height, width); boxes: [B, 4] (top, left, h, w); flips: bool [B]. Works on any device
        (the CPU runs it in tests); on CUDA it is the GPU placement of `samples`. sizes: the
        largest (shorter, longer) side of the batch, given by a caller whose meta is on the GPU
        (reading it back would stall the host until the upload is done).

        Every image has its shorter side S (the cache's). Each becomes an S x L plane of one
        canvas, portrait ones transposed (one gather), and out = A @ plane @ B^T with A, B the
        per-sample resampling matrices of the box (flip = B's rows reversed), transposed back for
        portrait images: two batched matmuls.
        """
        dev = pixels.device
        # float16 on CUDA (0..255 and the weights to 11 bits: within the one grey level of the
        # uint8 kernel; half the memory); the CPU has no fast float16 matmul
        dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
        # int32 pixel indices (a batch has far fewer than 2**31 pixels): half the memory of int64
        first, height, width = meta.to(dev, torch.int32).unbind(1)
        top, left, h, w = boxes.to(dev, torch.int32).unbind(1)
        portrait = height > width
        short, long = torch.minimum(height, width), torch.maximum(height, width)
        S, L = sizes or (int(short.max()), int(long.max()))
        r = torch.arange(S, device=dev, dtype=torch.int32)[None, :, None]
        c = torch.arange(L, device=dev, dtype=torch.int32)[None, None, :]
        r, c = torch.minimum(r, short[:, None, None] - 1), torch.minimum(c, long[:, None, None] - 1)
        pt, wd = portrait[:, None, None], width[:, None, None]
        index = first[:, None, None] + torch.where(pt, c * wd + r, r * wd + c)
        plane = pixels[index].permute(0, 3, 1, 2).to(dtype)             # [B, 3, S, L]
        # canvas rows run along the image's y for landscape images, along x for portrait ones
        row_start, row_len = torch.where(portrait, left, top), torch.where(portrait, w, h)
        col_start, col_len = torch.where(portrait, top, left), torch.where(portrait, h, w)
        a = aa_weights(row_start, row_len, S, self.size, dtype)        # [B, size, S]
        b = aa_weights(col_start, col_len, L, self.size, dtype)        # [B, size, L]
        x_flip_a, x_flip_b = (flips & portrait)[:, None, None], (flips & ~portrait)[:, None, None]
        a = torch.where(x_flip_a, a.flip(1), a)
        b = torch.where(x_flip_b, b.flip(1), b)
        z = torch.matmul(a[:, None], torch.matmul(plane, b[:, None].transpose(-1, -2)))  # [B, 3, size, size]
        z = torch.where(portrait[:, None, None, None], z.transpose(-1, -2), z)
        out = self._empty(z.shape[0], dev)
        out.copy_(z.round_().clamp_(0, 255))  # whole grey levels, as the uint8 kernel of `samples`
        return out.mul_(self.scale).add_(self.shift)
