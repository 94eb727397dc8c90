"""`rextransfer compare --run`: plan and train the missing cells of a grid (datasets x models x
seeds), one after another. Cell folders are named deterministically (cell_name), so a second run
skips finished cells and resumes interrupted ones. The table itself is built in compare.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .table import dataset_folder, load_paper, parse_model_spec
from ..core.errors import Interrupted, RunError, UserError


# ------------------------------------------------------------------------------------------------
# compare --run: train the missing cells of a grid, one after another
# ------------------------------------------------------------------------------------------------
@dataclass
class GridCell:
    dataset: str
    model: str
    width: float
    seed: int
    recipe: str | None
    name: str
    run_dir: Path
    state: str               # done | resume | new


def cell_name(model: str, width: float, recipe: str | None, seed: int, sets: list[str], pretrained: bool | None) -> str:
    """Deterministic, so a second `compare --run` finds (and skips or resumes) the same folders.

    Extra settings get a short hash suffix: a tiny smoke-test grid must not be mistaken for the
    full-size run of the same backbone.
    """
    base = f"{model.replace('/', '_').replace(':', '_')}-w{width}-{recipe or 'default'}-s{seed}"
    extra = sorted(sets) + (["pretrained=false"] if pretrained is False else [])
    return base + (f"-{hashlib.sha1(chr(10).join(extra).encode()).hexdigest()[:6]}" if extra else "")


def plan_grid(runs_dir: Path, *, datasets: list[str] | None = None, models: list[str] | None = None,
              seeds: list[int] = (0,), recipe: str | None = None, sets: list[str] = (),
              pretrained: bool | None = None) -> list[GridCell]:
    from ..config.settings import Config, apply, parse_set
    from ..train.rundir import RunDir

    apply(Config(), parse_set(list(sets)), "--set")  # a bad --set fails here, not once per cell
    grid = load_paper()["grid"]
    plan = []
    for ds in datasets or grid["datasets"]:
        folder = Path(runs_dir) / dataset_folder(ds)
        for spec in models or grid["models"]:
            model, width = parse_model_spec(spec)
            width = 1.0 if width is None else width
            for seed in seeds:
                name = cell_name(model, width, recipe, seed, list(sets), pretrained)
                status = RunDir(folder / name).status()
                state = "done" if status == "complete" else "new" if status == "new" else "resume"
                plan.append(GridCell(ds, model, width, seed, recipe, name, folder / name, state))
    return plan


def run_grid(plan: list[GridCell], *, runs_dir: Path, sets: list[str] = (), pretrained: bool | None = None,
             on_start: Callable[[int, int, GridCell], None] = lambda i, n, c: None) -> list[tuple[GridCell, UserError]]:
    """Run every cell not done; a cell that fails with a UserError is recorded and the grid goes on."""
    from ..train.run import run_finetune

    todo = [c for c in plan if c.state != "done"]
    failures = []
    for i, c in enumerate(todo, 1):
        on_start(i, len(todo), c)
        flags = {"model": c.model, "width": c.width, "seed": c.seed}
        if pretrained is not None:
            flags["pretrained"] = pretrained
        try:  # runs print nothing on stdout: it is kept for the comparison (`compare --run -f json | jq`)
            run_finetune(c.dataset, recipe=c.recipe, flags=flags, sets=list(sets), name=c.name, runs_dir=str(runs_dir))
        except Interrupted:
            raise  # Ctrl-C stops the whole grid (the run saved a checkpoint; rerunning resumes it)
        except UserError as e:
            failures.append((c, e))
    return failures


def grid_failure(failures: list[tuple[GridCell, UserError]], total: int) -> RunError:
    names = ", ".join(f"{c.dataset}/{c.name}" for c, _ in failures)
    return RunError(f"{len(failures)} of {total} grid cells failed ({names}); fix the errors above and rerun `compare --run` to retry them")
