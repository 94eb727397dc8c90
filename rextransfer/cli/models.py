"""`rextransfer models`: the built-in backbones, their weights, published figures and preprocessing."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("models")(models)


def models(
    computed: Annotated[bool, typer.Option("--computed", help="Also count params and GMACs from the architectures (random init on the meta device: no download, no memory).")] = False,
) -> None:
    """List the backbones: CLI name, pinned weight tag, ImageNet top-1, params, GMACs and preprocessing."""
    from rich import box
    from rich.table import Table
    from timm.models import get_pretrained_cfg  # timm's registry of pretrained cfgs: works offline

    from ..core.console import out
    from ..models.registry import WEIGHTS

    table = Table(title="Backbones: published ImageNet-1k top-1 %, params (M, 1000 classes), GMACs (224 px)",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    # Numbers and tags never wrap; on a narrow terminal the CLI name does.
    table.add_column("model", min_width=13, overflow="fold")
    table.add_column("weights", no_wrap=True)
    table.add_column("top-1", justify="right", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("GMACs", justify="right", no_wrap=True)
    if computed:
        from ..models.build import costs_of

        table.add_column("params*", justify="right", no_wrap=True)
        table.add_column("GMACs*", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)  # eval preprocessing, from the weights' cfg
    table.add_column("crop", justify="right", no_wrap=True)
    table.add_column("interp.", no_wrap=True)
    for w in WEIGHTS:
        cfg = get_pretrained_cfg(w.tag)
        row = [w.cli, w.tag, f"{w.top1:.2f}", f"{w.params_m:.2f}", f"{w.gmacs:.2f}"]
        if computed:
            costs = costs_of(w.model, w.width, img_size=224)
            row += [f"{costs['params_m']:.2f}", f"{costs['gmacs']:.3f}"]
        row += [str(cfg.input_size[-1]), f"{cfg.crop_pct:g}", cfg.interpolation]
        table.add_row(*row)
    out.print(table)
    out.print(
        "Other ReXNet widths train from scratch: -w W --no-pretrained. Any timm model name works with "
        "--model. Preprocessing (eval size, crop, interpolation) comes from each weight's timm pretrained_cfg."
        + (" * computed by counting one forward pass (FlopCounterMode), random init." if computed else "")
    )
