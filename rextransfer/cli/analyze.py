"""`rextransfer analyze layers|features`: the ReXNet paper's rank-based expressiveness measures.

Parses options and reports; the measurements live in `rextransfer.analyze` (layers) and
`rextransfer.features` (features), both imported lazily: they import torch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

SWEEP, MEASURE, DATA, MODEL, OUTPUT = "Sweep", "Measure", "Data", "Model", "Output"


def _floats(text: str, option: str) -> list[float]:
    from ..core.errors import UsageError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option} expects comma-separated numbers, e.g. 0.1,0.5,1; got {text!r}") from None


def _names(text: str, dash: str) -> list[str]:
    """Comma list of names, lower-case; "-" becomes `dash` (hard-swish -> hardswish, ib-dw -> ib_dw)."""
    return [v.strip().lower().replace("-", dash) for v in text.split(",") if v.strip()]


def layers(
    out_width: Annotated[int, typer.Option(help="Output channels d_out of the random layer.", rich_help_panel=SWEEP)] = 64,
    ratios: Annotated[str, typer.Option(help="Dimension ratios d_in/d_out to sweep, comma-separated.", rich_help_panel=SWEEP)] = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0",
    layer: Annotated[str, typer.Option("--layers", help="Layer types: conv1x1, conv3x3, ib (3x3 conv inside), ib_dw (3x3 depthwise inside).", rich_help_panel=SWEEP)] = "conv1x1,conv3x3,ib,ib_dw",
    activations: Annotated[str, typer.Option(help="Activations: none, relu, relu6, elu, softplus, hardswish, silu.", rich_help_panel=SWEEP)] = "none,relu,relu6,elu,softplus,hardswish,silu",
    expansion: Annotated[int, typer.Option(help="Inverted bottleneck expansion ratio.", rich_help_panel=SWEEP)] = 6,
    samples: Annotated[int, typer.Option(help="Random input images per seed (N).", rich_help_panel=MEASURE)] = 16,
    size: Annotated[int, typer.Option(help="Input height = width in pixels; the feature matrix has samples x size^2 rows.", rich_help_panel=MEASURE)] = 8,
    seeds: Annotated[int, typer.Option(help="Independent draws of inputs and weights to average.", rich_help_panel=MEASURE)] = 5,
    seed: Annotated[int, typer.Option(help="First seed.", rich_help_panel=MEASURE)] = 0,
    rtol: Annotated[float, typer.Option(help="Numerical rank = number of singular values > rtol x the largest.", rich_help_panel=MEASURE)] = 1e-4,
    out: Annotated[Path, typer.Option(help="Folder for layers.csv, layers.png and settings.json.", rich_help_panel=OUTPUT)] = Path("runs/analysis/layers"),
) -> None:
    """The paper's single-layer study: rank ratio of random layers vs the dimension ratio (CPU, seconds)."""
    from ..analyze import layers as analyze
    from ..core.console import err, log, out as stdout

    settings = analyze.LayerSettings(
        out_width=out_width, ratios=_floats(ratios, "--ratios"), samples=samples, size=size, seeds=seeds,
        seed=seed, rtol=rtol, expansion=expansion, layers=_names(layer, "_"), activations=_names(activations, ""),
    ).validate()
    start = time.perf_counter()
    rows = analyze.layer_rank_sweep(settings, progress=log)
    wall = time.perf_counter() - start
    paths = analyze.write_layer_results(out, settings, rows, wall)
    stdout.print(f"Rank ratio = numerical rank / d_out (d_out={settings.out_width}, rtol={settings.rtol:g}) by dimension "
                 f"ratio d_in/d_out, mean of {settings.seeds} seeds; standard normal inputs "
                 f"{settings.samples}x{settings.size}x{settings.size} (N x H x W)")
    for table in _layer_tables(analyze, rows, settings):
        stdout.print(table)
    err.print(f"{len(rows)} measurements in {wall:.1f} s; wrote {paths['csv']}, {paths['png']}, {paths['settings']}")


def _layer_tables(analyze, rows: list[dict], settings) -> list:
    """One table per layer type: a row per dimension ratio, a column per activation."""
    from rich import box
    from rich.table import Table

    tables = []
    for layer, by_act in analyze.rank_table(rows).items():
        table = Table(title=f"{analyze.LAYERS[layer]}: rank ratio", box=box.SIMPLE_HEAD, title_justify="left")
        table.add_column("ratio", justify="right")
        table.add_column("d_in", justify="right")
        for act in by_act:
            table.add_column(analyze.ACTIVATIONS[act][0], justify="right")
        for ratio in settings.ratios:
            table.add_row(f"{ratio:g}", str(settings.in_width(ratio)), *(f"{v[ratio]:.3f}" for v in by_act.values()))
        tables.append(table)
    return tables


def features(
    run_dirs: Annotated[Optional[list[Path]], typer.Argument(help="Run folders (fine-tuned models) to measure.", show_default=False)] = None,
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="A backbone to measure (repeatable): rexnet, resnet50, efficientnet_b0 or a timm name.", rich_help_panel=MODEL)] = None,
    width: Annotated[float, typer.Option("--width", "-w", help="ReXNet width multiplier for --model rexnet.", rich_help_panel=MODEL)] = 1.0,
    pretrained: Annotated[bool, typer.Option("--pretrained/--no-pretrained", help="--model with ImageNet weights, or random init (seeded).", rich_help_panel=MODEL)] = True,
    weights: Annotated[Optional[Path], typer.Option(help="--model: a local weights file (safetensors or state dict) instead of a download.", rich_help_panel=MODEL)] = None,
    checkpoint: Annotated[str, typer.Option(help="Run folders: best | last checkpoint.", rich_help_panel=MODEL)] = "best",
    dataset: Annotated[Optional[str], typer.Option(help="Images for --model (default demo) or instead of a run's own dataset: a dataset name or a folder.", rich_help_panel=DATA)] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="Where built-in datasets live (default: $REXTRANSFER_DATA or ~/.cache/rextransfer/data).", rich_help_panel=DATA)] = None,
    split: Annotated[str, typer.Option(help="eval (the run's evaluation split), train, test or val.", rich_help_panel=DATA)] = "eval",
    limit: Annotated[int, typer.Option(help="At most this many images (seeded random subset; 0 = all).", rich_help_panel=DATA)] = 1000,
    img_size: Annotated[int, typer.Option(help="Crop size in pixels (0 = the run's, or the weights' input size).", rich_help_panel=DATA)] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.", rich_help_panel=DATA)] = 64,
    workers: Annotated[int, typer.Option(help="Data loader workers (0 = decode in this process).", rich_help_panel=DATA)] = 0,
    rtol: Annotated[float, typer.Option(help="Numerical rank = number of singular values > rtol x the largest.", rich_help_panel=MEASURE)] = 1e-4,
    normalize: Annotated[str, typer.Option(help="Nuclear norm of the feature matrix divided by: max (largest singular value) | fro | none.", rich_help_panel=MEASURE)] = "max",
    center: Annotated[bool, typer.Option("--center/--no-center", help="Subtract the mean feature before the SVD.", rich_help_panel=MEASURE)] = False,
    seed: Annotated[int, typer.Option(help="Seeds the image subset and random-init models.", rich_help_panel=MEASURE)] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.", rich_help_panel=MEASURE)] = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: runs/analysis/features/<source names>).", rich_help_panel=OUTPUT)] = None,
    save_features: Annotated[bool, typer.Option("--save-features", help="Also write the feature matrices (features.safetensors).", rich_help_panel=OUTPUT)] = False,
) -> None:
    """Rank, nuclear norm and singular value spectrum of backbones' penultimate features on images."""
    from ..core.errors import UsageError

    if not run_dirs and not model:
        raise UsageError("give run folders to measure, or --model NAME (e.g. --model rexnet --no-pretrained)")
    if limit < 0 or batch_size < 1 or not 0 < rtol < 1 or checkpoint not in ("best", "last"):
        raise UsageError("need --limit >= 0, --batch-size >= 1, 0 < --rtol < 1 and --checkpoint best|last")

    from ..analyze import features as feat
    from ..core.console import err, log, out as stdout

    settings = feat.FeatureSettings(split=split, limit=limit, img_size=img_size, batch_size=batch_size,
                                    rtol=rtol, normalize=normalize, center=center, seed=seed,
                                    checkpoint=checkpoint, device=device, workers=workers)
    if normalize not in feat.NORMALIZATIONS:
        raise UsageError(f"--normalize must be one of {', '.join(feat.NORMALIZATIONS)}; got {normalize!r}")
    # Models see the same images as the runs (the first run's dataset and crop size) unless told otherwise.
    results, matrices, first = {}, {}, None
    makers = [lambda d=d: feat.source_from_run(d, settings, dataset, str(data_root or "")) for d in run_dirs or []]
    makers += [lambda m=m: feat.source_from_model(
        m, width, pretrained, settings, dataset or (first.cfg.dataset if first else "demo"),
        str(data_root or "") or (first.cfg.data_root if first else ""),
        img_size=first.cfg.img_size if first else 0, weights_file=str(weights or "")) for m in model or []]
    for make in makers:
        source = make()
        first = first or source
        if source.label in results:  # the same model twice (e.g. two checkpoints of one run name)
            source.label = f"{source.label} #{sum(k.startswith(source.label) for k in results) + 1}"
        log(f"{source.label}: extracting features")
        feats, data = feat.extract_features(source, settings)
        result = feat.feature_spectrum(feats, rtol=rtol, normalize=normalize, center=center)
        results[source.label] = {**source.info, **data, **result}
        matrices[source.label] = feats
    out_dir = out or Path("runs/analysis/features") / "_vs_".join(_slug(k) for k in results)
    paths = feat.write_feature_results(out_dir, settings, results, matrices if save_features else None)
    stdout.print(_feature_table(results, settings))
    err.print("wrote " + ", ".join(str(p) for p in paths.values()))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text).strip("-")[:60]


def _feature_table(results: dict, settings):
    from rich.table import Table

    norm = {"max": "sum s / s_max", "fro": "sum s / ||F||_F", "none": "sum s"}[settings.normalize]
    table = Table(title=f"penultimate features: numerical rank (rtol={settings.rtol:g}) and nuclear norm ({norm}"
                        f"{', centred' if settings.center else ''})")
    for col, justify in (("source", "left"), ("images", "right"), ("channels", "right"), ("rank", "right"),
                         ("rank/min(n,d)", "right"), ("nuclear norm", "right")):
        table.add_column(col, justify=justify)
    for label, r in results.items():
        table.add_row(label, str(r["images"]), str(r["channels"]), str(r["rank"]), f"{r['rank_ratio']:.3f}",
                      f"{r['nuclear_norm']:.2f}")
    return table


def register(app: typer.Typer) -> None:
    group = typer.Typer(name="analyze", no_args_is_help=True, rich_markup_mode="rich",
                        help="The ReXNet paper's expressiveness measures: rank of layer outputs and of backbone features.")
    group.command("layers")(layers)
    group.command("features")(features)
    app.add_typer(group, name="analyze")
