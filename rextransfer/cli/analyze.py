"""`rextransfer analyze layers|features`: the ReXNet paper's rank-based expressiveness measures.

Parses options and reports; the measurements live in `rextransfer.analyze` (layers) and
`rextransfer.features` (features), both imported lazily: they import torch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

MEASURE, DATA, MODEL, OUTPUT = "Measure", "Data", "Model", "Output"


def _floats(text: str, option: str) -> list[float]:
    from ..core.errors import UsageError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option} expects comma-separated numbers, e.g. 0.1,0.5,1; got {text!r}") from None


def _names(text: str, dash: str) -> list[str]:
    """Comma list of names, lower-case; "-" becomes `dash` (hard-swish -> hardswish, ib-dw -> ib_dw)."""
    return [v.strip().lower().replace("-", dash) for v in text.split(",") if v.strip()]


PROTOCOL, UNSTATED, SWEEP = "Protocol (stated by the paper)", "Not stated by the paper", "Sweep"


def layers(
    networks: Annotated[int, typer.Option(help="Random networks per point (the paper: 1,000).", rich_help_panel=PROTOCOL)] = 1000,
    ratios: Annotated[str, typer.Option(help="Dimension ratios d_in/d_out, comma-separated, in (0, 1].", rich_help_panel=PROTOCOL)] = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0",
    blocks: Annotated[str, typer.Option("--blocks", "--layers", help="Blocks: conv1x1, conv3x3, ib (IB with a 3x3 conv), ib_dw (IB with a 3x3 depthwise).", rich_help_panel=PROTOCOL)] = "conv1x1,conv3x3,ib,ib_dw",
    activations: Annotated[str, typer.Option(help="Activations: linear, relu6, relu, leakyrelu, elu, softplus, hardswish, silu.", rich_help_panel=PROTOCOL)] = "linear,relu6,relu,leakyrelu,elu,softplus,hardswish,silu",
    d_out_min: Annotated[int, typer.Option(help="d_out is drawn uniformly per network between --d-out-min and --d-out-max.", rich_help_panel=UNSTATED)] = 16,
    d_out_max: Annotated[int, typer.Option(help="See --d-out-min.", rich_help_panel=UNSTATED)] = 64,
    samples: Annotated[int, typer.Option(help="N, the columns of X (must exceed --d-out-max).", rich_help_panel=UNSTATED)] = 256,
    input_dist: Annotated[str, typer.Option("--input", help="Distribution of X's entries: normal | uniform (unit variance).", rich_help_panel=UNSTATED)] = "normal",
    input_scale: Annotated[float, typer.Option(help="Standard deviation of X's entries.", rich_help_panel=UNSTATED)] = 1.0,
    input_centred: Annotated[bool, typer.Option("--input-centred/--input-uncentred", help="Centre each input channel over the N samples.", rich_help_panel=UNSTATED)] = True,
    init: Annotated[str, typer.Option(help="Weight init: torch (nn.Conv2d default) | normal (N(0,1)) | kaiming (He normal).", rich_help_panel=UNSTATED)] = "torch",
    bn_order: Annotated[str, typer.Option(help="BN before | after the activation.", rich_help_panel=UNSTATED)] = "before",
    bn_mode: Annotated[str, typer.Option(help="BN batch (statistics over the N samples) | eval (fresh running stats).", rich_help_panel=UNSTATED)] = "batch",
    rank_rule: Annotated[str, typer.Option(help="Rank rule of the tables, plot and verdicts: torch (matrix_rank's default) or an rtol.", rich_help_panel=UNSTATED)] = "torch",
    rtols: Annotated[str, typer.Option(help="Further rtols reported beside it (rank = singular values > rtol x the largest).", rich_help_panel=UNSTATED)] = "1e-4,1e-3,1e-2",
    expansion: Annotated[int, typer.Option(help="IB expansion: inner channels = expansion x d_in.", rich_help_panel=UNSTATED)] = 6,
    leaky_slope: Annotated[float, typer.Option(help="LeakyReLU's negative slope.", rich_help_panel=UNSTATED)] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of the networks' sizes, inputs and weights.", rich_help_panel=UNSTATED)] = 0,
    sweep: Annotated[bool, typer.Option("--sweep", help="Instead: run the unstated settings over a small grid and report where each observation holds.", rich_help_panel=SWEEP)] = False,
    sweep_networks: Annotated[int, typer.Option(help="Networks per point in each --sweep run.", rich_help_panel=SWEEP)] = 100,
    out: Annotated[Path, typer.Option(help="Folder for layers.csv, comparison.csv, verdicts.json, settings.json, layers.png (and sweep.*).", rich_help_panel=OUTPUT)] = Path("runs/analysis/layers"),
) -> None:
    """The paper's Figure 1: rank ratio of one random layer f(WX) against d_in/d_out, beside the paper's own curves, with a verdict per observation."""
    from ..analyze import layers as analyze
    from ..core.console import err, log, out as stdout
    from ..core.errors import UsageError

    acts = ["linear" if a == "none" else a for a in _names(activations, "")]
    settings = analyze.LayerSettings(
        networks=networks, d_out_min=d_out_min, d_out_max=d_out_max, ratios=_floats(ratios, "--ratios"),
        blocks=_names(blocks, "_"), activations=acts, samples=samples, input=input_dist.lower(), input_scale=input_scale,
        input_centred=input_centred, init=init.lower(), bn_order=bn_order.lower(), bn_mode=bn_mode.lower(),
        rank_rule=rank_rule.strip().lower(), rtols=_floats(rtols, "--rtols"), expansion=expansion,
        leaky_slope=leaky_slope, seed=seed,
    ).validate()
    if sweep:
        if sweep_networks < 1:
            raise UsageError(f"--sweep-networks must be at least 1; got {sweep_networks}")
        return _layer_sweep(settings, sweep_networks, out)
    from ..compare.render import print_wide

    for line in _settings_lines(analyze, settings):
        stdout.print(line, markup=False)
    start = time.perf_counter()
    rows = analyze.layer_rank_sweep(settings, progress=log)
    wall = time.perf_counter() - start

    from ..analyze import figure1, layer_report, observations

    paths = layer_report.write_layer_results(out, settings, rows, wall)
    ours = analyze.rank_table(rows, settings.rank_rule)
    stdout.print(f"Ours beside the paper's Figure 1 (values read off the figure, ±{figure1.reading_error():g}); "
                 "Δ = ours − paper, * = beyond the reading error; all points in layers.csv and comparison.csv")
    for table in _side_by_side_tables(analyze, figure1, ours, settings):
        print_wide(stdout, table)
    print_wide(stdout, _rule_table(analyze, rows, settings))
    _print_verdicts(stdout, observations.verdicts(ours), observations.verdicts(figure1.paper_table()),
                    {rule: observations.verdicts(analyze.rank_table(rows, rule)) for rule in settings.rules}, settings)
    err.print(f"{len(rows)} points x {settings.networks} networks in {wall:.1f} s on one CPU thread; "
              f"wrote {', '.join(str(p) for p in paths.values())}")


def _settings_lines(analyze, settings) -> list[str]:
    """One line per setting: name, value, and whether the paper states it (* = it does not)."""
    lines = ["Settings (all in settings.json); * = not stated by the paper, our choice:"]
    for p in analyze.provenance(settings):
        value = p["value"]
        text = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, list) else str(value)
        lines.append(f"  {' ' if p['stated'] else '*'} {p['name']:<14} {text:<22} {p['note']}")
    return lines


def _side_by_side_tables(analyze, figure1, ours: dict, settings) -> list:
    """Per block: ours / paper / Δ = ours - paper at the paper's read-off ratios (* beyond the
    reading error); activations the paper gives no value for show ours only."""
    from rich import box
    from rich.table import Table

    paper, err, ratios = figure1.paper_table(), figure1.reading_error(), figure1.paper()["ratios"]
    tables = []
    for block, acts in ours.items():
        table = Table(title=f"{analyze.BLOCKS[block]}: rank ratio ours / paper / Δ (rule {settings.rank_rule})",
                      box=box.SIMPLE_HEAD, title_justify="left")
        table.add_column("activation")
        for r in ratios:
            table.add_column(f"d_in/d_out = {r:g}")
        for act, curve in acts.items():
            cells = []
            for r in ratios:
                mine = figure1._at(curve, r)
                theirs = figure1._at(paper.get(block, {}).get(act, {}), r)
                if mine is None:
                    cells.append("—" if theirs is None else f"— / {theirs:.3f}")
                elif theirs is None:
                    cells.append(f"{mine:.3f} /   —   /   —")
                else:
                    d = round(mine - theirs, 3) + 0.0  # + 0.0: no "-0.000"
                    cells.append(f"{mine:.3f} / {theirs:.3f} / {d:+.3f}{'*' if abs(d) > err + 1e-12 else ''}")
            table.add_row(analyze.ACTIVATIONS[act][0], *cells)
        tables.append(table)
    return tables


def _rule_table(analyze, rows: list[dict], settings):
    """Rank ratio at the smallest dimension ratio under every rank rule: how much the rule matters."""
    from rich import box
    from rich.table import Table

    low = min(settings.ratios)
    table = Table(title=f"Rank ratio at d_in/d_out = {low:g} under each rank rule (torch = matrix_rank's default, "
                        f"rtol = eps32 x max(N, d_out) = {analyze.rule_rtol('torch', settings.samples, settings.d_out_max):.1e} at d_out={settings.d_out_max})",
                  box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("block")
    table.add_column("rule", justify="right")
    for act in settings.activations:
        table.add_column(analyze.ACTIVATIONS[act][0], justify="right")
    for block in settings.blocks:
        for rule in settings.rules:
            by_act = {r["activation"]: r["rank_ratio"][rule] for r in rows if r["block"] == block and r["ratio"] == low}
            table.add_row(block, rule, *(f"{by_act[a]:.3f}" for a in settings.activations))
    return table


def _print_verdicts(stdout, ours: list[dict], paper: list[dict], by_rule: dict, settings) -> None:
    stdout.print(f"\nVerdicts on the paper's observations, computed from the numbers above (rule {settings.rank_rule}); "
                 "each holds or not UNDER THESE SETTINGS only:")
    for v, p in zip(ours, paper):
        rules = ", ".join(f"{rule}: {vs[[x['id'] for x in vs].index(v['id'])]['status']}" for rule, vs in by_rule.items())
        stdout.print(f"  Observation {v['id']} ({v['claim']}): [bold]{v['status'].upper()}[/bold] under these settings — "
                     f"{v['evidence']}.\n      Under each rank rule: {rules}. On the paper's own digitised values: {p['status']}.")


def _layer_sweep(settings, networks: int, out: Path) -> None:
    from ..analyze import layer_sweep
    from ..core.console import err, log, out as stdout

    points = layer_sweep.grid_points()
    stdout.print(f"Sweep of the settings the paper does not state: {len(points)} grid points x {len(settings.rules)} rank rules "
                 f"= {len(points) * len(settings.rules)} settings; {networks} networks per point, ratios "
                 f"{', '.join(f'{r:g}' for r in layer_sweep.SWEEP_RATIOS)}; other settings as given "
                 f"(d_out in [{settings.d_out_min}, {settings.d_out_max}], N={settings.samples}).")
    for knob, levels in layer_sweep.SWEEP_GRID.items():
        stdout.print(f"  {knob}: {', '.join(layer_sweep._key(v) for v in levels)}")
    start = time.perf_counter()
    results = layer_sweep.run_sweep(settings, networks, progress=log)
    wall = time.perf_counter() - start
    summary = layer_sweep.summarise(results)
    paths = layer_sweep.write_sweep_results(out, settings, networks, results, summary, wall)
    for s in summary:
        head = f"\nObservation {s['id']} ({s['claim']}): holds under {s['holds']} of {s['settings']} settings"
        stdout.print(head + (f", partly under {s['partly']} more." if s["partly"] else "."))
        if s["holds"]:
            if s["shared_by_all_holding"]:
                stdout.print("  every setting where it holds has: " + ", ".join(f"{k}={v}" for k, v in s["shared_by_all_holding"].items()))
            for knob, counts in s["holds_by_value"].items():
                stdout.print(f"  holds by {knob}: " + ", ".join(f"{v} {n}" for v, n in counts.items()))
            shown = s["holding"][:5]
            stdout.print("  e.g. " + "; ".join(shown) + (f"; ... ({len(s['holding']) - 5} more in sweep.csv)" if len(s["holding"]) > 5 else ""))
        elif s["closest"]:
            stdout.print(f"  closest: {s['closest']}")
    err.print(f"{len(points)} sweep runs in {wall:.1f} s on one CPU thread; wrote {', '.join(str(p) for p in paths.values())}")


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
