"""`rextransfer finetune`: parse the options, run `train.run.run_finetune`, report the result.

Every option defaults to "unset", so that the recipe decides; the help shows what an unset option
becomes (the recipe's value, else the built-in default from config/settings.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config.settings import Config

DATA, MODEL, TRAIN, RUN = "Data", "Model", "Training", "Run"
_D = Config()


def _recipe_or(value: object) -> str:
    """What --help shows as the default of an option the recipe fills."""
    return f"recipe, else {value}"


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(finetune)


def finetune(
    dataset: Annotated[Optional[str], typer.Argument(help="A dataset name (food101, cars, aircraft, flowers102, demo) or an image folder; omit with --resume.", show_default=False)] = None,
    # Data
    data_root: Annotated[Optional[Path], typer.Option(help="Where built-in datasets live.", show_default="$REXTRANSFER_DATA, else ~/.cache/rextransfer/data", rich_help_panel=DATA)] = None,
    source: Annotated[Optional[str], typer.Option(help="original | hub | auto.", show_default=_recipe_or(_D.source), rich_help_panel=DATA)] = None,
    val_split: Annotated[Optional[float], typer.Option(help="Hold out this stratified share of train for model selection (0 = evaluate on test).", show_default=_recipe_or(_D.val_split), rich_help_panel=DATA)] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Folder datasets without val/ or test/: share held out for evaluation.", show_default=_recipe_or(_D.val_fraction), rich_help_panel=DATA)] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Train/eval crop size in pixels.", show_default=_recipe_or(_D.img_size), rich_help_panel=DATA)] = None,
    cache: Annotated[Optional[bool], typer.Option("--cache/--no-cache", help="Decode-once pixel cache with augmentation on the device.", show_default=_recipe_or("cache"), rich_help_panel=DATA)] = None,
    workers: Annotated[Optional[int], typer.Option(help="Data loader workers (-1 = auto).", show_default=_recipe_or(_D.workers), rich_help_panel=DATA)] = None,
    bad_files: Annotated[Optional[str], typer.Option(help="skip | fail: what to do with unreadable images.", show_default=_recipe_or(_D.bad_files), rich_help_panel=DATA)] = None,
    # Model
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="rexnet, resnet50, efficientnet_b0 or any timm model name.", show_default=_recipe_or(_D.model), rich_help_panel=MODEL)] = None,
    width: Annotated[Optional[float], typer.Option("--width", "-w", help="ReXNet width multiplier (1.0, 1.3, 1.5, 2.0, 3.0 have weights).", show_default=_recipe_or(_D.width), rich_help_panel=MODEL)] = None,
    pretrained: Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained", help="Start from ImageNet weights.", show_default=_recipe_or("pretrained"), rich_help_panel=MODEL)] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local weights file (safetensors or state dict) instead of a download.", show_default="the pinned timm weights", rich_help_panel=MODEL)] = None,
    # Training
    recipe: Annotated[Optional[str], typer.Option("--recipe", "-r", help="Recipe name (see `rextransfer recipes`) or a recipe .yaml file.", show_default="the dataset's own, else folder", rich_help_panel=TRAIN)] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="A YAML file of settings (above the recipe, below flags).", show_default="none", rich_help_panel=TRAIN)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training length in epochs.", show_default=_recipe_or(_D.epochs), rich_help_panel=TRAIN)] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training length in optimizer steps (overrides epochs).", show_default=_recipe_or("epochs"), rich_help_panel=TRAIN)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Global batch per optimizer step.", show_default=_recipe_or(_D.batch_size), rich_help_panel=TRAIN)] = None,
    lr: Annotated[Optional[str], typer.Option(help="Peak learning rate at the batch size, or auto: an lr-find sweep picks it first.", show_default=_recipe_or(_D.lr), rich_help_panel=TRAIN)] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="sgd | adamw.", show_default=_recipe_or(_D.optimizer), rich_help_panel=TRAIN)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for data order, augmentation and head init.", show_default=_recipe_or(_D.seed), rich_help_panel=TRAIN)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Any setting as key=value (repeatable); wins over everything.", show_default="none", rich_help_panel=TRAIN)] = None,
    # Run
    name: Annotated[Optional[str], typer.Option(help="Run folder name (rerunning the same name resumes).", show_default="<model>-w<width>-<timestamp>", rich_help_panel=RUN)] = None,
    runs_dir: Annotated[Optional[Path], typer.Option(help="Parent folder of runs.", show_default=_recipe_or(_D.runs_dir), rich_help_panel=RUN)] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Resume this run folder exactly where it stopped.", show_default="none", rich_help_panel=RUN)] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N.", show_default=_recipe_or(_D.device), rich_help_panel=RUN)] = None,
    log: Annotated[Optional[str], typer.Option("--log", help="Experiment loggers, a comma list of tensorboard, mlflow, wandb; or none.", show_default="tensorboard if installed, else none", rich_help_panel=RUN)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and data/model summary; do not train.", rich_help_panel=RUN)] = False,
) -> None:
    """Fine-tune a backbone on a dataset and write a run folder."""
    flags = settings_flags(locals())
    from ..train.run import run_finetune

    result = run_finetune(dataset, recipe=recipe, config_file=config, flags=flags, sets=set_ or [], name=name,
                          resume=resume, dry_run=dry_run, complete_is_error=True)
    if result.dry_run is not None:
        print_dry_run(result.dry_run)
    elif result.summary is not None:
        print_summary(result.summary, result.path)


def settings_flags(options: dict) -> dict:
    """The settings named by the options given (finetune's, or the subset lr-find shares)."""
    paths = {"data_root": "data_root", "weights": "weights_file", "runs_dir": "runs_dir"}
    renamed = {"log": "loggers"}
    plain = ("source", "val_split", "val_fraction", "img_size", "cache", "workers", "bad_files", "model", "width",
             "pretrained", "epochs", "steps", "batch_size", "lr", "optimizer", "seed", "device")
    flags = {key: options.get(key) for key in plain if key in options}
    flags.update({setting: str(options[key]) if options.get(key) else None for key, setting in paths.items() if key in options})
    flags.update({setting: options[key] for key, setting in renamed.items() if key in options})
    lr = flags.get("lr")
    if isinstance(lr, str) and lr.strip().lower() != "auto":
        try:
            flags["lr"] = float(lr)
        except ValueError:
            from ..core.errors import UsageError

            raise UsageError(f"--lr must be a number or auto; got {lr!r}") from None
    return flags


def print_summary(summary: dict, run_path: Path) -> None:
    """The final/best metrics table of a finished run."""
    from ..core.console import out
    from .report import metrics_table

    table = metrics_table(f"{summary['dataset']} · {summary['model']} x{summary['width']:g} · {summary['eval_split']} split",
                          {"final": summary["final"], "best": summary["best"]}, summary["headline_metric"])
    out.print(table)
    pairs = summary.get("most_confused") or []
    if pairs:
        out.print("most confused (true → predicted, images): " + "; ".join(
            f"{p['true']} → {p['pred']} {p['count']}" for p in pairs[:5]), markup=False)
    out.print(f"run folder: {run_path}")


def print_dry_run(plan) -> None:
    """What `--dry-run` shows: the resolved config, then the data, model and schedule."""
    from ..config.settings import to_yaml
    from ..core.console import out

    cfg, splits, backbone, costs = plan.cfg, plan.splits, plan.backbone, plan.costs
    out.print("# resolved config")
    out.print(to_yaml(cfg), markup=False)
    out.print("# data and model")
    counts = splits.train.class_counts()
    if backbone.weights_file:  # the file's own tensors: name the file, not the tag its preprocessing comes from
        layout = "imported from foreign key names" if backbone.weights_layout == "imported" else "timm key names"
        weights = f"file {backbone.weights_file} (sha256 {backbone.weights_sha256}; {layout})"
    else:
        weights = backbone.weight_tag or "none (random init)"
    dc = backbone.data_config
    out.print(
        f"dataset: {cfg.dataset} (source {splits.source}); classes {len(splits.classes)}; train {len(splits.train)} "
        f"(per class {min(counts)}-{max(counts)}); eval {len(splits.eval)} on {splits.eval_split}; headline {splits.metric}\n"
        f"model: {backbone.timm_name} weights {weights}; "
        f"params {costs['params_m']:.2f} M; {costs['gmacs']:.3f} GMACs at {cfg.img_size}px\n"
        f"preprocessing: mean {tuple(round(v, 4) for v in dc['mean'])} std {tuple(round(v, 4) for v in dc['std'])} "
        f"{dc['interpolation']} crop {cfg.crop_pct or dc['crop_pct']:g} ({backbone.preprocessing_from})\n"
        f"schedule: {plan.steps_per_epoch} steps/epoch; {plan.total_steps} steps total\n"
        f"run folder: {plan.run_path}", markup=False)
