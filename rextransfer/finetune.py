"""A fine-tuning run from command to finished run folder.

    resolve config (recipe < --config < flags < --set)  ->  check weights are reachable (fast)
    -> load + scan the data  ->  build the backbone  ->  run folder (new or resumed)
    -> train.train()  ->  summary.json, per-class/confusion CSVs, plots

Resume: `--resume RUN_DIR`, or the same `--name` again, continues from checkpoints/last.pt with
the stored config; any setting that would change the result is refused as incompatible.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import Config, from_dict, to_yaml
from .console import log, out
from .errors import DataError, Interrupted, RunError, TrainingError, UserError
from .inference import load_run_model  # noqa: F401  (part of this module's public API)
from .runs import RunDir, write_json, write_text

# Settings that may differ between a run and its resumption: they do not change the result.
RESUME_FREE = {"device", "workers", "runs_dir", "log_every", "cache", "data_root", "source"}


def run_finetune(dataset: str | None, *, recipe: str | None = None, flags: dict | None = None,
                 sets: list[str] | None = None, name: str | None = None, runs_dir: str | None = None,
                 config_file: Path | None = None, resume: Path | None = None, dry_run: bool = False,
                 complete_is_error: bool = False) -> Path | None:
    """Train (or resume, or return at once when complete) and return the run folder."""
    flags = dict(flags or {})
    if runs_dir:
        flags["runs_dir"] = runs_dir
    from . import recipes
    from .data import dataset_label

    # 1. Config, and the run folder it belongs to.
    if resume is not None:
        run = RunDir(Path(resume))
        stored = run.stored_config()
        cfg = from_dict(stored, f"{run.path}/config.yaml")
        overrides = {k: v for k, v in flags.items() if v is not None}
        if sets or config_file or recipe:
            raise RunError("--resume continues a run with its stored settings; drop --set/--config/--recipe")
        _check_compatible(cfg, overrides, run)
        cfg = from_dict({**cfg.to_dict(), **overrides}, "flags")
    else:
        if not dataset:
            raise DataError("give a dataset name or folder, or --resume RUN_DIR")
        cfg = recipes.resolve_run_config(dataset, recipe=recipe, model_hint=None, config_file=config_file,
                                         flags=flags, sets=sets or [])
        run = RunDir(Path(cfg.runs_dir) / dataset_label(cfg.dataset) / (name or RunDir.default_name(cfg.model, cfg.width)))
    status = run.status()
    if status == "complete":
        if complete_is_error and not dry_run:
            raise RunError(f"run {run.path} is already complete; choose another --name or evaluate it with `rextransfer evaluate {run.path}`")
        return run.path
    resuming = status in ("interrupted", "failed", "running") and run.last_ckpt.exists()

    # 2. Weights must be reachable before anything imports huggingface_hub (it reads the offline
    #    flag once); this and the data checks run before torch is imported, so mistakes fail fast.
    from .weights import ensure_weights_available

    weight_source = ensure_weights_available(cfg)

    # 3. Data: load, apply a size-dependent recipe rule.
    from .data import get_splits

    splits = get_splits(cfg)
    if resume is None and recipes.uses_hyperrule(cfg.recipe):
        cfg = recipes.resolve_run_config(dataset, recipe=recipe, model_hint=None, config_file=config_file,
                                         flags=flags, sets=sets or [], n_train=len(splits.train))
    if resuming and resume is None:  # same --name again: only if nothing that shapes the result changed
        _check_compatible(from_dict(run.stored_config(), "stored config"), _result_settings(cfg), run)

    # 4. Processes and devices (torchrun sets WORLD_SIZE); one run folder for all ranks.
    from . import models
    from .distributed import broadcast_object, init_distributed, seed_everything

    dist, device = init_distributed(cfg)
    run = RunDir(broadcast_object(run.path, dist))  # rank 0's name (it carries a timestamp)

    # 5. Pre-flight scan: unreadable images are skipped (listed in bad_files.csv) or fail the run.
    from .data.scan import scan_samples, write_bad_files_csv

    scans = {}
    for split_name in ("train", "eval"):
        result = scan_samples(getattr(splits, split_name), policy=cfg.bad_files)
        scans[split_name] = result
        if result.bad:
            log(f"[yellow]{result.summary()}; skipped (listed in bad_files.csv)[/]")
            setattr(splits, split_name, getattr(splits, split_name).subset(result.good))

    # 6. Model (seeded: the new head's init is part of the run's identity).
    seed_everything(cfg.seed)
    backbone = models.build_backbone(cfg, num_classes=len(splits.classes))
    if cfg.zero_head:
        models.zero_head(backbone.model)
    costs = models.model_costs(backbone.model, cfg.img_size)
    from .pipeline import Pipeline

    pipeline = Pipeline(cfg, backbone.data_config, device, rank=dist.rank, world=dist.world)
    if dry_run:
        _print_dry_run(cfg, splits, backbone, costs, pipeline, run)
        return None

    # 7. Run folder (rank 0 writes; the others only train).
    resume_state = None
    if resuming:
        import torch

        try:
            resume_state = torch.load(run.last_ckpt, map_location="cpu", weights_only=True)
        except Exception as e:  # torn or foreign file
            raise RunError(f"cannot resume {run.path}: checkpoint unreadable ({type(e).__name__}); start a new run with another --name") from None
    elif dist.main:
        run.create()
        run.rewrite_metrics([])  # a folder reused without a checkpoint starts a clean log
    if dist.main:
        run.remove_stale_temp_files()
        write_text(run.file("config.yaml"), to_yaml(cfg))
        write_json(run.file("env.json"), _env(cfg, device, dist, splits, backbone, weight_source, scans))
        if any(s.bad for s in scans.values()):
            write_bad_files_csv(list(scans.values()), run.file("bad_files.csv"))
        log(f"run folder: {run.path}")

    # 8. Train.
    from .train import train

    pipeline.prepare(splits.train, splits.eval)  # build pixel caches now, not inside epoch 1's timing
    model = backbone.model.to(device)
    if pipeline.channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    base = _summary_base(cfg, run, splits, backbone, costs, device)
    try:
        result = train(cfg, run, splits, model, models.head_parameter_names(model), pipeline, device, dist, resume_state)
    except Interrupted:
        if dist.main:
            write_json(run.file("summary.json"), {**base, "status": "interrupted"})
        raise
    except TrainingError:
        if dist.main:
            write_json(run.file("summary.json"), {**base, "status": "failed"})
        raise
    except Exception as e:
        oom = _oom_error(e, cfg)
        if oom is None:
            raise
        if dist.main:
            write_json(run.file("summary.json"), {**base, "status": "failed"})
        raise oom from None
    finally:
        _shutdown(dist)
    if dist.main:
        _finish(cfg, run, splits, result, base)
    return run.path


def _result_settings(cfg: Config) -> dict:
    """The settings that shape a run's result (all but RESUME_FREE)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in RESUME_FREE}


def _check_compatible(stored: Config, given: dict, run: RunDir) -> None:
    old = stored.to_dict()
    for key, value in given.items():
        if key in RESUME_FREE or key not in old:
            continue
        if old[key] != value:
            raise RunError(f"cannot resume {run.path}: {key} was {old[key]!r}, now {value!r}; "
                           f"use the same settings or another --name")


def _env(cfg, device, dist, splits, backbone, weight_source, scans) -> dict:
    import timm
    import torch
    import torchvision

    from . import __version__

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "rextransfer": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "timm": timm.__version__, "platform": platform.platform(),
        "device": str(device), "gpu": gpu, "cuda": torch.version.cuda, "world_size": dist.world,
        "timm_name": backbone.timm_name, "weight_tag": backbone.weight_tag,
        "pretrained_source": backbone.pretrained_source, "weights_check": weight_source,
        "preprocessing": {**backbone.data_config, "img_size": cfg.img_size,
                          "crop_pct_used": cfg.crop_pct or backbone.data_config.get("crop_pct")},
        "data": {"source": splits.source, "train_size": len(splits.train), "eval_size": len(splits.eval),
                 "eval_split": splits.eval_split, "headline_metric": splits.metric, **splits.notes},
        "bad_files": {k: dict(v.counts) for k, v in scans.items()},
        "classes": splits.classes,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _summary_base(cfg, run, splits, backbone, costs, device) -> dict:
    from .distributed import device_name

    return {
        "run_name": run.path.name, "dataset": run.path.parent.name, "model": cfg.model, "width": cfg.width,
        "timm_name": backbone.timm_name, "weight_tag": backbone.weight_tag, "pretrained": cfg.pretrained,
        "recipe": cfg.recipe, "seed": cfg.seed, "img_size": cfg.img_size, "num_classes": len(splits.classes),
        "train_size": len(splits.train), "eval_size": len(splits.eval), "eval_split": splits.eval_split,
        "headline_metric": splits.metric, "params_m": costs["params_m"], "gmacs": costs["gmacs"], "device": device_name(device),
    }


def _finish(cfg, run, splits, result, base) -> None:
    from . import plots
    from .metrics import write_confusion_csv, write_per_class_csv
    from .runs import write_with

    last = dict(result["last_eval"])
    confusion = last.pop("confusion")
    rows = run.metrics()
    train_speeds = [r["train_img_per_s"] for r in rows if r.get("train_img_per_s")]
    summary = {
        **base, "status": "complete",
        "headline": last.get(splits.metric),
        "final": {k: last.get(k) for k in ("top1", "top5", "mean_class_acc", "loss")},
        "best": result["best"], "epochs": result["epochs"], "steps": result["steps"],
        "stopped_early": result["stopped_early"],
        "train_img_per_s": sorted(train_speeds)[len(train_speeds) // 2] if train_speeds else None,
        "eval_img_per_s": last.get("eval_img_per_s"), "wall_time_s": result["wall_time_s"],
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_with(run.file("per_class.csv"), lambda p: write_per_class_csv(p, confusion, splits.classes))
    write_with(run.file("confusion.csv"), lambda p: write_confusion_csv(p, confusion, splits.classes))
    epochs = [r["epoch"] for r in rows]
    evals = [r for r in rows if r.get(f"eval_{splits.metric}") is not None]
    plots.line_panels(run.file("curves.png"), [
        {"title": "training loss", "xlabel": "epoch", "ylabel": "loss",
         "series": [{"label": "train", "x": epochs, "y": [r["train_loss"] for r in rows]},
                    {"label": "eval", "x": [r["epoch"] for r in evals], "y": [r["eval_loss"] for r in evals]}]},
        {"title": f"eval {splits.metric}", "xlabel": "epoch", "ylabel": "%",
         "series": [{"label": splits.eval_split, "x": [r["epoch"] for r in evals],
                     "y": [r[f"eval_{splits.metric}"] for r in evals], "marker": True}]},
    ], title=f"{run.path.parent.name} / {run.path.name}")
    plots.heatmap(run.file("confusion.png"), confusion.tolist(), row_labels=splits.classes,
                  col_labels=splits.classes, title=f"confusion ({splits.eval_split}), rows = true")
    write_json(run.file("summary.json"), summary)
    _print_summary(summary, run)


def _print_summary(summary: dict, run: RunDir) -> None:
    from rich.table import Table

    table = Table(title=f"{summary['dataset']} · {summary['model']} x{summary['width']:g} · {summary['eval_split']} split")
    for col in ("metric", "final", "best"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for key in ("top1", "top5", "mean_class_acc", "loss"):
        mark = " (headline)" if key == summary["headline_metric"] else ""
        final, best = summary["final"].get(key), summary["best"].get(key)
        fmt = "{:.4f}" if key == "loss" else "{:.2f}"
        table.add_row(key + mark, fmt.format(final) if final is not None else "—", fmt.format(best) if best is not None else "—")
    out.print(table)
    out.print(f"run folder: {run.path}")


def _print_dry_run(cfg, splits, backbone, costs, pipeline, run) -> None:
    out.print("# resolved config")
    out.print(to_yaml(cfg), markup=False)
    out.print("# data and model")
    counts = splits.train.class_counts()
    out.print(
        f"dataset: {cfg.dataset} (source {splits.source}); classes {len(splits.classes)}; train {len(splits.train)} "
        f"(per class {min(counts)}-{max(counts)}); eval {len(splits.eval)} on {splits.eval_split}; headline {splits.metric}\n"
        f"model: {backbone.timm_name} weights {backbone.weight_tag or 'none (random init)'}; "
        f"params {costs['params_m']:.2f} M; {costs['gmacs']:.3f} GMACs at {cfg.img_size}px\n"
        f"schedule: {pipeline.steps_per_epoch(len(splits.train))} steps/epoch; "
        f"{cfg.steps or cfg.epochs * pipeline.steps_per_epoch(len(splits.train))} steps total\n"
        f"run folder: {run.path}", markup=False)


def _oom_error(e: Exception, cfg: Config) -> TrainingError | None:
    """The one-line error for running out of (GPU) memory, suggesting a batch that fits."""
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
        half = max(1, cfg.batch_size // 2)
        return TrainingError(f"out of memory at batch size {cfg.batch_size}; try --batch-size {half}, "
                             f"or keep the batch with --set grad_accum={cfg.grad_accum * 2}")
    return None


def _shutdown(dist: Any) -> None:
    if dist.world > 1:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()


def demo_command(*, out_dir: Path, img_size: int | None, epochs: int | None, model: str, seed: int) -> None:
    """Generate the demo birds, fine-tune through the folder path, print the results."""
    from . import models
    from .data.demo import generate

    data = generate(Path(out_dir) / "birds", seed=seed)
    flags: dict[str, Any] = {"model": model, "seed": seed, "runs_dir": str(Path(out_dir) / "runs")}
    flags.update({k: v for k, v in (("img_size", img_size), ("epochs", epochs)) if v is not None})
    try:
        models.ensure_weights_available(from_dict({**Config().to_dict(), **flags}, "demo"))
    except UserError as e:
        log(f"[yellow]ImageNet weights unavailable ({str(e).split(';')[0]}); training from scratch[/]")
        flags["pretrained"] = False
    run = run_finetune(str(data), recipe="demo", flags=flags, name=f"{model}-demo-s{seed}")
    summary = RunDir(run).summary() or {}
    chance = 100.0 / max(1, summary.get("num_classes", 1))
    out.print(f"demo: top-1 {summary.get('headline', float('nan')):.1f}% on {summary.get('eval_size')} test images "
              f"(chance {chance:.1f}%) in {summary.get('wall_time_s', 0):.0f} s")
