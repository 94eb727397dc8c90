"""The `rextransfer` command line. It parses and reports; the work happens in library modules.

Heavy libraries (torch, timm, torchvision, datasets) are imported inside commands, never at module
level here or in `rextransfer/commands/`, so `rextransfer --help` stays instant.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors its own click; older releases use click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

from . import __version__
from .errors import UserError

def report(e: UserError) -> None:
    """The one-line form of every user error: `error: <message>` on stderr."""
    from rich.markup import escape

    from .console import err

    err.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False)


class _Group(TyperGroup):
    """Turns a UserError anywhere below into one line on stderr and its documented exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            if DEBUG["on"]:
                raise
            report(e)
            ctx.exit(e.exit_code)


app = typer.Typer(
    cls=_Group,
    name="rextransfer",
    help="Fine-tune ImageNet-pretrained ReXNet on fine-grained images and compare it with ResNet50 "
    "and EfficientNet-B0, as in the ReXNet paper (CVPR 2021).",
    rich_markup_mode="rich",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

DEBUG = {"on": False}

# Option groups for --help (rich panels).
DATA, MODEL, TRAIN, RUN = "Data", "Model", "Training", "Run"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rextransfer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    DEBUG["on"] = debug or os.environ.get("REXTRANSFER_DEBUG") == "1"


# --------------------------------------------------------------------------------------------
# finetune
# --------------------------------------------------------------------------------------------
@app.command(no_args_is_help=True)
def finetune(
    dataset: Annotated[Optional[str], typer.Argument(help="A dataset name (food101, cars, aircraft, flowers102, demo) or an image folder; omit with --resume.")] = None,
    # Data
    data_root: Annotated[Optional[Path], typer.Option(help="Where built-in datasets live \\[env REXTRANSFER_DATA].", rich_help_panel=DATA)] = None,
    source: Annotated[Optional[str], typer.Option(help="original | hub | auto.", rich_help_panel=DATA)] = None,
    val_split: Annotated[Optional[float], typer.Option(help="Hold out this stratified share of train for model selection (0 = evaluate on test).", rich_help_panel=DATA)] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Folder datasets without val/ or test/: share held out for evaluation.", rich_help_panel=DATA)] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Train/eval crop size in pixels.", rich_help_panel=DATA)] = None,
    cache: Annotated[Optional[bool], typer.Option("--cache/--no-cache", help="Decode-once pixel cache with augmentation on the device.", rich_help_panel=DATA)] = None,
    workers: Annotated[Optional[int], typer.Option(help="Data loader workers (-1 = auto).", rich_help_panel=DATA)] = None,
    bad_files: Annotated[Optional[str], typer.Option(help="skip | fail: what to do with unreadable images.", rich_help_panel=DATA)] = None,
    # Model
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="rexnet, resnet50, efficientnet_b0 or any timm model name.", rich_help_panel=MODEL)] = None,
    width: Annotated[Optional[float], typer.Option("--width", "-w", help="ReXNet width multiplier (1.0, 1.3, 1.5, 2.0, 3.0 have weights).", rich_help_panel=MODEL)] = None,
    pretrained: Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained", help="Start from ImageNet weights.", rich_help_panel=MODEL)] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local weights file (safetensors or state dict) instead of a download.", rich_help_panel=MODEL)] = None,
    # Training
    recipe: Annotated[Optional[str], typer.Option("--recipe", "-r", help="Recipe name (see `rextransfer recipes`); default: the dataset's own.", rich_help_panel=TRAIN)] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="A YAML file of settings (above the recipe, below flags).", rich_help_panel=TRAIN)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training length in epochs.", rich_help_panel=TRAIN)] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training length in optimizer steps (overrides epochs).", rich_help_panel=TRAIN)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Global batch per optimizer step.", rich_help_panel=TRAIN)] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate at the batch size.", rich_help_panel=TRAIN)] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="sgd | adamw.", rich_help_panel=TRAIN)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for data order, augmentation and head init.", rich_help_panel=TRAIN)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Any setting as key=value (repeatable); wins over everything.", rich_help_panel=TRAIN)] = None,
    # Run
    name: Annotated[Optional[str], typer.Option(help="Run folder name (rerunning the same name resumes).", rich_help_panel=RUN)] = None,
    runs_dir: Annotated[Optional[Path], typer.Option(help="Parent folder of runs.", rich_help_panel=RUN)] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Resume this run folder exactly where it stopped.", rich_help_panel=RUN)] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N.", rich_help_panel=RUN)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and data/model summary; do not train.", rich_help_panel=RUN)] = False,
) -> None:
    """Fine-tune a backbone on a dataset and write a run folder."""
    flags = dict(
        data_root=str(data_root) if data_root else None, source=source, val_split=val_split,
        val_fraction=val_fraction, img_size=img_size, cache=cache, workers=workers, bad_files=bad_files,
        model=model, width=width, pretrained=pretrained, weights_file=str(weights) if weights else None,
        epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed,
        runs_dir=str(runs_dir) if runs_dir else None, device=device,
    )
    from .finetune import run_finetune

    run_finetune(dataset, recipe=recipe, config_file=config, flags=flags, sets=set_ or [], name=name,
                 resume=resume, dry_run=dry_run, complete_is_error=True)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    split: Annotated[str, typer.Option(help="Which split to evaluate: the run's eval split (default), test, val or train.")] = "eval",
    checkpoint: Annotated[str, typer.Option(help="best | last.")] = "best",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
) -> None:
    """Evaluate a run's checkpoint on a split."""
    from .inference import evaluate_command

    evaluate_command(run_dir, split=split, checkpoint=checkpoint, as_json=json_out, device=device)


@app.command(no_args_is_help=True)
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many classes to show per image.")] = 5,
    checkpoint: Annotated[str, typer.Option(help="best | last.")] = "best",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
) -> None:
    """Top-k predictions with class names for some images."""
    from .inference import predict_command

    predict_command(run_dir, images, top_k=top_k, checkpoint=checkpoint, as_json=json_out, device=device)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where to write the demo dataset and run.")] = Path("runs/demo"),
    img_size: Annotated[Optional[int], typer.Option(help="Image size in pixels (default: the demo recipe's 64).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (default: the demo recipe's).")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Backbone.")] = "rexnet",
    seed: Annotated[int, typer.Option(help="Seed of the generated data and of training.")] = 0,
) -> None:
    """Generate the built-in demo dataset, fine-tune on it (CPU, minutes), evaluate, print results."""
    from .finetune import demo_command

    demo_command(out_dir=out, img_size=img_size, epochs=epochs, model=model, seed=seed)


# Sub-command modules: each exposes register(app). Kept light: no heavy imports at module level.
COMMAND_MODULES = ("data", "models", "recipes", "compare", "analyze", "scan")
for _module in COMMAND_MODULES:
    try:
        importlib.import_module(f".commands.{_module}", __package__).register(app)
    except ModuleNotFoundError as _e:  # a module still being written; every one ships in a release
        if _e.name != f"{__package__}.commands.{_module}":
            raise


def main() -> None:
    """Entry point: run the app, turning UserError into one line and a documented exit code."""
    try:
        code = app(standalone_mode=False)  # click returns the code of ctx.exit() instead of raising
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as e:  # raised outside a command (e.g. in an option callback)
        if DEBUG["on"]:
            raise
        report(e)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as e:  # click usage errors and genuine bugs
        if isinstance(e, click_exceptions.UsageError):  # bad flag or value: one line, exit 2
            command = e.ctx.command_path if e.ctx else "rextransfer"
            sys.stderr.write(f"error: {e.format_message()} (see `{command} --help`)\n")
            sys.exit(2)
        if isinstance(e, click_exceptions.ClickException):
            sys.stderr.write(f"error: {e.format_message()}\n")
            sys.exit(e.exit_code)
        if DEBUG["on"]:
            raise
        sys.stderr.write(f"error: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
