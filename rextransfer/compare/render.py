"""`rextransfer compare`, rendering: a Comparison (built in compare.py) as a rich table, plain
text, markdown, csv, json, or a png of accuracy against GMACs.

Every format is built from the same "views" (title, header, rows, notes); missing values show as
"—" (DASH). print_wide prints any rich table at its natural width (`rextransfer bench` uses it too).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .table import Cell, Comparison, load_paper, parse_model_spec, primary_reference, reference_backbone

DASH = "—"


# ------------------------------------------------------------------------------------------------
# Render: every format is built from the same "views" (title, header, rows, notes)
# ------------------------------------------------------------------------------------------------
def fmt(v: float | None, digits: int = 2) -> str:
    return DASH if v is None else f"{v:.{digits}f}"


def fmt_diff(v: float | None) -> str:
    return DASH if v is None else f"{v:+.2f}"


def fmt_rate(v: float | None) -> str:
    return DASH if v is None else f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def fmt_duration(s: float | None) -> str:
    if s is None:
        return DASH
    s = int(round(s))
    return f"{s}s" if s < 60 else f"{s // 60}m {s % 60:02d}s" if s < 3600 else f"{s // 3600}h {s % 3600 // 60:02d}m"


def fmt_ours(c: Cell) -> str:
    if not c.n:
        return DASH
    return f"{c.mean:.2f} ± {c.std:.2f} (n={c.n})" if c.std is not None else f"{c.mean:.2f} (n={c.n})"


def _tput(v: float | None, source: str | None) -> str:
    return fmt_rate(v) + ("†" if source == "bench" and v is not None else "")


@dataclass
class View:
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def views(comp: Comparison) -> list[View]:
    paper, primary = load_paper(), primary_reference()
    src = primary["source"]
    bench_note = []
    if any(x.throughput_source == "bench" for r in comp.rows for x in (r, *r.cells.values())):
        files = "; ".join(f"{b.get('device')}, {b.get('img_size')} px, batch {b.get('batch_size')}" for b in comp.bench)
        bench_note = [f"† throughput from `rextransfer bench` ({files}; random init): no complete run measured it"]
    head = ["backbone", "params (M)", "GMACs"]
    for ds in comp.datasets:
        head += [ds, "paper", "Δ"]
    overview = View(
        f"Fine-grained transfer, headline metric (%): ours (mean ± sample std over seeds) vs {primary['label']}",
        head + ["train img/s", "eval img/s"], [],
        [f"paper: {src['title']} ({src['venue']}), {src['table']}; metric: {primary['metric']}",
         "Δ = ours − paper (percentage points); params/GMACs: ImageNet model at 224 px where known"]
        + ([f"{primary['baselines']}; ours start from the pinned public weights instead (`rextransfer models`)"]
           if primary.get("baselines") else []) + bench_note)
    for r in comp.rows:
        line = [r.label, fmt(r.params_m), fmt(r.gmacs)]
        for ds in comp.datasets:
            c = r.cells[ds]
            line += [fmt_ours(c), fmt(c.paper, 1), fmt_diff(c.diff)]
        overview.rows.append(line + [_tput(r.train_img_per_s, r.throughput_source), _tput(r.eval_img_per_s, r.throughput_source)])
    out = [overview]
    for ds in comp.datasets:
        metric = comp.dataset_metric(ds)
        v = View(f"{comp.dataset_title(ds)} ({ds}): {metric} (%)",
                 ["backbone", "recipe", "img", "n", "mean", "± std", "paper", "Δ", "params (M)", "GMACs",
                  "train img/s", "eval img/s", "device", "wall/run"], [], [])
        for r in comp.rows:
            c = r.cells[ds]
            v.rows.append([r.label, c.recipe or DASH, str(c.img_size) if c.img_size else DASH, str(c.n),
                           fmt(c.mean), fmt(c.std), fmt(c.paper, 1), fmt_diff(c.diff), fmt(c.params_m), fmt(c.gmacs),
                           _tput(c.train_img_per_s, c.throughput_source), _tput(c.eval_img_per_s, c.throughput_source),
                           c.device or DASH, fmt_duration(c.wall_time_s)])
        for ref in paper["references"]:
            if not ref.get("primary"):
                vals = [f"{k.split('@')[0]} {res[ds]}" for k, res in ref["results"].items() if ds in res]
                if vals:
                    v.notes.append(f"reference, {ref['label']}: {', '.join(vals)} ({ref['metric']})")
        out.append(v)
    refs = View("Published numbers (paper_results.yaml)", ["source", "backbone"] + comp.datasets, [], [])
    for ref in paper["references"]:
        for key, res in ref["results"].items():
            model, width = parse_model_spec(key)
            label = (reference_backbone(model, width or 1.0) or {}).get("label", key)
            refs.rows.append([ref["label"], label] + [fmt(res.get(ds), 1) for ds in comp.datasets])
        s = ref["source"]
        refs.notes.append(f"{ref['label']}: {s['authors']}, \"{s['title']}\", {s['venue']}, {s['table']}, "
                          f"page {s.get('page') or 'n/a'}; {s['url']}")
    out.append(refs)
    if comp.incomplete:
        out.append(View("Not counted (run not complete)", ["dataset", "run", "status", "detail"],
                        [[i.dataset, i.name, i.status, i.detail or DASH] for i in comp.incomplete]))
    return out


def render_rich(comp: Comparison, console) -> None:
    from rich.table import Table
    from rich.text import Text

    for v in views(comp):  # Text(...) everywhere: names and paths are data, never rich markup
        table = Table(title=Text(v.title), title_justify="left", caption=Text("\n".join(v.notes)) if v.notes else None,
                      caption_justify="left")
        for i, h in enumerate(v.header):
            table.add_column(Text(h), justify="left" if i == 0 or h in ("recipe", "device", "source", "run", "status", "detail", "dataset") else "right")
        for row in v.rows:
            table.add_row(*map(Text, row))
        print_wide(console, table)
        console.print()


def print_wide(console, table) -> None:
    """Print a table at its natural width: never squeeze columns into ellipses. A wide table wraps
    in a narrow terminal but stays whole when piped or written to a file."""
    from rich.console import Console
    from rich.measure import Measurement

    need = Measurement.get(console, console.options.update_width(1000), table).maximum
    Console(file=console.file, width=max(console.width, need), highlight=False, color_system=console.color_system,
            force_terminal=console.is_terminal).print(table)


def render_text(comp: Comparison) -> str:
    from rich.console import Console

    buf = io.StringIO()
    render_rich(comp, Console(file=buf, width=100, color_system=None, highlight=False))
    return buf.getvalue()


def render_markdown(comp: Comparison) -> str:
    lines = []
    for v in views(comp):
        lines += [f"### {v.title}", "", "| " + " | ".join(v.header) + " |", "|" + "---|" * len(v.header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in v.rows]
        lines += [""] + [f"{n}  " for n in v.notes] + ([""] if v.notes else [])
    return "\n".join(lines).rstrip() + "\n"


CSV_FIELDS = ["dataset", "backbone", "model", "width", "weight_tag", "pretrained", "recipe", "img_size", "metric",
              "n", "mean", "std", "seeds", "paper", "diff", "params_m", "gmacs", "train_img_per_s",
              "eval_img_per_s", "throughput_source", "device", "wall_time_s", "runs"]


def _round(v: Any, digits: int = 4) -> Any:
    return round(v, digits) if isinstance(v, float) else v


def cell_records(comp: Comparison) -> list[dict]:
    """One flat record per (backbone row, dataset); missing values are None."""
    records = []
    for r in comp.rows:
        for ds in comp.datasets:
            c = r.cells[ds]
            records.append({
                "dataset": ds, "backbone": r.label, "model": r.model, "width": r.width, "weight_tag": r.weight_tag,
                "pretrained": r.pretrained, "recipe": c.recipe, "img_size": c.img_size,
                "metric": c.metric or comp.dataset_metric(ds), "n": c.n, "mean": _round(c.mean),
                "std": _round(c.std), "seeds": c.seeds, "paper": c.paper, "diff": _round(c.diff),
                "params_m": _round(c.params_m), "gmacs": _round(c.gmacs),
                "train_img_per_s": _round(c.train_img_per_s, 1), "eval_img_per_s": _round(c.eval_img_per_s, 1),
                "throughput_source": c.throughput_source, "device": c.device,
                "wall_time_s": _round(c.wall_time_s, 1), "runs": [s["_path"] for s in c.runs]})
    return records


def render_csv(comp: Comparison) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for rec in cell_records(comp):
        rec = {k: ";".join(map(str, v)) if isinstance(v, list) else "" if v is None else v for k, v in rec.items()}
        writer.writerow(rec)
    return buf.getvalue()


def to_json(comp: Comparison) -> dict:
    paper = load_paper()
    return {
        "runs_dir": comp.runs_dir,
        "conventions": {"mean": "over seeds of the final headline metric (%)",
                        "std": "sample standard deviation (ddof=1); null when n = 1",
                        "diff": "mean - paper, percentage points"},
        "datasets": [{"name": ds, "title": comp.dataset_title(ds), "metric": comp.dataset_metric(ds)} for ds in comp.datasets],
        "rows": [{"backbone": r.label, "model": r.model, "width": r.width, "weight_tag": r.weight_tag,
                  "pretrained": r.pretrained, "params_m": r.params_m, "gmacs": r.gmacs,
                  "train_img_per_s": _round(r.train_img_per_s, 1), "eval_img_per_s": _round(r.eval_img_per_s, 1),
                  "throughput_source": r.throughput_source, "device": r.device} for r in comp.rows],
        "cells": cell_records(comp),
        "references": paper["references"],
        "incomplete": [vars(i) for i in comp.incomplete],
        "bench_files": [{k: b.get(k) for k in ("_path", "device", "img_size", "batch_size", "created_at")} for b in comp.bench],
    }


def render_json(comp: Comparison) -> str:
    return json.dumps(to_json(comp), indent=2, ensure_ascii=False) + "\n"


def plot(comp: Comparison, path: Path) -> Path:
    """Accuracy against GMACs, one panel per dataset (the paper's style of figure)."""
    from ..core.plots import line_panels

    panels = []
    for ds in comp.datasets:
        cells = [(r, r.cells[ds]) for r in comp.rows if r.cells[ds].n]
        series = [{"label": "ours (mean over seeds)", "x": [c.gmacs or r.gmacs for r, c in cells],
                   "y": [c.mean for _, c in cells], "marker": True, "line": False,
                   "point_labels": [r.label.split(" (")[0] for r, _ in cells]}]
        for ref in load_paper()["references"]:
            pts = [(reference_backbone(*_spec_width(k)), res[ds]) for k, res in ref["results"].items() if ds in res]
            if pts:
                series.append({"label": ref["label"], "x": [b.get("paper_gmacs", b["gmacs"]) for b, _ in pts],
                               "y": [v for _, v in pts], "marker": True, "line": False,
                               "point_labels": [b["label"] for b, _ in pts]})
        panels.append({"title": comp.dataset_title(ds), "xlabel": "GMACs (multiply-adds)", "xlog": True,
                       "ylabel": f"{comp.dataset_metric(ds)} (%)", "series": series})
    return line_panels(path, panels, title="Fine-grained transfer: accuracy vs compute")


def _spec_width(key: str) -> tuple[str, float]:
    model, width = parse_model_spec(key)
    return model, 1.0 if width is None else width
