"""`rextransfer lr-find`: sweep the learning rate on a dataset, suggest one, draw lr_find.png.

Its data, model and batch options are finetune's own: the parameters below are taken from
`finetune`'s signature (same names, help, defaults and panels), so the two never drift apart.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..train.lr_find import END_LR, START_LR, SWEEP_STEPS  # light: the sweep itself imports torch
from . import finetune as _finetune

# finetune's options that shape the sweep (its length, lr, run name and resume do not apply).
SHARED = ("dataset", "data_root", "source", "val_split", "val_fraction", "img_size", "cache", "workers", "bad_files",
          "model", "width", "pretrained", "weights", "recipe", "config", "batch_size", "optimizer", "seed", "set_",
          "runs_dir", "device")
SWEEP = "Sweep"


def register(app: typer.Typer) -> None:
    app.command("lr-find", no_args_is_help=True)(lr_find)


def _lr_find(
    start_lr: Annotated[float, typer.Option(help="First learning rate of the sweep.", rich_help_panel=SWEEP)] = START_LR,
    end_lr: Annotated[float, typer.Option(help="Last learning rate of the sweep.", rich_help_panel=SWEEP)] = END_LR,
    sweep_steps: Annotated[int, typer.Option(help="Optimizer steps of the sweep (it stops early once the loss diverges).", rich_help_panel=SWEEP)] = SWEEP_STEPS,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the plot.", show_default="<runs_dir>/<dataset>/lr_find.png", rich_help_panel=SWEEP)] = None,
    **options,
) -> None:
    """Sweep the learning rate (fastai's lr_find) and suggest one; the weights are left untouched."""
    from ..core.console import out as stdout
    from ..data import dataset_label
    from ..train.lr_find import plot_sweep, run_lr_find

    flags = _finetune.settings_flags(options)
    sweep, cfg, splits = run_lr_find(options["dataset"], recipe=options.get("recipe"), flags=flags,
                                     sets=options.get("set_") or [], config_file=options.get("config"),
                                     start=start_lr, end=end_lr, steps=sweep_steps)
    path = out or Path(cfg.runs_dir) / dataset_label(cfg.dataset) / "lr_find.png"
    plot_sweep(path, sweep, title=f"{dataset_label(cfg.dataset)} · {cfg.model} x{cfg.width:g} · batch {cfg.batch_size}")
    stopped = " (stopped early: the loss diverged)" if sweep.stopped_early else ""
    stdout.print(f"suggested lr: {sweep.suggestion:.3g} (valley rule; swept {sweep.start:g} to {sweep.end:g} "
                 f"in {len(sweep.lrs)} steps{stopped})", markup=False)
    stdout.print(f"plot: {path}", markup=False)
    stdout.print(f"use it: rextransfer finetune {options['dataset']} --lr {sweep.suggestion:.3g} "
                 f"(or --lr auto to sweep at the start of the run)", markup=False)


def _signature():
    """_lr_find's own options followed by finetune's SHARED ones, as one flat signature."""
    own = [p for p in inspect.signature(_lr_find, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
    theirs = inspect.signature(_finetune.finetune, eval_str=True).parameters
    shared = [theirs[name] for name in SHARED]
    dataset = shared[0].replace(annotation=Annotated[str, typer.Argument(help="A dataset name or an image folder.", show_default=False)],
                                default=inspect.Parameter.empty)
    params = [dataset, *own, *shared[1:]]
    return inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params])


def lr_find(**kwargs) -> None:
    _lr_find(**kwargs)


lr_find.__signature__ = _signature()
lr_find.__annotations__ = {p.name: p.annotation for p in lr_find.__signature__.parameters.values()}
lr_find.__doc__ = _lr_find.__doc__
