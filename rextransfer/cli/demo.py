"""`rextransfer demo`: generate the demo birds, fine-tune on them through the folder path, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    out: Annotated[Path, typer.Option(help="Where to write the demo dataset and run.")] = Path("runs/demo"),
    img_size: Annotated[Optional[int], typer.Option(help="Image size in pixels.", show_default="the demo recipe's 64")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.", show_default="the demo recipe's")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Backbone.")] = "rexnet",
    seed: Annotated[int, typer.Option(help="Seed of the generated data and of training.")] = 0,
) -> None:
    """Generate the built-in demo dataset, fine-tune on it (CPU, minutes), evaluate, print results."""
    from ..config.settings import Config, from_dict
    from ..core.console import log
    from ..core.console import out as stdout
    from ..core.errors import UserError
    from ..data.demo import generate
    from ..models.registry import ensure_weights_available
    from ..train.run import run_finetune
    from .finetune import print_summary

    data = generate(Path(out) / "birds", seed=seed)
    flags: dict[str, Any] = {"model": model, "seed": seed, "runs_dir": str(Path(out) / "runs")}
    flags.update({k: v for k, v in (("img_size", img_size), ("epochs", epochs)) if v is not None})
    try:
        ensure_weights_available(from_dict({**Config().to_dict(), **flags}, "demo"))
    except UserError as e:
        log(f"[yellow]ImageNet weights unavailable ({str(e).split(';')[0]}); training from scratch[/]")
        flags["pretrained"] = False
    result = run_finetune(str(data), recipe="demo", flags=flags, name=f"{model}-demo-s{seed}")
    summary = result.summary or {}
    if not result.already_complete and result.summary:
        print_summary(result.summary, result.path)
    chance = 100.0 / max(1, summary.get("num_classes", 1))
    stdout.print(f"demo: top-1 {summary.get('headline', float('nan')):.1f}% on {summary.get('eval_size')} test images "
                 f"(chance {chance:.1f}%) in {summary.get('wall_time_s', 0):.0f} s")
