"""Decoding images the way real folders need: any mode to RGB, EXIF orientation, bombs refused.

Every loader in rextransfer goes through `open_rgb`, so grayscale, palette, RGBA, CMYK, 16-bit
PNG, progressive JPEG and WebP all arrive as 8-bit RGB, upright.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps

# Extensions we treat as images (lower-cased). Anything else in a class folder is a non-image file.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# PIL's own bomb guard warns at ~89 Mpx and raises at 2x that. We refuse at the warning level:
# no fine-grained photo is that large, and decoding one would stall a worker for seconds.
MAX_PIXELS = 89_478_485


class ImageDecodeError(Exception):
    """An image that cannot be used; `reason` is a short machine-friendly tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(img: Image.Image) -> Image.Image:
    """Upright 8-bit RGB from any PIL mode. Transparency is composited on white."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping (PIL's convert("L") clips).
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = (arr / top * 255.0).clip(0, 255).astype("uint8")
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, F


def open_rgb(source: str | Path | bytes | Image.Image, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode fully into RGB or raise ImageDecodeError with a reason.

    `draft` lets JPEG decoding downscale by up to 8x while decoding (fast scans and caches).
    """
    try:
        if isinstance(source, Image.Image):
            img = source
        elif isinstance(source, bytes):
            img = Image.open(io.BytesIO(source))
        else:
            path = Path(source)
            if path.stat().st_size == 0:
                raise ImageDecodeError("empty-file", "zero bytes")
            img = Image.open(path)
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise ImageDecodeError("decompression-bomb", f"{w}x{h} pixels exceeds {MAX_PIXELS}")
        if w == 0 or h == 0:
            raise ImageDecodeError("no-pixels", f"{w}x{h}")
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", draft)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
        return to_rgb(img)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError("decompression-bomb", str(e)) from None
    except Image.DecompressionBombWarning as e:
        raise ImageDecodeError("decompression-bomb", str(e)) from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not-an-image", "unrecognised format") from None
    except FileNotFoundError:
        raise ImageDecodeError("missing", "file not found") from None
    except PermissionError:
        raise ImageDecodeError("unreadable", "permission denied") from None
    except (OSError, SyntaxError, ValueError) as e:
        text = str(e)
        reason = "truncated" if "truncated" in text.lower() or "premature" in text.lower() else "corrupt"
        raise ImageDecodeError(reason, text.splitlines()[0] if text else type(e).__name__) from None
