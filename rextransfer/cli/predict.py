"""`rextransfer predict`: top-k classes with names for some images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(predict)


def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many classes to show per image.")] = 5,
    checkpoint: Annotated[str, typer.Option(help="best | last.")] = "best",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
) -> None:
    """Top-k predictions with class names for some images."""
    from ..core.console import out
    from ..train.inference import predict_images

    results = predict_images(run_dir, images, top_k=top_k, checkpoint=checkpoint, device=device)
    if json_out:
        print(json.dumps(results))
        return
    for r in results:
        out.print(f"{r['image']}: " + ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in r["top"]), markup=False)
