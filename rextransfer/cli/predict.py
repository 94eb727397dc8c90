"""`rextransfer predict`: top-k classes with names for image files, folders and glob patterns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(predict)


def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    images: Annotated[list[str], typer.Argument(help="Image files, folders (every image below them) or quoted glob patterns such as 'shots/**/*.jpg'.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many classes to give per image.")] = 5,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the results to a .csv or .json file (timm inference.py layout) instead of printing them.", show_default="print")] = None,
    tta: Annotated[str, typer.Option(help="Test-time augmentation: none | flip (average with the mirrored image).")] = "none",
    checkpoint: Annotated[str, typer.Option(help="best | last.")] = "best",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
) -> None:
    """Top-k predictions with class names for images, in batches."""
    from ..core.console import out
    from ..core.errors import UsageError
    from ..train.inference import predict_images, write_predictions

    if output is not None and output.suffix.lower() not in (".csv", ".json"):
        raise UsageError(f"--output must end in .csv or .json; got {output.name}")
    results = predict_images(run_dir, images, top_k=top_k, checkpoint=checkpoint, device=device, tta=tta)
    if output is not None:
        write_predictions(results, output)
        out.print(f"wrote {len(results)} predictions (top {len(results[0]['top']) if results else top_k}) to {output}", markup=False)
        return
    if json_out:
        print(json.dumps(results))
        return
    for r in results:
        out.print(f"{r['image']}: " + ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in r["top"]), markup=False)
