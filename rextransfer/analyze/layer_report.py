"""Result files of `analyze layers`: the measured curves, the side-by-side comparison with the
paper's Figure 1, the verdicts, the settings with their sources, and the side-by-side plot.

The plot overlays dashed paper curves on ours, a kind `rextransfer.core.plots` does not draw; it is
drawn here with matplotlib's object API (no pyplot state), imported only when a plot is written.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from pathlib import Path

from . import figure1
from .layers import ACTIVATIONS, BLOCKS, LayerSettings, environment, provenance, rank_table
from .observations import MARGIN, verdicts

# One colour per activation in every panel (Okabe-Ito, colour-blind safe; grey for its faint yellow).
COLOURS = {"linear": "#000000", "relu6": "#E69F00", "relu": "#56B4E9", "leakyrelu": "#009E73",
           "elu": "#999999", "softplus": "#0072B2", "hardswish": "#D55E00", "silu": "#CC79A7"}


def _fmt(v: float | None, signed: bool = False) -> str:
    return "" if v is None else f"{v:+.4f}" if signed else f"{v:.4f}"


def curves_csv(rows: list[dict], rules: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["block", "activation", "ratio", "realised_ratio", "networks"]
               + [f"rank_ratio@{r}" for r in rules] + [f"std@{r}" for r in rules])
    for r in rows:
        w.writerow([r["block"], r["activation"], r["ratio"], f"{r['realised_ratio']:.4f}", r["networks"]]
                   + [_fmt(r["rank_ratio"][k]) for k in rules] + [_fmt(r["rank_ratio_std"][k]) for k in rules])
    return buf.getvalue()


def comparison_csv(side: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["block", "activation", "ratio", "ours", "paper", "diff", "within_reading_error"])
    for r in side:
        w.writerow([r["block"], r["activation"], r["ratio"], _fmt(r["ours"]), r["paper"], _fmt(r["diff"], True),
                    "" if r["within"] is None else str(r["within"]).lower()])
    return buf.getvalue()


def plot_side_by_side(path, ours: dict, title: str) -> Path:
    """2x2 panels (one per block): our curves solid, the paper's dashed with +-reading-error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from ..core.files import write_with

    paper, err = figure1.paper_table(), figure1.reading_error()
    blocks = list(ours)
    ncols = 2 if len(blocks) > 1 else 1
    nrows = -(-len(blocks) // ncols)
    fig = Figure(figsize=(5.2 * ncols, 4.2 * nrows + 0.9), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    shown = []
    for ax, block in zip(axes, blocks):
        for act, curve in ours[block].items():
            xs = sorted(curve)
            ax.plot(xs, [curve[x] for x in xs], "-o", color=COLOURS[act], lw=1.6, ms=3.5)
            shown.append(act)
            ref = paper.get(block, {}).get(act)
            if ref:
                px = sorted(ref)
                ax.errorbar(px, [ref[x] for x in px], yerr=err, fmt="--x", color=COLOURS[act], lw=1.2, ms=6,
                            capsize=3, alpha=0.85)
        ax.set_title(BLOCKS[block])
        ax.set_xlim(0, 1.05)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("dimension ratio d_in / d_out")
        ax.set_ylabel("rank ratio")
        ax.grid(alpha=0.3)
    for ax in axes[len(blocks):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=COLOURS[a], lw=2, label=ACTIVATIONS[a][0]) for a in ACTIVATIONS if a in shown]
    handles += [Line2D([], [], color="0.3", ls="-", marker="o", ms=3.5, label="ours"),
                Line2D([], [], color="0.3", ls="--", marker="x", label=f"paper Fig. 1 (read off, ±{err:g})")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), frameon=False, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07 if nrows > 1 else 0.14, 1, 0.95))
    write_with(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    return Path(path)


def plot_title(s: LayerSettings) -> str:
    return (f"Rank ratio of one random layer f(WX): {s.networks} networks per point, d_out in [{s.d_out_min}, {s.d_out_max}], "
            f"N={s.samples}, rank rule {s.rank_rule}\n(unstated settings: input {s.input}"
            f"{' centred' if s.input_centred else ''} x{s.input_scale:g}, init {s.init}, BN {s.bn_order} act, {s.bn_mode} mode)")


def write_layer_results(out_dir, settings: LayerSettings, rows: list[dict], wall_s: float) -> dict[str, Path]:
    """layers.csv, comparison.csv, verdicts.json, settings.json and layers.png in out_dir."""
    from ..core.files import write_json, write_text

    out = Path(out_dir)
    ours = rank_table(rows, settings.rank_rule)
    paths = {name: out / name for name in ("layers.csv", "comparison.csv", "verdicts.json", "settings.json", "layers.png")}
    write_text(paths["layers.csv"], curves_csv(rows, settings.rules))
    write_text(paths["comparison.csv"], comparison_csv(figure1.side_by_side(ours, blocks=settings.blocks)))
    write_json(paths["verdicts.json"], {
        "rank_rule": settings.rank_rule, "margin": MARGIN, "under_these_settings": verdicts(ours),
        "on_the_paper_values": verdicts(figure1.paper_table()),
        "by_rank_rule": {rule: {v["id"]: v["status"] for v in verdicts(rank_table(rows, rule))} for rule in settings.rules}})
    write_json(paths["settings.json"], {
        "analysis": "layers", **asdict(settings), "rules": settings.rules,
        "sources": {p["name"]: p["note"] for p in provenance(settings)},
        "paper_figure": figure1.paper()["source"], "wall_time_s": round(wall_s, 2),
        **environment(), "threads": 1})  # the measurement runs on one thread
    plot_side_by_side(paths["layers.png"], ours, plot_title(settings))
    return paths
