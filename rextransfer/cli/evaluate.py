"""`rextransfer evaluate`: a run's checkpoint on one of its splits, as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command()(evaluate)


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    split: Annotated[str, typer.Option(help="Which split to evaluate: the run's eval split, test, val or train.")] = "eval",
    checkpoint: Annotated[str, typer.Option(help="best | last.")] = "best",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
) -> None:
    """Evaluate a run's checkpoint on a split."""
    from ..train.inference import evaluate_run

    result = evaluate_run(run_dir, split=split, checkpoint=checkpoint, device=device)
    if json_out:
        print(json.dumps(result))
        return
    from ..core.console import out
    from .report import metrics_table

    table = metrics_table(f"{run_dir} · {result['split']} ({result['images']} images) · {checkpoint}",
                          {"value": result}, result["headline_metric"])
    out.print(table)
