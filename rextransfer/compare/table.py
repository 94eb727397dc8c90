"""`rextransfer compare`: the paper's fine-grained table, rebuilt from run folders (the data side).

    runs/<dataset>/<name>/summary.json  --collect-->  complete summaries (+ a list of the others)
    --aggregate-->  rows (backbone: model, width, weight tag) x datasets -> Cell (seeds pooled)
    --render-->  rich table | markdown | csv | json | png (accuracy against GMACs)

This module holds the published numbers (paper_results.yaml), collect and aggregate (build ->
Comparison of Rows of Cells). Rendering is in compare_render.py; `compare --run`, which trains a
grid's missing cells (plan_grid / run_grid), is in grid.py.

Only summary.json files are read (never checkpoints), so this module needs no torch. The published
numbers come from paper_results.yaml. Statistics over seeds: mean and *sample* standard deviation
(ddof=1); with one seed the std is None (shown as "—"). Differences are ours minus the paper's, in
percentage points.
"""

from __future__ import annotations

import functools
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..core.errors import UsageError

PAPER_FILE = Path(__file__).with_name("paper_results.yaml")
# One cell of the table pools the seeds of runs that agree on all of these (img_size too: a 32 px
# smoke test must not be averaged with a 224 px run).
CELL_KEY = ("dataset", "model", "width", "weight_tag", "pretrained", "recipe", "img_size")


# ------------------------------------------------------------------------------------------------
# Published numbers and names
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def load_paper() -> dict:
    return yaml.safe_load(PAPER_FILE.read_text())


def parse_model_spec(spec: str) -> tuple[str, float | None]:
    """'rexnet' -> ('rexnet', None); 'rexnet@1.3' -> ('rexnet', 1.3)."""
    model, _, width = spec.strip().partition("@")
    if not model:
        raise UsageError(f"empty model name in {spec!r}; use e.g. rexnet, rexnet@1.3, resnet50")
    try:
        return model, float(width) if width else None
    except ValueError:
        raise UsageError(f"bad width in {spec!r}; use name@width, e.g. rexnet@1.3") from None


def reference_backbone(model: str, width: float) -> dict | None:
    """Published facts of a built-in backbone: label, timm name, default weight tag, params/GMACs
    of the ImageNet model at 224 px (weights registry), plus the paper's own header figures."""
    from ..models.registry import published

    w = published(model, width)
    paper = load_paper()["backbones"].get(f"{model}@{width:.1f}", {})
    if w is None and not paper:
        return None
    facts = {"label": f"ReXNet x{width:.1f}" if model == "rexnet" else model}
    if w is not None:
        facts.update(timm_name=w.timm_name, weight_tag=w.tag, params_m=w.params_m, gmacs=w.gmacs)
    return {**facts, **paper}


def short_tag(tag: str | None) -> str | None:
    """'rexnet_100.nav_in1k' -> 'nav_in1k' (summaries record the full timm tag)."""
    return tag.rsplit(".", 1)[-1] if tag else tag


def backbone_label(model: str, width: float, weight_tag: str | None, pretrained: bool) -> str:
    ref = reference_backbone(model, width)
    name = ref["label"] if ref else (f"{model} x{width:g}" if abs(width - 1.0) > 1e-9 or model == "rexnet" else model)
    return f"{name} ({short_tag(weight_tag) if pretrained and weight_tag else 'pretrained' if pretrained else 'random init'})"


def reference_value(ref: dict, model: str, width: float, pretrained: bool, dataset: str) -> float | None:
    """A published number applies to ImageNet-pretrained runs of the same backbone and width."""
    if not pretrained:
        return None
    return (ref["results"].get(f"{model}@{width:.1f}") or {}).get(dataset)


def primary_reference() -> dict:
    return next(r for r in load_paper()["references"] if r.get("primary"))


# ------------------------------------------------------------------------------------------------
# Collect
# ------------------------------------------------------------------------------------------------
def dataset_folder(dataset: str) -> str:
    """The runs/<dataset>/ folder name: registry name for a dataset or alias, base name for a folder."""
    from ..data import dataset_label

    return dataset_label(dataset)


@dataclass
class Incomplete:
    """A run folder that does not count as a result, and why."""

    dataset: str
    name: str
    status: str          # interrupted | failed | running | in progress (no summary yet: running, or killed) | unreadable
    path: str
    detail: str = ""


def collect(runs_dir: Path) -> tuple[list[dict], list[Incomplete]]:
    """Complete summaries (each with '_path') and the run folders that are not complete."""
    complete, others = [], []
    for run in sorted(p for p in Path(runs_dir).glob("*/*") if p.is_dir()):
        file = run / "summary.json"
        inc = functools.partial(Incomplete, run.parent.name, run.name, path=str(run))
        if not file.exists():
            if (run / "config.yaml").exists():
                others.append(inc("in progress (no summary yet)"))
            continue
        try:
            s = json.loads(file.read_text())
            if not isinstance(s, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as e:
            others.append(inc("unreadable", detail=f"{type(e).__name__}"))
            continue
        status = s.get("status", "unknown")
        if status != "complete":
            others.append(inc(status, detail=f"{s.get('model')} x{s.get('width')} seed {s.get('seed')}"))
        elif not isinstance(s.get("headline"), (int, float)) or not s.get("model"):
            others.append(inc("unreadable", detail="complete but no headline metric"))
        else:
            s["_path"] = str(run)
            s.setdefault("dataset", run.parent.name)
            complete.append(s)
    return complete, others


def load_bench(paths: list[Path]) -> list[dict]:
    """`rextransfer bench` result files (unreadable ones skipped: they are only a fallback)."""
    found = []
    for p in paths:
        for f in sorted(Path(p).glob("bench-*.json")) if Path(p).is_dir() else [Path(p)]:
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and isinstance(data.get("results"), list):
                found.append({**data, "_path": str(f)})
    return sorted(found, key=lambda d: d.get("created_at", ""), reverse=True)  # newest first


def bench_lookup(bench: list[dict], model: str, width: float, device: str | None) -> dict | None:
    """Bench numbers for a backbone: same device preferred, else the newest file that has it."""
    hits = [(b, r) for b in bench for r in b["results"]
            if r.get("model") == model and abs(float(r.get("width", 1.0)) - width) < 1e-9]
    if not hits:
        return None
    same = [h for h in hits if h[0].get("device") == device]
    b, r = (same or hits)[0]
    return {"train_img_per_s": r.get("train_img_per_s"), "eval_img_per_s": r.get("eval_img_per_s"),
            "device": b.get("device"), "img_size": b.get("img_size"), "batch_size": b.get("batch_size")}


# ------------------------------------------------------------------------------------------------
# Aggregate
# ------------------------------------------------------------------------------------------------
def _mean(values: list) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float))]
    return statistics.fmean(vals) if vals else None


@dataclass
class Cell:
    """One (backbone, dataset) entry: the seeds of one setting pooled. n == 0 means missing."""

    dataset: str
    runs: list[dict]
    metric: str | None = None
    n: int = 0
    mean: float | None = None
    std: float | None = None
    seeds: list[int] = field(default_factory=list)
    recipe: str | None = None
    img_size: int | None = None
    paper: float | None = None
    diff: float | None = None
    params_m: float | None = None
    gmacs: float | None = None
    train_img_per_s: float | None = None
    eval_img_per_s: float | None = None
    throughput_source: str | None = None   # run | bench | None
    device: str | None = None
    wall_time_s: float | None = None


@dataclass
class Row:
    model: str
    width: float
    weight_tag: str | None
    pretrained: bool
    label: str
    cells: dict[str, Cell]
    params_m: float | None = None     # the ImageNet model at 224 px where known (paper_results.yaml)
    gmacs: float | None = None
    train_img_per_s: float | None = None
    eval_img_per_s: float | None = None
    throughput_source: str | None = None
    device: str | None = None


@dataclass
class Comparison:
    datasets: list[str]
    rows: list[Row]
    incomplete: list[Incomplete]
    bench: list[dict]
    runs_dir: str

    def dataset_title(self, ds: str) -> str:
        from ..data import lookup

        info = lookup(ds)
        return info.title if info else ds

    def dataset_metric(self, ds: str) -> str:
        """The runs' headline metric; for a dataset without runs, the registry's."""
        from ..data import lookup

        metrics = {c.metric for r in self.rows for c in [r.cells[ds]] if c.metric}
        info = lookup(ds)
        return next(iter(metrics)) if len(metrics) == 1 else info.metric if info else "top1"


def _cell(dataset: str, runs: list[dict], row: Row, bench: list[dict]) -> Cell:
    ref = reference_backbone(row.model, row.width) or {}
    c = Cell(dataset=dataset, runs=runs, n=len(runs))
    c.paper = reference_value(primary_reference(), row.model, row.width, row.pretrained, dataset)
    if runs:
        values = [float(s["headline"]) for s in runs]
        c.metric = runs[0].get("headline_metric")
        c.mean = statistics.fmean(values)
        c.std = statistics.stdev(values) if len(values) > 1 else None
        c.seeds = sorted(s["seed"] for s in runs if isinstance(s.get("seed"), int))
        c.recipe, c.img_size = runs[0].get("recipe"), runs[0].get("img_size")
        c.diff = c.mean - c.paper if c.paper is not None else None
        c.params_m, c.gmacs = _mean([s.get("params_m") for s in runs]), _mean([s.get("gmacs") for s in runs])
        c.train_img_per_s = _mean([s.get("train_img_per_s") for s in runs])
        c.eval_img_per_s = _mean([s.get("eval_img_per_s") for s in runs])
        c.device = ", ".join(sorted({str(s.get("device")) for s in runs if s.get("device")})) or None
        c.wall_time_s = _mean([s.get("wall_time_s") for s in runs])
        if c.train_img_per_s is not None or c.eval_img_per_s is not None:
            c.throughput_source = "run"
    if c.params_m is None:  # model facts, not results: fill from the reference table
        c.params_m, c.gmacs = ref.get("params_m"), ref.get("gmacs")
    if c.throughput_source is None:
        b = bench_lookup(bench, row.model, row.width, c.device)
        if b:
            c.train_img_per_s, c.eval_img_per_s, c.throughput_source = b["train_img_per_s"], b["eval_img_per_s"], "bench"
            c.device = c.device or b["device"]
    return c


def build(runs_dir: Path, *, datasets: list[str] | None = None, models: list[str] | None = None,
          bench_paths: list[Path] | None = None) -> Comparison:
    """Read the runs under runs_dir and lay them out as rows x datasets."""
    paper = load_paper()
    complete, incomplete = collect(runs_dir)
    bench = load_bench(bench_paths if bench_paths is not None else [Path(runs_dir) / "bench"])
    wanted = [parse_model_spec(m) for m in models] if models else None

    def model_ok(model: str, width: float) -> bool:
        return wanted is None or any(m == model and (w is None or abs(w - width) < 1e-9) for m, w in wanted)

    ds_filter = [dataset_folder(d) for d in datasets] if datasets else None
    for s in complete:
        s["width"], s["pretrained"] = float(s.get("width") or 1.0), bool(s.get("pretrained", True))
    complete = [s for s in complete if model_ok(s["model"], s["width"])
                and (ds_filter is None or s["dataset"] in ds_filter)]
    if ds_filter is not None:
        shown = list(dict.fromkeys(ds_filter))
        incomplete = [i for i in incomplete if i.dataset in shown]
    else:
        shown = list(paper["grid"]["datasets"]) + sorted({s["dataset"] for s in complete} - set(paper["grid"]["datasets"]))

    # Group seeds into cells, cells into backbone rows.
    cells: dict[tuple, list[dict]] = {}
    for s in complete:
        cells.setdefault(tuple(s.get(k) for k in CELL_KEY), []).append(s)
    backbones: dict[tuple, dict[str, list[list[dict]]]] = {}
    for key, runs in cells.items():
        backbones.setdefault(key[1:5], {}).setdefault(key[0], []).append(runs)

    # The paper's backbones always get a row, so its numbers show even before anything ran.
    for spec in paper["grid"]["models"]:
        model, width = parse_model_spec(spec)
        width = 1.0 if width is None else width
        if model_ok(model, width) and not any(k[0] == model and k[1] == width and k[3] for k in backbones):
            backbones[(model, width, reference_backbone(model, width)["weight_tag"], True)] = {}

    rows = []
    for (model, width, tag, pretrained), by_ds in backbones.items():
        # Several settings (recipe or image size) for one backbone on one dataset: one row each.
        variants = sorted({(r[0].get("recipe") or "", r[0].get("img_size") or 0) for lst in by_ds.values() for r in lst})
        split = any(len(lst) > 1 for lst in by_ds.values())
        for variant in (variants if split else [None]):
            label = backbone_label(model, width, tag, pretrained)
            if variant is not None:
                label += f" · {variant[0]} @{variant[1]}px"
            row = Row(model, width, tag, pretrained, label, {})
            for ds in shown:
                runs = [r for r in by_ds.get(ds, []) if variant is None
                        or ((r[0].get("recipe") or ""), r[0].get("img_size") or 0) == variant]
                row.cells[ds] = _cell(ds, runs[0] if runs else [], row, bench)
            _row_costs(row, bench)
            rows.append(row)

    order = [parse_model_spec(m)[0] for m in paper["grid"]["models"]]
    rows.sort(key=lambda r: (order.index(r.model) if r.model in order else len(order), r.model, r.width,
                             not r.pretrained, r.weight_tag or "", r.label))
    return Comparison(shown, rows, incomplete, bench, str(runs_dir))


def _row_costs(row: Row, bench: list[dict]) -> None:
    ref = reference_backbone(row.model, row.width)
    runs = [s for c in row.cells.values() for s in c.runs]
    if ref:
        row.params_m, row.gmacs = ref["params_m"], ref["gmacs"]
    else:
        row.params_m = _mean([s.get("params_m") for s in runs])
        row.gmacs = _mean([s.get("gmacs") for s in runs])
    train = [s["train_img_per_s"] for s in runs if isinstance(s.get("train_img_per_s"), (int, float))]
    evals = [s["eval_img_per_s"] for s in runs if isinstance(s.get("eval_img_per_s"), (int, float))]
    if train or evals:
        row.train_img_per_s = statistics.median(train) if train else None
        row.eval_img_per_s = statistics.median(evals) if evals else None
        row.throughput_source = "run"
        row.device = ", ".join(sorted({str(s.get("device")) for s in runs if s.get("device")})) or None
    else:
        b = bench_lookup(bench, row.model, row.width, None)
        if b:
            row.train_img_per_s, row.eval_img_per_s = b["train_img_per_s"], b["eval_img_per_s"]
            row.throughput_source, row.device = "bench", b["device"]
