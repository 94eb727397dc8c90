"""`rextransfer export`: a run's model as ONNX, TorchScript or a timm / Hugging Face folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(export)


def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    format: Annotated[str, typer.Option("--format", "-f", help="onnx | torchscript | timm (a Hugging Face model folder).")] = "onnx",
    out: Annotated[Optional[Path], typer.Option(help="Folder to write into.", show_default="<run folder>/export/<format>")] = None,
    checkpoint: Annotated[str, typer.Option(help="best | last.")] = "best",
    push_to_hub: Annotated[Optional[str], typer.Option(help="With --format timm: upload the folder to this Hugging Face model repo (user/name).", show_default="no upload")] = None,
    private: Annotated[bool, typer.Option(help="Create the Hub repo as private.")] = False,
) -> None:
    """Export a run's model, checked against PyTorch (max abs difference printed)."""
    from ..core.console import out as stdout
    from ..train.export import export_run

    result = export_run(run_dir, format, out=out, checkpoint=checkpoint, push_to_hub=push_to_hub, private=private)
    stdout.print(f"exported {format} to {result.folder}: {', '.join(map(str, result.files))}", markup=False)
    stdout.print(f"checked with {result.checked_with}: max abs difference to PyTorch {result.max_abs_diff:.2e} "
                 f"(batches of 3 and 1; exported at batch 2)", markup=False)
    for note in result.notes:
        stdout.print(f"note: {note}", markup=False)
    if result.pushed_to:
        stdout.print(f"pushed to {result.pushed_to}", markup=False)
