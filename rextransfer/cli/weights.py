"""`rextransfer weights import`: a checkpoint from another repository as timm-layout safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    group = typer.Typer(name="weights", no_args_is_help=True, rich_markup_mode="rich",
                        help="Weights files: import a checkpoint from another repository onto timm's parameter names.")
    group.command("import", no_args_is_help=True)(import_weights)
    app.add_typer(group, name="weights")


def import_weights(
    file: Annotated[Path, typer.Argument(help="The foreign checkpoint: a state dict (.pth/.pt/.bin, read with weights_only) or .safetensors; {'state_dict': ...}, {'model': ...} and 'module.' prefixes are unwrapped.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="The architecture the file holds: rexnet, resnet50, efficientnet_b0 or any timm model name (e.g. tf_efficientnet_lite0, mobilenetv2_100).", show_default=False)],
    width: Annotated[float, typer.Option("--width", "-w", help="ReXNet width multiplier.")] = 1.0,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the timm-layout weights (.safetensors); a .provenance.json record is written beside it.", show_default="FILE's folder: <stem>.<architecture>.safetensors")] = None,
) -> None:
    """Map a checkpoint of the same architecture onto timm's names (order and shape, every tensor
    checked) and write timm-layout safetensors plus a provenance record (source sha256, mapping).

    The result loads with `--weights OUT` (a foreign FILE given to `--weights` is imported on the
    fly the same way). A file of another architecture, a damaged file, or a pickle that would
    build Python objects (and could run code) is refused with one line and exit code 4.
    """
    from ..core.console import out as console
    from ..core.errors import ModelError
    from ..models.importer import default_output, import_checkpoint, write_import

    if not file.exists():
        raise ModelError(f"weights file not found: {file}")
    imported = import_checkpoint(file, model, width)
    target = out or default_output(file, imported.arch)
    path, record_path, record = write_import(imported, target)
    head = {"included": f"included ({record['num_classes']} classes)", "none": "none in the file (backbone only)",
            "dropped": "left out: " + imported.head_note}[imported.head]
    console.print(
        f"imported {file} onto {imported.arch}: {record['tensors']} tensors by {record['rule']} "
        f"(every tensor paired once, same shape and role)\n"
        f"classifier: {head}\n"
        f"source sha256: {imported.source_sha256}\n"
        f"weights: {path}\n"
        f"provenance: {record_path}\n"
        f"use it: rextransfer finetune DATASET --model {model} --weights {path}", markup=False)
