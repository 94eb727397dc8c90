"""PNG plots (line/scatter panels and heatmaps) drawn with matplotlib's Agg backend.

matplotlib is imported lazily inside the plotting functions, so importing this module stays cheap.
Files are written atomically (temp file + os.replace). NaN/None values are skipped: a line breaks
where a value is missing, and non-positive values are dropped on log axes.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
import textwrap
from pathlib import Path

# Okabe-Ito colour-blind-safe palette; yellow last because it is faint on white.
PALETTE = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (213, 94, 0), (204, 121, 167),
           (86, 180, 233), (0, 0, 0), (240, 228, 66)]
MISSING = (200, 200, 200)  # heatmap cells without a value
DPI = 100
_RC = {"font.size": 8, "axes.titlesize": 9, "axes.titleweight": "bold", "legend.fontsize": 7,
       "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.titlesize": 11, "axes.axisbelow": True}


def _rgb(c) -> tuple[float, ...]:
    return tuple(v / 255 for v in c)


def _float(v, log: bool = False) -> float:
    """v as a float, or NaN when it is missing, non-finite, or not positive on a log axis."""
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and not (log and v <= 0)
    return float(v) if ok else math.nan


def _figure(width_px: float, height_px: float):
    """A pyplot-free Agg figure (nothing registered globally, so nothing to leak)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path, tight: bool = False) -> Path:
    """Write the PNG via a temp file in the same folder + os.replace (atomic); tight: fit to content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI, facecolor="white", bbox_inches="tight" if tight else None)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; plots are ordinary shareable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        fig.clear()
    return path


def _log_format(axis, lim) -> None:
    """Plain numbers on log axes spanning under 2.5 decades (1, 2, 5 labelled, not 2x10^0)."""
    from matplotlib.ticker import FuncFormatter

    lo, hi = sorted(lim)
    if lo > 0 and math.log10(hi / lo) < 2.5:
        lead = lambda v: round(v / 10 ** math.floor(math.log10(v)), 6) if v > 0 else 0
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if lead(v) in (2, 5) else ""))


def _draw_panel(ax, panel: dict) -> None:
    xlog, ylog = bool(panel.get("xlog")), bool(panel.get("ylog"))
    drawn, labels = 0, []
    for i, s in enumerate(panel.get("series", [])):
        color = _rgb(PALETTE[i % len(PALETTE)])
        pts = list(zip(s.get("x", []), s.get("y", [])))
        xs, ys = [_float(x, xlog) for x, _ in pts], [_float(y, ylog) for _, y in pts]
        ok = [not (math.isnan(x) or math.isnan(y)) for x, y in zip(xs, ys)]
        drawn += sum(ok)
        line = s.get("line", True)
        # Points with no drawable neighbour have no line to show; they get a marker to still render.
        lone = [k for k, good in enumerate(ok) if good and not any(ok[max(k - 1, 0):k] + ok[k + 1:k + 2])]
        every = None if s.get("marker", False) or not line else lone
        ax.plot(xs, ys, color=color, lw=1.6, ls="-" if line else "none", marker="o" if every != [] else None,
                markevery=every, ms=5, mec="black", mew=0.6,
                label=str(s.get("label", f"series {i + 1}")))
        texts = s.get("point_labels") or []
        labels += [(x, y, str(t), color) for x, y, t, k in zip(xs, ys, texts, ok) if t and k]
    for log, scale, lim, setlim in ((xlog, ax.set_xscale, panel.get("xlim"), ax.set_xlim),
                                    (ylog, ax.set_yscale, panel.get("ylim"), ax.set_ylim)):
        if log:
            scale("log")
        if lim is not None and (not log or min(lim) > 0):
            setlim(float(lim[0]), float(lim[1]))
        elif not drawn:
            setlim(*((1, 10) if log else (0, 1)))
    if labels:
        ax.margins(0.12, 0.1)  # room for the point labels inside the frame
    (x0, x1), f = ax.get_xlim(), math.log10 if xlog else float
    for axis, lim, log in ((ax.xaxis, (x0, x1), xlog), (ax.yaxis, ax.get_ylim(), ylog)):
        if log and drawn:
            _log_format(axis, lim)
    for x, y, text, color in labels:  # left of the point in the right part of the panel
        right = (f(x) - f(x0)) / ((f(x1) - f(x0)) or 1) > 0.6
        ax.annotate(text, (x, y), xytext=(-5 if right else 5, 4), textcoords="offset points",
                    ha="right" if right else "left", fontsize=7, color=color)
    if not drawn:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.45")
    elif panel.get("series"):
        ax.legend(loc="best", framealpha=0.85)
    ax.set(title=panel.get("title", ""), xlabel=panel.get("xlabel", ""), ylabel=panel.get("ylabel", ""))
    if panel.get("xinteger"):  # epochs: ticks at whole numbers only
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, color="0.9", lw=0.6)


def line_panels(path, panels: list[dict], *, title: str = "", ncols: int | None = None,
                panel_size=(420, 320)) -> Path:
    """Draw line/scatter panels in a grid and write a PNG; returns the path.

    Each panel: {"title", "xlabel", "ylabel", "series": [{"label", "x", "y", "marker"=False,
    "line"=True, "point_labels"=None}], "xlog"=False, "ylog"=False, "ylim"=None, "xlim"=None,
    "xinteger"=False (whole-number x ticks, e.g. epochs)}.
    Image size: (ncols * panel_w, title_h + nrows * panel_h), title_h = 30 with a title else 0.
    """
    from matplotlib import rc_context

    panels = list(panels) or [{"series": []}]
    ncols = max(1, min(ncols or math.ceil(math.sqrt(len(panels))), len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    width, height = ncols * int(panel_size[0]), (30 if title else 0) + nrows * int(panel_size[1])
    with rc_context(_RC):
        fig = _figure(width, height)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, panel in zip(axes, panels):
            _draw_panel(ax, panel)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        if title:  # wrapped to the figure width (~8.5 px per character at 11 pt)
            fig.suptitle(textwrap.fill(title, max(20, int(width / 8.5))))
        return _save(fig, path)


def heatmap(path, matrix: list[list[float]], *, row_labels: list[str] | None = None,
            col_labels: list[str] | None = None, title: str = "", max_labels: int = 40,
            xlabel: str = "", ylabel: str = "") -> Path:
    """Draw a matrix as coloured cells (viridis, min..max) with a colour bar; writes a PNG.

    Labels are drawn only for at most `max_labels` rows/columns (else the axes show class indices);
    cells large enough get their values written in. NaN/None cells are light grey.
    """
    from matplotlib import colormaps, rc_context

    rows = [list(r) for r in matrix]
    nr, nc = len(rows), max((len(r) for r in rows), default=0)
    grid = [[_float(r[j]) if j < len(r) else math.nan for j in range(nc)] for r in rows]
    vals = [v for r in grid for v in r if not math.isnan(v)]
    vmin, vmax = (min(vals), max(vals)) if vals else (0.0, 1.0)
    n = max(nr, nc, 1)
    side = min(720, max(240, 32 * n))  # grid size in pixels: ~32 px cells, 720 px at most
    cell, span = side / n, (vmax - vmin) or 1.0
    fs = max(5.0, min(8.0, cell * 0.55))  # label font shrinks with the cells
    ticks = [[str(s) for s in labels[:k]] if labels and k <= max_labels else None
             for labels, k in ((row_labels, nr), (col_labels, nc))]
    lw, lh = (max(map(len, t), default=0) * fs * 0.85 + 12 if t else 28 for t in ticks)
    with rc_context(_RC):
        fig = _figure(lw + side + 110, max((38 if title else 12) + lh + side, 200))
        ax = fig.add_subplot()
        if not nr or not nc:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no data", ha="center", va="center", color="0.45")
        else:
            im = ax.imshow(grid, cmap=colormaps["viridis"].with_extremes(bad=_rgb(MISSING)), vmin=vmin,
                           vmax=vmin + span, interpolation="nearest", aspect="equal")
            fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03, shrink=0.9)
            if ticks[0]:
                ax.set_yticks(range(nr), ticks[0], fontsize=fs)
            if ticks[1]:
                ax.set_xticks(range(nc), ticks[1], fontsize=fs, rotation=90)
            vfs = max(6.0, min(8.0, cell * 0.25))  # cell values, written only where they fit
            cells = [(i, j, v) for i, r in enumerate(grid) for j, v in enumerate(r) if not math.isnan(v)]
            for i, j, v in cells if cell >= 24 else []:
                text = f"{v:.0f}" if v.is_integer() and abs(v) < 1e5 else f"{v:.2f}" if abs(v) < 10 else f"{v:.3g}"
                if len(text) * vfs * 0.85 < cell - 2:
                    ax.text(j, i, text, ha="center", va="center", fontsize=vfs,
                            color="black" if (v - vmin) / span > 0.6 else "white")
            ax.set(ylabel=" ".join(filter(None, [ylabel, "(class index)" if nr > max_labels else ""])),
                   xlabel=" ".join(filter(None, [xlabel, "(class index)" if nc > max_labels else ""])))
            ax.tick_params(length=2, pad=2)
        ax.set_title(title)
        return _save(fig, path, tight=True)


def image_grid(path, images: list, titles: list[str], *, title: str = "", highlight: list[bool] | None = None,
               ncols: int | None = None, cell_px: int = 180, empty: str = "no images") -> Path:
    """Images (PIL images or HxWx3 arrays) in a grid, each with a few lines of caption; writes a PNG.

    highlight[i] draws image i's caption in the palette's vermilion (e.g. a wrong prediction).
    """
    from matplotlib import rc_context

    n = len(images)
    ncols = max(1, min(ncols or math.ceil(math.sqrt(n or 1)), n or 1))
    nrows = max(1, math.ceil(n / ncols))
    lines = max((len(str(t).splitlines()) for t in titles), default=0)
    caption_px = 12 * lines + 8
    with rc_context(_RC):
        fig = _figure(ncols * cell_px, (34 if title else 6) + nrows * (cell_px + caption_px))
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for k, ax in enumerate(axes):
            ax.set_axis_off()
            if k >= n:
                continue
            ax.imshow(images[k], interpolation="lanczos")
            color = _rgb(PALETTE[3]) if highlight and highlight[k] else "black"
            ax.set_title(str(titles[k]) if k < len(titles) else "", fontsize=7, color=color,
                         fontweight="normal", loc="left")
        if not n:
            axes[0].text(0.5, 0.5, empty, transform=axes[0].transAxes, ha="center", va="center", color="0.45")
        if title:
            fig.suptitle(textwrap.fill(title, max(20, int(ncols * cell_px / 8.5))))
        return _save(fig, path)
