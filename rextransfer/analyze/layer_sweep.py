"""`analyze layers --sweep`: the settings the paper does not state, over a small grid, and under
which of them each observation (1, 2a, 2b, 3) holds.

Every grid point is one measurement (fewer networks, the paper's three read-off ratios); each
measurement is judged under every rank rule, so a "setting" is a grid point plus a rank rule. BN in
eval mode with fresh statistics is a constant scale (1/sqrt(1 + eps)), so its order relative to the
activation makes no difference: the grid has three BN variants, not four.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from typing import Callable

from .layers import LayerSettings, layer_rank_sweep, rank_table
from .observations import CLAIMS, verdicts

SWEEP_RATIOS = [0.1, 0.5, 1.0]  # the ratios read off the paper's figure
SWEEP_NETWORKS = 100
# knob -> levels. "bn" is (bn_order, bn_mode).
SWEEP_GRID: dict[str, list] = {
    "input": ["normal", "uniform"],
    "input_centred": [True, False],
    "input_scale": [0.1, 1.0, 10.0],
    "init": ["torch", "normal"],
    "bn": [("before", "batch"), ("after", "batch"), ("before", "eval")],
}


def grid_points(grid: dict[str, list] | None = None) -> list[dict]:
    grid = grid or SWEEP_GRID
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def _apply(base: LayerSettings, point: dict) -> LayerSettings:
    knobs = {k: v for k, v in point.items() if k != "bn"}
    if "bn" in point:
        knobs["bn_order"], knobs["bn_mode"] = point["bn"]
    return replace(base, **knobs)


def describe(point: dict) -> str:
    """A grid point (and rule) in a few words: 'normal centred x1, init torch, BN before/batch, rule torch'."""
    parts = []
    if "input" in point:
        parts.append(f"{point['input']}{' centred' if point.get('input_centred') else ' uncentred' if 'input_centred' in point else ''}"
                     f"{' x' + format(point['input_scale'], 'g') if 'input_scale' in point else ''}")
    if "init" in point:
        parts.append(f"init {point['init']}")
    if "bn" in point:
        parts.append(f"BN {point['bn'][0]}/{point['bn'][1]}")
    if "rank_rule" in point:
        parts.append(f"rule {point['rank_rule']}")
    return ", ".join(parts)


def run_sweep(base: LayerSettings, networks: int = SWEEP_NETWORKS, grid: dict[str, list] | None = None,
              progress: Callable[[str], None] | None = None) -> list[dict]:
    """One result per (grid point, rank rule): {point, status {obs: status}, evidence {obs: text}}."""
    base = replace(base, networks=networks, ratios=list(SWEEP_RATIOS)).validate()
    points, results = grid_points(grid), []
    for i, point in enumerate(points, 1):
        start = time.perf_counter()
        settings = _apply(base, point).validate()
        rows = layer_rank_sweep(settings)
        for rule in settings.rules:
            vs = verdicts(rank_table(rows, rule))
            results.append({"point": {**point, "rank_rule": rule},
                            "status": {v["id"]: v["status"] for v in vs},
                            "held": {v["id"]: [v["held"], v["cases"]] for v in vs},
                            "evidence": {v["id"]: v["evidence"] for v in vs}})
        if progress:
            progress(f"sweep {i}/{len(points)} ({describe(point)}): {time.perf_counter() - start:.1f} s")
    return results


def summarise(results: list[dict]) -> list[dict]:
    """Per observation: how many settings it holds (and partly holds) in, the knob values shared by
    every setting where it holds, the holds-count per knob value, and the holding settings."""
    summary = []
    knobs = list(results[0]["point"]) if results else []
    for oid in CLAIMS:
        holding = [r["point"] for r in results if r["status"][oid] == "holds"]
        partly = sum(r["status"][oid] == "partly" for r in results)
        by_value = {k: {_key(v): sum(_key(p[k]) == _key(v) for p in holding) for v in _levels(results, k)} for k in knobs}
        shared = {k: _key(holding[0][k]) for k in knobs if holding and all(_key(p[k]) == _key(holding[0][k]) for p in holding)}
        scored = [r for r in results if r.get("held", {}).get(oid, [0, 0])[1]]
        best = max(scored, key=lambda r: r["held"][oid][0] / r["held"][oid][1], default=None)
        closest = (f"{describe(best['point'])} ({best['held'][oid][0]} of {best['held'][oid][1]} cases)"
                   if best and not holding else None)
        summary.append({"id": oid, "claim": CLAIMS[oid], "settings": len(results), "holds": len(holding), "partly": partly,
                        "shared_by_all_holding": shared, "holds_by_value": by_value,
                        "holding": [describe(p) for p in holding], "closest": closest})
    return summary


def _key(v) -> str:
    return "/".join(v) if isinstance(v, tuple) else str(v)


def _levels(results: list[dict], knob: str) -> list:
    return list(dict.fromkeys(_key(r["point"][knob]) for r in results))


def sweep_csv(results: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    knobs = list(results[0]["point"]) if results else []
    w.writerow(knobs + [f"obs{o}" for o in CLAIMS] + [f"evidence{o}" for o in CLAIMS])
    for r in results:
        w.writerow([_key(r["point"][k]) for k in knobs] + [r["status"][o] for o in CLAIMS] + [r["evidence"][o] for o in CLAIMS])
    return buf.getvalue()


def write_sweep_results(out_dir, base: LayerSettings, networks: int, results: list[dict], summary: list[dict],
                        wall_s: float, grid: dict[str, list] | None = None) -> dict:
    from dataclasses import asdict
    from pathlib import Path

    from ..core.files import write_json, write_text
    from .layers import environment

    out = Path(out_dir)
    paths = {"sweep.csv": out / "sweep.csv", "sweep.json": out / "sweep.json"}
    write_text(paths["sweep.csv"], sweep_csv(results))
    write_json(paths["sweep.json"], {
        "analysis": "layers --sweep", "grid": {k: [_key(v) for v in vs] for k, vs in (grid or SWEEP_GRID).items()},
        "ratios": SWEEP_RATIOS, "networks": networks, "base": asdict(base), "summary": summary, "results": results,
        "wall_time_s": round(wall_s, 2), **environment(), "threads": 1})
    return paths
