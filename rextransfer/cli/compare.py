"""`rextransfer compare` (the paper's table from run folders; --run trains the missing cells) and
`rextransfer bench` (backbone throughput on this machine). Parsing and reporting only: the work is
in rextransfer/compare/: table.py (the table), render.py (its formats), grid.py (--run) and
bench.py, imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

SELECT, OUTPUT, RUN = "Selection", "Output", "Run the grid"
FORMATS = ("table", "markdown", "csv", "json")


def _split(values: list[str] | None) -> list[str] | None:
    """Accept both `--models a,b` and `--models a --models b`."""
    items = [v.strip() for value in values or [] for v in value.split(",") if v.strip()]
    return items or None


def _seeds(text: str) -> list[int]:
    from ..core.errors import UsageError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds expects integers separated by commas, e.g. 0,1,2; got {text!r}") from None
    if not seeds:
        raise UsageError("--seeds needs at least one seed, e.g. --seeds 0")
    return list(dict.fromkeys(seeds))


def _write(text: str, out_file: Path | None) -> None:
    from ..core.console import err, out

    if out_file is None:
        out.out(text, end="", highlight=False)  # print verbatim: no markup, no wrapping
        return
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(text)
    err.print(f"wrote {out_file}", markup=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def compare(
        runs: Annotated[Optional[Path], typer.Option("--runs", help="Parent folder of run folders (runs/<dataset>/<name>/).", show_default="runs", rich_help_panel=SELECT)] = None,
        datasets: Annotated[Optional[list[str]], typer.Option("--datasets", "-d", help="Datasets to show/run, comma-separated (default: the paper's four, plus any with runs).", rich_help_panel=SELECT)] = None,
        models: Annotated[Optional[list[str]], typer.Option("--models", "-m", help="Backbones, comma-separated: rexnet (x1.0) or rexnet@WIDTH, resnet50, efficientnet_b0, any timm name (default: the paper's three, plus any with runs).", rich_help_panel=SELECT)] = None,
        fmt: Annotated[str, typer.Option("--format", "-f", help="table | markdown | csv | json.", rich_help_panel=OUTPUT)] = "table",
        out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the output to this file instead of stdout.", rich_help_panel=OUTPUT)] = None,
        plot_file: Annotated[Optional[Path], typer.Option("--plot", help="Also write a PNG of accuracy against GMACs per dataset.", rich_help_panel=OUTPUT)] = None,
        bench_file: Annotated[Optional[Path], typer.Option("--bench", help="`rextransfer bench` results (file or folder) for throughput no run measured (default: RUNS/bench).", rich_help_panel=OUTPUT)] = None,
        run: Annotated[bool, typer.Option("--run", help="First train the grid's missing cells (datasets x models x seeds), one after another; finished runs are skipped, interrupted ones resumed.", rich_help_panel=RUN)] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="List the grid's cells and what --run would do with each; train nothing.", rich_help_panel=RUN)] = False,
        seeds: Annotated[str, typer.Option("--seeds", help="Seeds per cell, comma-separated, e.g. 0,1,2.", rich_help_panel=RUN)] = "0",
        recipe: Annotated[Optional[str], typer.Option("--recipe", "-r", help="Recipe for every cell (default: each dataset's own).", rich_help_panel=RUN)] = None,
        set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Setting key=value passed to every run (repeatable).", rich_help_panel=RUN)] = None,
        pretrained: Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained", help="Start from ImageNet weights (default) or random init.", rich_help_panel=RUN)] = None,
    ) -> None:
        """The paper's fine-grained table (ReXNet x1.0 vs EfficientNet-B0 vs ResNet50) from your runs."""
        from rich.markup import escape

        from ..compare import table as cmp
        from ..compare import render
        from ..compare import grid
        from ..core.console import err, out
        from ..core.errors import UsageError

        if fmt not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
        if runs is not None and not runs.is_dir() and not ((run or dry_run) and not runs.exists()):
            from ..core.errors import DataError  # a folder named on purpose; without --runs, no runs/ = the paper's table

            raise DataError(f"--runs {runs}: {'not a folder' if runs.exists() else 'no such folder'}")
        runs = runs if runs is not None else Path("runs")
        ds_list, model_list, sets = _split(datasets), _split(models), list(set_ or [])
        failures, todo = [], []
        if run or dry_run:
            plan = grid.plan_grid(runs, datasets=ds_list, models=model_list, seeds=_seeds(seeds), recipe=recipe,
                                 sets=sets, pretrained=pretrained)
            todo = [c for c in plan if c.state != "done"]
            if dry_run:
                from rich.table import Table
                from rich.text import Text

                from ..data import default_recipe_for

                table = Table("dataset", "model", "width", "seed", "recipe", "run folder", "action",
                              title=f"compare --run would train {len(todo)} of {len(plan)} cells", title_justify="left")
                for c in plan:
                    action = {"done": "skip (complete)", "resume": "resume", "new": "train"}[c.state]
                    recipe_name = c.recipe or f"{default_recipe_for(c.dataset)} (dataset's own)"
                    table.add_row(*map(Text, (c.dataset, c.model, f"{c.width:.1f}", str(c.seed), recipe_name, str(c.run_dir), action)))
                render.print_wide(out, table)
                return
            err.print(f"grid: {len(plan)} cells, {len(plan) - len(todo)} complete, {len(todo)} to run", markup=False)

            def started(i: int, n: int, c) -> None:
                verb = "resuming" if c.state == "resume" else "training"
                err.print(f"[bold]\\[{i}/{n}][/] {verb} " + escape(f"{c.dataset} · {c.model} x{c.width} · seed {c.seed} -> {c.run_dir}"))

            failures = grid.run_grid(plan, runs_dir=runs, sets=sets, pretrained=pretrained, on_start=started)
            for c, e in failures:
                err.print("[bold red]failed:[/] " + escape(f"{c.dataset} · {c.model} x{c.width} · seed {c.seed}: {e}"))

        comparison = cmp.build(runs, datasets=ds_list, models=model_list,
                               bench_paths=[bench_file] if bench_file else None)
        if fmt == "table" and out_file is None:
            render.render_rich(comparison, out)
        else:
            to_text = {"table": render.render_text, "markdown": render.render_markdown, "csv": render.render_csv, "json": render.render_json}[fmt]
            _write(to_text(comparison), out_file)
            if fmt == "csv" and comparison.incomplete:  # CSV holds results only; say what was left out
                err.print("not counted (not complete): " + ", ".join(f"{i.dataset}/{i.name} ({i.status})" for i in comparison.incomplete), markup=False)
        if plot_file is not None:
            err.print(f"wrote {render.plot(comparison, plot_file)}", markup=False)
        if failures:
            raise grid.grid_failure(failures, len(todo))

    @app.command()
    def bench(
        models: Annotated[Optional[list[str]], typer.Option("--models", "-m", help="Backbones, comma-separated (default: rexnet@1.0, resnet50, efficientnet_b0).")] = None,
        batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Images per step (default: 128 on CUDA, 16 on CPU).")] = None,
        img_size: Annotated[int, typer.Option("--img-size", help="Square input size in pixels.")] = 224,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
        steps: Annotated[int, typer.Option(help="Timed steps per model and mode (the median is reported).")] = 10,
        warmup: Annotated[int, typer.Option(help="Untimed steps first (allocator, cuDNN autotuning).")] = 3,
        runs: Annotated[Path, typer.Option("--runs", help="Results go to <runs>/bench/bench-<device>.json.")] = Path("runs"),
        out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the results JSON here instead.")] = None,
    ) -> None:
        """Training and inference throughput (img/s) of the backbones on this machine (random init)."""
        from rich.table import Table

        from ..compare.bench import default_path, run_bench
        from ..compare.render import print_wide
        from ..core.console import err, out
        from ..core.files import write_json

        report = run_bench(_split(models), batch_size=batch_size, img_size=img_size, device=device, steps=steps,
                           warmup=warmup, on_model=lambda s: err.print(f"measuring {s} ...", markup=False))
        table = Table("model", "timm", "params (M)", "train img/s", "eval img/s", "train ×rexnet", "eval ×rexnet",
                      "train ms/step", title=f"throughput on {report['device']}: {img_size} px, batch {report['batch_size']}, "
                      f"median of {steps} steps, {report['threads']} threads", title_justify="left")
        for r in report["results"]:
            ratio = [f"{r[k]:.2f}" if r[k] is not None else "—" for k in ("train_vs_rexnet", "eval_vs_rexnet")]
            table.add_row(r["label"], r["timm_name"], f"{r['params_m']:.2f}", f"{r['train_img_per_s']:.1f}",
                          f"{r['eval_img_per_s']:.1f}", *ratio, f"{r['train_ms_per_step']:.1f}")
        print_wide(out, table)
        path = out_file or default_path(runs, report["device"])
        write_json(path, report)
        err.print(f"wrote {path}", markup=False)
