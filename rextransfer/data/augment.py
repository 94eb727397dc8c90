"""Augmentation and pixel finishing shared by both loader paths of pipeline.py.

Crop sampling (`sample_crops`: our copy of torchvision's RandomResizedCrop box sampling, drawn
from private generators only, `center_box`), per-sample seeds (`mix_seed`), the interpolation
name -> mode lookup, and the `Finisher`: uint8 pixels -> the model's normalised float input, one
image at a time in loader workers (CPU device) or for a whole batch on the GPU.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import default_collate
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..core.errors import ModelError

RRC_RATIO = (3 / 4, 4 / 3)   # aspect-ratio range of RandomResizedCrop (torchvision/timm default)
CENTER = "center"            # `crops` value of an eval batch: center crop

def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple: distinct tuples give unrelated streams (unlike seed + offset)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def sample_crops(sizes: Sequence[tuple[int, int]], g: torch.Generator, scale: tuple[float, float],
                 ratio: tuple[float, float] = RRC_RATIO, attempts: int = 10) -> list[tuple[int, int, int, int]]:
    """RandomResizedCrop boxes (top, left, height, width) for images of (height, width) `sizes`.

    torchvision's algorithm (10 tries of area x log-uniform aspect, then a clamped center crop),
    vectorised over the batch and drawn from `g` only.
    """
    hw = torch.tensor(sizes, dtype=torch.float64).reshape(-1, 2)
    height, width = hw[:, :1], hw[:, 1:]
    u = torch.rand(len(hw), attempts, 4, generator=g, dtype=torch.float64)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)
    pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
    w, h, u_top, u_left = pick(w), pick(h), pick(u[..., 2]), pick(u[..., 3])
    top = torch.floor(u_top * (height[:, 0] - h + 1))
    left = torch.floor(u_left * (width[:, 0] - w + 1))
    boxes = []
    for k, (H, W) in enumerate(sizes):
        if ok[k].any():
            boxes.append((int(top[k]), int(left[k]), int(h[k]), int(w[k])))
            continue
        in_ratio = W / H  # fallback: the central crop with the aspect clamped into `ratio`
        cw, ch = W, H
        if in_ratio < ratio[0]:
            ch = int(round(W / ratio[0]))
        elif in_ratio > ratio[1]:
            cw = int(round(H * ratio[1]))
        boxes.append(((H - ch) // 2, (W - cw) // 2, ch, cw))
    return boxes


def interpolation_mode(name: str) -> InterpolationMode:
    try:
        return InterpolationMode(name)
    except ValueError:
        raise ModelError(f"unsupported interpolation {name!r} in the model's pretrained config") from None


def center_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """torchvision's center-crop offsets (round half to even), as a (top, left, h, w) box."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0)), size, size


class Finisher:
    """uint8 pixels -> the model's input: crop/resize, float, (x / 255 - mean) / std, memory layout.

    Two placements of the same arithmetic. `samples` (CPU device) works one image at a time
    straight from its source -- a zero-copy memmap row or a decoded array -- while it is in the
    CPU cache, inside loader workers; `batch` (GPU) takes a gathered uint8 batch on the device.
    A flip mirrors the whole source square before the crop in both, so boxes mean the same.
    """

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float], channels_last: bool,
                 device: torch.device):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply and one add
        self.scale, self.shift = 1.0 / (255.0 * std_t), -mean_t / std_t
        self.size = img_size
        self.format = torch.channels_last if channels_last else torch.contiguous_format

    def _empty(self, n: int, device: torch.device) -> Tensor:
        return torch.empty((n, 3, self.size, self.size), dtype=torch.float32, device=device, memory_format=self.format)

    def samples(self, sources: Sequence[Tensor], boxes: Sequence[tuple[int, int, int, int] | None],
                flips: Sequence[bool]) -> Tensor:
        """Per image: uint8 [H, W, 3] source, box (top, left, h, w) or None (already at size), flip."""
        items = []
        for src, box, flip in zip(sources, boxes, flips):
            height, width = src.shape[:2]
            top, left, h, w = box or (0, 0, height, width)
            if flip:  # the box of the mirrored square is the mirrored box, mirrored back after
                left = width - left - w
            region = src[top: top + h, left: left + w].permute(2, 0, 1).unsqueeze(0)
            if (h, w) != (self.size, self.size):
                region = self._resize(region)
            if flip:
                region = region.flip(3)
            items.append(region[0].to(torch.float32).mul_(self.scale[0]).add_(self.shift[0]))
        # default_collate stacks straight into shared memory inside a loader worker: the batch then
        # crosses to the main process without another copy (a fresh 38 MB buffer per batch costs
        # more in page faults than all the arithmetic).
        return default_collate(items).contiguous(memory_format=self.format)

    def batch(self, x: Tensor, crops: list | str | None) -> Tensor:
        """uint8 [B, H, W, 3] on the device (flips already applied); crops: None, CENTER or boxes."""
        x = x.permute(0, 3, 1, 2)  # NCHW view with channels-last strides; no copy
        if crops == CENTER:
            x = TF.center_crop(x, [self.size, self.size])
        elif crops is not None:
            work = x if x.device.type == "cpu" else x.float()
            x = torch.cat([self._resize(work[k: k + 1, :, top: top + h, left: left + w])
                           for k, (top, left, h, w) in enumerate(crops)])
        out = self._empty(x.shape[0], x.device)
        out.copy_(x)  # layout and dtype in one pass
        return out.mul_(self.scale).add_(self.shift)

    def _resize(self, x: Tensor) -> Tensor:
        # Antialiased bilinear. On CPU torch's uint8 kernel is ~20x faster than
        # torchvision.ops.roi_align (7800 vs 420 img/s at 224 px, measured).
        return F.interpolate(x, size=[self.size, self.size], mode="bilinear", align_corners=False, antialias=True)

