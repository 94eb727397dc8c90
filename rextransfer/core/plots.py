"""Small PNG plots drawn with PIL: line/scatter panels and heatmaps.

matplotlib is not a dependency (it is large and slow to import); these two plot kinds are all the
project draws, so a few hundred lines of PIL cover them. Files are written atomically so a reader
never sees half a PNG. NaN/None values are skipped (a line breaks where a value is missing).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Okabe-Ito colour-blind-safe palette; yellow last because it is faint on white.
PALETTE = [
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (213, 94, 0), (204, 121, 167),
    (86, 180, 233), (0, 0, 0), (240, 228, 66),
]
WHITE, BLACK, GRID, AXIS, MISSING = (255, 255, 255), (0, 0, 0), (225, 225, 225), (90, 90, 90), (200, 200, 200)
# Viridis anchors (perceptually uniform, readable in grey-scale); interpolated linearly.
_VIRIDIS = [(68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142),
            (31, 158, 137), (53, 183, 121), (110, 206, 88), (181, 222, 43), (253, 231, 37)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable built-in font
    except TypeError:  # older Pillow: fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _save(img: Image.Image, path) -> Path:
    """Write the PNG through a temp file in the same folder, then rename (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; plots are ordinary shareable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------------------------------------
# Axis scales and ticks
# ------------------------------------------------------------------------------------------------
def _nice_step(span: float, target: int = 5) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _linear_ticks(lo: float, hi: float, expand: bool) -> tuple[float, float, list[float]]:
    """Round ticks over [lo, hi]; with expand, the range grows to the outer ticks."""
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo)
    if expand:
        lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    first = math.ceil(lo / step - 1e-9) * step
    ticks = [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
    return lo, hi, [0.0 if abs(t) < step * 1e-9 else t for t in ticks]


def _log_ticks(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """Ticks at powers of ten (plus 2 and 5 when the range spans under two decades)."""
    if hi <= lo:
        lo, hi = lo / 2, hi * 2
    elo, ehi = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
    if ehi == elo:
        ehi += 1
    lo, hi = 10.0 ** elo, 10.0 ** ehi
    mults = (1, 2, 5) if ehi - elo <= 2 else (1,)
    stride = max(1, (ehi - elo) // 8)  # at most ~8 labels on very wide ranges
    ticks = [m * 10.0 ** e for e in range(elo, ehi + 1, stride) for m in mults if m * 10.0 ** e <= hi]
    return lo, hi, ticks


def _fmt(v: float, step: float | None = None) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    if step is not None and step < 1:
        decimals = 0  # enough decimals to show the step exactly (0.25 needs 2, 0.2 needs 1)
        while decimals < 6 and abs(round(step, decimals) - step) > step * 1e-6:
            decimals += 1
        return f"{v:.{decimals}f}"
    return f"{v:.4g}"


class _Axis:
    """Maps data values to pixels along one axis (linear or log10)."""

    def __init__(self, values: list[float], log: bool, limits, p0: int, p1: int):
        vals = [v for v in values if _finite(v) and (v > 0 or not log)]
        self.log, self.limits = log, limits
        if limits is not None:
            lo, hi = float(limits[0]), float(limits[1])
            self.lo, self.hi, self.ticks = _log_ticks(lo, hi) if log else _linear_ticks(lo, hi, expand=False)
            self.lo, self.hi = lo, hi
            self.ticks = [t for t in self.ticks if lo - 1e-12 <= t <= hi + 1e-12]
        elif vals:
            lo, hi = min(vals), max(vals)
            self.lo, self.hi, self.ticks = _log_ticks(lo, hi) if log else _linear_ticks(lo, hi, expand=True)
        else:
            self.lo, self.hi, self.ticks = _log_ticks(1, 10) if log else _linear_ticks(0, 1, expand=True)
        self.step = None if log or len(self.ticks) < 2 else self.ticks[1] - self.ticks[0]
        self.p0, self.p1 = p0, p1

    def ok(self, v) -> bool:
        """Drawable: finite, positive on a log axis, and inside explicit limits if any were given."""
        if not _finite(v) or (self.log and v <= 0):
            return False
        return self.limits is None or self.lo - 1e-12 <= v <= self.hi + 1e-12

    def __call__(self, v: float) -> float:
        f = (lambda x: math.log10(x)) if self.log else (lambda x: x)
        return self.p0 + (f(v) - f(self.lo)) / (f(self.hi) - f(self.lo)) * (self.p1 - self.p0)


# ------------------------------------------------------------------------------------------------
# Line panels
# ------------------------------------------------------------------------------------------------
def _legend_rows(draw, series, font, width: int) -> list[list[tuple[int, str, int]]]:
    """Lay legend entries left to right, wrapping into rows that fit `width`."""
    rows, row, x = [], [], 0
    for i, s in enumerate(series):
        label = str(s.get("label", f"series {i + 1}"))
        w = 22 + _text_size(draw, label, font)[0] + 12
        if row and x + w > width:
            rows.append(row)
            row, x = [], 0
        row.append((i, label, w))
        x += w
    if row:
        rows.append(row)
    return rows


def _draw_panel(img: Image.Image, box: tuple[int, int, int, int], panel: dict) -> None:
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    font, small, bold = _font(12), _font(11), _font(13)
    series = [s for s in panel.get("series", [])]
    line_h = _text_size(draw, "Hg", small)[1] + 6

    # Vertical budget: title on top, x tick labels + x label + legend rows at the bottom.
    legend = _legend_rows(draw, series, small, x1 - x0 - 20)
    top = y0 + 10 + (_text_size(draw, "Hg", bold)[1] + 8 if panel.get("title") else 0)
    bottom = y1 - 8 - len(legend) * line_h - (line_h + 4 if panel.get("xlabel") else 0) - line_h
    left, right = x0 + 62 + (line_h if panel.get("ylabel") else 0), x1 - 14

    xs = [v for s in series for v in s.get("x", [])]
    ys = [v for s in series for v in s.get("y", [])]
    ax = _Axis(xs, bool(panel.get("xlog")), panel.get("xlim"), left, right)
    ay = _Axis(ys, bool(panel.get("ylog")), panel.get("ylim"), bottom, top)

    # Grid, ticks and tick labels.
    for t in ax.ticks:
        px = ax(t)
        draw.line([(px, top), (px, bottom)], fill=GRID)
        draw.line([(px, bottom), (px, bottom + 4)], fill=AXIS)
        label = _fmt(t, ax.step)
        w, _ = _text_size(draw, label, small)
        draw.text((px - w / 2, bottom + 6), label, fill=BLACK, font=small)
    for t in ay.ticks:
        py = ay(t)
        draw.line([(left, py), (right, py)], fill=GRID)
        draw.line([(left - 4, py), (left, py)], fill=AXIS)
        label = _fmt(t, ay.step)
        w, h = _text_size(draw, label, small)
        draw.text((left - 7 - w, py - h / 2 - 2), label, fill=BLACK, font=small)
    draw.rectangle([left, top, right, bottom], outline=AXIS)

    # Data: clipped to the plot area (a fixed ylim may cut points off).
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    ld = ImageDraw.Draw(layer)
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = [(ax(x), ay(y)) if ax.ok(x) and ay.ok(y) else None
               for x, y in zip(s.get("x", []), s.get("y", []))]
        if s.get("line", True):
            run: list[tuple[float, float]] = []
            for p in pts + [None]:
                if p is None:
                    if len(run) > 1:
                        ld.line(run, fill=color, width=2, joint="curve")
                    run = []
                else:
                    run.append(p)
        if s.get("marker", False):
            for p in filter(None, pts):
                ld.ellipse([p[0] - 3.5, p[1] - 3.5, p[0] + 3.5, p[1] + 3.5], fill=color, outline=BLACK)
    # Clip a marker's width outside the frame so points on the range edge stay whole.
    clip = Image.new("L", img.size, 0)
    ImageDraw.Draw(clip).rectangle([left - 5, top - 5, right + 5, bottom + 5], fill=255)
    img.paste(layer, (0, 0), Image.composite(layer, Image.new("RGBA", img.size), clip).getchannel("A"))
    # Point labels (scatter plots) go on top, unclipped, kept inside the panel.
    for i, s in enumerate(series):
        for x, y, text in zip(s.get("x", []), s.get("y", []), s.get("point_labels") or []):
            if text and ax.ok(x) and ay.ok(y):
                w, h = _text_size(draw, str(text), small)
                px, py = ax(x) + 6, ay(y) - h - 3
                px = px if px + w < x1 - 2 else ax(x) - 6 - w
                draw.text((px, max(py, y0 + 2)), str(text), fill=PALETTE[i % len(PALETTE)], font=small)

    # Titles and axis labels.
    if panel.get("title"):
        w, _ = _text_size(draw, panel["title"], bold)
        draw.text(((x0 + x1) / 2 - w / 2, y0 + 6), panel["title"], fill=BLACK, font=bold)
    if panel.get("xlabel"):
        w, _ = _text_size(draw, panel["xlabel"], font)
        draw.text(((left + right) / 2 - w / 2, bottom + line_h + 4), panel["xlabel"], fill=BLACK, font=font)
    if panel.get("ylabel"):
        w, h = _text_size(draw, panel["ylabel"], font)
        tile = Image.new("RGBA", (w + 4, h + 6), (255, 255, 255, 0))
        ImageDraw.Draw(tile).text((2, 0), panel["ylabel"], fill=BLACK, font=font)
        tile = tile.rotate(90, expand=True)
        img.paste(tile, (x0 + 4, int((top + bottom) / 2 - tile.height / 2)), tile)
    if not any(ax.ok(x) and ay.ok(y) for s in series for x, y in zip(s.get("x", []), s.get("y", []))):
        w, h = _text_size(draw, "no data", font)
        draw.text(((left + right) / 2 - w / 2, (top + bottom) / 2 - h / 2), "no data", fill=AXIS, font=font)

    # Legend rows under the x label.
    ly = y1 - 6 - len(legend) * line_h
    for row in legend:
        lx = x0 + 10
        for i, label, w in row:
            color, s = PALETTE[i % len(PALETTE)], series[i]
            mid = ly + line_h / 2
            if s.get("line", True):
                draw.line([(lx, mid), (lx + 16, mid)], fill=color, width=2)
            if s.get("marker", False) or not s.get("line", True):
                draw.ellipse([lx + 5, mid - 3.5, lx + 12, mid + 3.5], fill=color, outline=BLACK)
            draw.text((lx + 22, mid - line_h / 2 + 1), label, fill=BLACK, font=small)
            lx += w
        ly += line_h


def line_panels(path, panels: list[dict], *, title: str = "", ncols: int | None = None,
                panel_size=(420, 320)) -> Path:
    """Draw line/scatter panels in a grid and write a PNG; returns the path.

    Each panel: {"title", "xlabel", "ylabel", "series": [{"label", "x", "y", "marker"=False,
    "line"=True, "point_labels"=None}], "xlog"=False, "ylog"=False, "ylim"=None, "xlim"=None}.
    Image size: (ncols * panel_w, title_h + nrows * panel_h), title_h = 30 with a title else 0.
    """
    panels = list(panels) or [{"series": []}]
    ncols = max(1, min(ncols or math.ceil(math.sqrt(len(panels))), len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    pw, ph = int(panel_size[0]), int(panel_size[1])
    title_h = 30 if title else 0
    img = Image.new("RGB", (ncols * pw, title_h + nrows * ph), WHITE)
    if title:
        draw, font = ImageDraw.Draw(img), _font(15)
        w, _ = _text_size(draw, title, font)
        draw.text((img.width / 2 - w / 2, 7), title, fill=BLACK, font=font)
    for k, panel in enumerate(panels):
        r, c = divmod(k, ncols)
        _draw_panel(img, (c * pw, title_h + r * ph, (c + 1) * pw, title_h + (r + 1) * ph), panel)
    return _save(img, path)


# ------------------------------------------------------------------------------------------------
# Heatmap
# ------------------------------------------------------------------------------------------------
def _viridis(t: float) -> tuple[int, int, int]:
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    return tuple(round(a[k] + (b[k] - a[k]) * f) for k in range(3))


def heatmap(path, matrix: list[list[float]], *, row_labels: list[str] | None = None,
            col_labels: list[str] | None = None, title: str = "", max_labels: int = 40) -> Path:
    """Draw a matrix as coloured cells (viridis, min..max) with a colour bar; writes a PNG.

    Labels are drawn only when the matrix has at most `max_labels` rows/columns; cells get their
    values written in when they are large enough to hold them. NaN/None cells are light grey.
    """
    rows = [list(r) for r in matrix]
    nr, nc = len(rows), max((len(r) for r in rows), default=0)
    vals = [v for r in rows for v in r if _finite(v)]
    vmin, vmax = (min(vals), max(vals)) if vals else (0.0, 1.0)
    cell = max(2, min(48, 720 // max(nr, nc, 1)))
    font, small, tiny = _font(13), _font(11), _font(max(8, min(11, cell - 4)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    show_rows = bool(row_labels) and nr <= max_labels
    show_cols = bool(col_labels) and nc <= max_labels
    lw = max((_text_size(probe, str(s), small)[0] for s in row_labels), default=0) + 8 if show_rows else 0
    lh = max((_text_size(probe, str(s), small)[0] for s in col_labels), default=0) + 8 if show_cols else 0
    title_h = 30 if title else 8
    gx, gy = 10 + lw, title_h + lh
    bar_x = gx + nc * cell + 16
    width = bar_x + 18 + 8 + max(_text_size(probe, _fmt(v), small)[0] for v in (vmin, vmax)) + 10
    height = max(gy + nr * cell + 10, gy + 120)
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    if title:
        w, _ = _text_size(draw, title, font)
        draw.text((width / 2 - w / 2, 7), title, fill=BLACK, font=font)

    span = (vmax - vmin) or 1.0
    for i, r in enumerate(rows):
        for j in range(nc):
            v = r[j] if j < len(r) else None
            color = _viridis((v - vmin) / span) if _finite(v) else MISSING
            x, y = gx + j * cell, gy + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=color)
            if _finite(v) and cell >= 28:
                text = _fmt(round(v, 2))
                w, h = _text_size(draw, text, tiny)
                if w < cell - 2:
                    ink = BLACK if (v - vmin) / span > 0.6 else WHITE
                    draw.text((x + cell / 2 - w / 2, y + cell / 2 - h / 2 - 2), text, fill=ink, font=tiny)
    if show_rows:
        for i, s in enumerate(row_labels[:nr]):
            w, h = _text_size(draw, str(s), small)
            draw.text((gx - 4 - w, gy + i * cell + cell / 2 - h / 2 - 2), str(s), fill=BLACK, font=small)
    if show_cols:
        for j, s in enumerate(col_labels[:nc]):
            w, h = _text_size(draw, str(s), small)
            tile = Image.new("RGBA", (w + 4, h + 6), (255, 255, 255, 0))
            ImageDraw.Draw(tile).text((2, 0), str(s), fill=BLACK, font=small)
            tile = tile.rotate(90, expand=True)
            img.paste(tile, (int(gx + j * cell + cell / 2 - tile.width / 2), gy - 4 - tile.height), tile)

    # Colour bar: max at the top, min at the bottom.
    bar_h = max(nr * cell, 100)
    for k in range(bar_h):
        draw.line([(bar_x, gy + k), (bar_x + 18, gy + k)], fill=_viridis(1 - k / max(bar_h - 1, 1)))
    draw.rectangle([bar_x, gy, bar_x + 18, gy + bar_h - 1], outline=AXIS)
    draw.text((bar_x + 24, gy - 2), _fmt(vmax), fill=BLACK, font=small)
    _, h = _text_size(draw, _fmt(vmin), small)
    draw.text((bar_x + 24, gy + bar_h - h - 4), _fmt(vmin), fill=BLACK, font=small)
    return _save(img, path)
