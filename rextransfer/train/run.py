"""A fine-tuning run from settings to finished run folder.

    settings (recipe < --config < flags < --set, resolved once, after the training set is counted)
    -> weights reachable? (fast, before torch)  ->  data + pre-flight scan  ->  backbone
    -> run folder (new or resumed)  ->  loop.train()  ->  summary, per-class/confusion, plots

Resume: `--resume RUN_DIR`, or the same `--name` again, continues from checkpoints/last.pt with
the stored settings; any setting that would change the result is refused as incompatible.
Nothing here prints results: it returns a `RunResult` that the CLI reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config.settings import Config, from_dict
from ..core.console import log
from ..core.errors import DataError, Interrupted, RunError, TrainingError, UsageError
from .rundir import RunDir, check_name

# Settings that may differ between a run and its resumption: they do not change the result.
RESUME_FREE = {"device", "workers", "runs_dir", "log_every", "cache", "data_root", "source", "loggers"}


@dataclass
class DryRun:
    """What `--dry-run` reports: the resolved settings and what they would train."""

    cfg: Config
    splits: Any
    backbone: Any
    costs: dict
    steps_per_epoch: int
    total_steps: int
    run_path: Path


@dataclass
class RunResult:
    path: Path
    summary: dict | None = None      # summary.json of a run that just finished
    dry_run: DryRun | None = None    # set instead, for --dry-run
    already_complete: bool = False


def run_finetune(*args, **kwargs) -> RunResult:
    """Train (or resume, or return at once when complete) and return the run folder."""
    with contextlib.ExitStack() as held:  # the run folder's lock, released however this ends
        return _run_finetune(*args, held=held, **kwargs)


def _run_finetune(dataset: str | None, *, recipe: str | None = None, flags: dict | None = None,
                  sets: list[str] | None = None, name: str | None = None, runs_dir: str | None = None,
                  config_file: Path | None = None, resume: Path | None = None, dry_run: bool = False,
                  complete_is_error: bool = False, held: contextlib.ExitStack) -> RunResult:
    from ..data import dataset_label, default_recipe_for, get_splits
    from ..data.base import absolute_dataset, absolute_paths

    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if runs_dir:
        flags["runs_dir"] = runs_dir

    # 1. Settings, resolved once (a size-dependent recipe counts the training set first), and the
    #    run folder they belong to.
    loaded: dict[str, Any] = {}

    def count_train(data_cfg: Config) -> int:
        loaded["splits"] = get_splits(absolute_paths(data_cfg))
        return len(loaded["splits"].train)

    tier = None  # a new run in a size-dependent recipe's few-shot tier: its log line
    if name is not None:
        check_name(name)
    if resume is not None:
        if sets or config_file or recipe:
            raise RunError("--resume continues a run with its stored settings; drop --set/--config/--recipe")
        run = RunDir(Path(resume))
        stored = run.settings()
        run.check_location()
        if dataset and absolute_dataset(dataset) != absolute_dataset(stored.dataset):
            raise UsageError(f"--resume continues {run.path} on its own dataset ({stored.dataset}); "
                             f"drop {dataset!r}, or start a new run without --resume")
        given = flags
        cfg = from_dict({**stored.to_dict(), **flags}, "flags").validate()
    else:
        if not dataset:
            raise DataError("give a dataset name or folder, or --resume RUN_DIR")
        from ..config.recipes import few_shot_note, resolve_run_config
        from ..models.registry import finetune_defaults

        cfg = resolve_run_config(dataset, recipe=recipe or default_recipe_for(dataset), model_hint=None,
                                 config_file=config_file, flags=flags, sets=sets or [], count_train=count_train,
                                 backbone_defaults=finetune_defaults)
        cfg = absolute_paths(cfg)  # a folder's absolute path: evaluate and resume work from anywhere
        tier = few_shot_note(cfg, len(loaded["splits"].train)) if "splits" in loaded else None
        run = RunDir(Path(cfg.runs_dir) / dataset_label(cfg.dataset) / (name or RunDir.default_name(cfg.model, cfg.width)))
        given = _result_settings(cfg)
        run.check_location()
    from ..data.scan import check_cache_root

    check_cache_root(required=cfg.cache)  # the pixel cache's folder, before any work
    if not dry_run and os.environ.get("RANK", "0") == "0":  # rank 0 holds the run for all ranks
        held.enter_context(run.lock())
    status = run.status()
    if status == "complete":
        if complete_is_error and not dry_run:
            raise RunError(f"run {run.path} is already complete; choose another --name or evaluate it with `rextransfer evaluate {run.path}`")
        return RunResult(run.path, summary=run.summary(), already_complete=True)
    resuming = status in ("interrupted", "failed", "running") and run.resume_point() == "resume"
    if resume is not None and not resuming:
        log(f"{run.path} has no checkpoint yet: starting it from step 0")
    if resuming:  # only if nothing that shapes the result changed
        stored_cfg = absolute_paths(run.settings())
        if cfg.lr == "auto":  # the stored lr is the one the sweep chose when the run started
            cfg, given = dataclasses.replace(cfg, lr=stored_cfg.lr), {**given, "lr": stored_cfg.lr}
        _check_compatible(stored_cfg, given, run)
    from .loggers import logger_names

    logger_names(cfg.loggers)  # a logger asked for but not installed: one line now, not after the data

    # 2. Weights must be reachable before anything imports huggingface_hub (it reads the offline
    #    flag once); this and the data checks run before torch is imported, so mistakes fail fast.
    from ..models.registry import ensure_weights_available

    weight_source = ensure_weights_available(cfg)
    splits = loaded.get("splits") or get_splits(cfg)
    if resuming:
        run.check_classes(splits.classes)  # before anything in the run folder is rewritten

    # 3. Processes and devices (torchrun sets WORLD_SIZE); one run folder for all ranks.
    from ..models import build as models
    from .distributed import broadcast_object, init_distributed, local_rank_zero_first, same_on_all_ranks, seed_everything

    dist, device = init_distributed(cfg)
    run = RunDir(broadcast_object(run.path, dist))  # rank 0's name (it carries a timestamp)
    same_on_all_ranks(resuming, dist, f"whether {run.path} holds a checkpoint to resume")

    # 4. Pre-flight scan: unreadable images are skipped (listed in bad_files.csv) or fail the run.
    from ..data.scan import scan_samples

    #    Local rank 0 of each node first: the others then read its results from the node's scan cache.
    scans = local_rank_zero_first(dist, lambda: {name_: scan_samples(getattr(splits, name_), policy=cfg.bad_files)
                                                 for name_ in ("train", "eval")}, "scanning the images")
    for result in scans.values():
        if result.bad:
            log(f"[yellow]{result.summary()}; skipped (listed in bad_files.csv)[/]")
    splits = dataclasses.replace(splits, train=splits.train.subset(scans["train"].good),
                                 eval=splits.eval.subset(scans["eval"].good))

    # 5. Model (seeded: the new head's init is part of the run's identity).
    seed_everything(cfg.seed)
    backbone = models.build_backbone(cfg, num_classes=len(splits.classes))
    if cfg.head_init == "zero":  # random: as timm built it; ncm: set from the features below (train/head.py)
        models.zero_head(backbone.model)
    costs = models.model_costs(backbone.model, cfg.img_size)
    from ..data.pipeline import Pipeline

    pipeline = Pipeline(cfg, backbone.data_config, device, rank=dist.rank, world=dist.world)
    if dry_run:
        per_epoch = pipeline.steps_per_epoch(len(splits.train))
        return RunResult(run.path, dry_run=DryRun(cfg, splits, backbone, costs, per_epoch,
                                                  cfg.steps or cfg.epochs * per_epoch, run.path))

    # 6. The new head's start (train/head.py; a resumed run's is in its checkpoint), then lr: auto ->
    #    a sweep from that head (rank 0; weights and RNGs restored, so the run is the same as with
    #    that lr given), then the run folder (rank 0 writes; the others only train).
    head = None if resuming else _init_head(cfg, backbone.model.to(device), pipeline, splits, device, dist)
    sweep = None
    if cfg.lr == "auto":
        cfg, sweep = _lr_auto(cfg, backbone.model, pipeline, splits, device, dist)
    checkpoint = None
    if resuming:
        import torch

        try:
            checkpoint = torch.load(run.last_ckpt, map_location="cpu", weights_only=True)
        except Exception as e:  # torn or foreign file
            raise RunError(f"cannot resume {run.path}: checkpoint unreadable ({type(e).__name__}); start a new run with another --name") from None
        run.check_checkpoint(backbone.model, checkpoint)  # one line, not torch's multi-line mismatch
    elif dist.main:
        run.create()
        run.rewrite_metrics([])  # a folder reused without a checkpoint starts a clean log
    if dist.main:
        run.remove_stale_temp_files()
        run.write_config(cfg)
        run.write_env({**_env(cfg, device, dist, splits, backbone, weight_source, scans),
                       **({"lr_find": sweep.record()} if sweep else {})})
        if sweep:
            run.write_lr_find(sweep)
        if any(s.bad for s in scans.values()):
            run.write_bad_files(list(scans.values()))
        if tier:  # said once every check has passed, so that a refused run's error stays one line
            log(tier)
        log(f"run folder: {run.path}")

    # 7. Train.
    from .loop import train

    # Pixel caches now, not inside epoch 1's timing: each node builds or reuses its own (on its local
    # disk; REXTRANSFER_CACHE), local rank 0 first, then the node's other ranks open it.
    local_rank_zero_first(dist, lambda: pipeline.prepare(splits.train, splits.eval), "preparing the pixel cache")
    model = backbone.model.to(device)
    if pipeline.channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    base = _summary_base(cfg, run, splits, backbone, costs, device)
    # how the head started: set above, or (resumed) as the summary so far says
    base["head"] = head or (run.summary() or {}).get("head", {"head_init": cfg.head_init})
    from .loggers import make_loggers

    loggers = make_loggers(cfg, run, dist.main)  # rank 0 only; one that cannot start is a warning
    if dist.main:
        log(loggers.describe())
        loggers.log_settings(cfg.to_dict(), [f"eval/{splits.metric}", "eval/loss"])
    try:
        result = train(cfg, run, splits, model, models.head_parameter_names(model), pipeline, device, dist,
                       checkpoint, loggers=loggers)
    except Interrupted:
        loggers.close("interrupted")
        if dist.main:
            run.write_summary({**base, "status": "interrupted"})
        raise
    except TrainingError:
        loggers.close("failed")
        if dist.main:
            run.write_summary({**base, "status": "failed"})
        raise
    except Exception as e:
        loggers.close("failed")
        oom = _oom_error(e, cfg)
        if oom is None:
            raise
        if dist.main:
            run.write_summary({**base, "status": "failed"})
        raise oom from None
    finally:
        _shutdown(dist)
    summary = None
    if dist.main:
        _interpret(cfg, run, splits, model, pipeline, device)
        summary = _finish(run, splits, result, base)
        images = {name: run.file(f"{name}.png") for name in ("curves", "confusion", "top_losses", "lr_find")}
        loggers.log_finish(result["steps"], images, [run.file("summary.json"), run.file("per_class.csv")], summary)
    loggers.close("complete")
    return RunResult(run.path, summary=summary)


def _lr_auto(cfg: Config, model, pipeline, splits, device, dist) -> tuple[Config, Any]:
    """`lr: auto`: rank 0 sweeps (lr_find.py) and every rank trains with its suggestion."""
    import math

    from .distributed import broadcast_object
    from .lr_find import sweep_lr

    sweep = None
    if dist.main:
        from ..models.build import head_parameter_names

        log("lr: auto — sweeping the learning rate first (fastai's lr_find, valley rule)")
        sweep = sweep_lr(cfg, model.to(device), head_parameter_names(model), pipeline, splits.train, device)
        if not math.isfinite(sweep.suggestion):
            raise TrainingError("the lr sweep found no usable learning rate (the loss was never finite); give --lr")
        log(f"lr-find: suggested lr {sweep.suggestion:.3g} (swept {sweep.start:g} to {sweep.end:g} in {len(sweep.lrs)} steps)")
    lr = broadcast_object(sweep.suggestion if sweep else None, dist)
    return dataclasses.replace(cfg, lr=float(lr)), sweep


def _interpret(cfg: Config, run: RunDir, splits, model, pipeline, device) -> None:
    """Most-confused pairs come from the confusion matrix (in _finish); this pass over the eval split
    with the evaluated weights (the EMA when there is one) gives predictions.csv and top_losses.png.
    Its failure is a warning: the finished run is kept either way."""
    try:
        import torch

        from .interpret import predict_split
        from .loop import autocast_for

        if cfg.ema:
            ema = torch.load(run.last_ckpt, map_location="cpu", weights_only=True).get("ema")
            if ema is not None:
                model.load_state_dict(ema)
        predictions = predict_split(model, pipeline, splits.eval, autocast_for(cfg, device))
        run.write_interpretation(predictions, splits.eval, splits.classes, pipeline.crop_pct, splits.eval_split)
    except Exception as e:  # noqa: BLE001 - a finished run is never lost to its extras
        log(f"[yellow]warning: no top_losses.png / predictions.csv ({type(e).__name__}: {str(e)[:200]})[/]")


def _init_head(cfg: Config, model, pipeline, splits, device, dist) -> dict:
    """The new classifier's start (train/head.py), logged; what it returns goes in summary.json."""
    from .head import init_head
    from .loop import autocast_for

    fitted = init_head(cfg, model, pipeline, splits.train, len(splits.classes), autocast_for(cfg, device), dist)
    if fitted:
        log(f"head: the class means of {fitted['head_images']} training images' frozen features (nearest class mean; "
            f"train top-1 {fitted['head_train_top1']:.1f} %, {fitted['head_s']:.1f} s)")
    return fitted or {"head_init": cfg.head_init}


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

    from .. import __version__

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "rextransfer": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "timm": timm.__version__, "platform": platform.platform(),
        "device": str(device), "gpu": gpu, "cuda": torch.version.cuda, "world_size": dist.world,
        "timm_name": backbone.timm_name, "weight_tag": backbone.weight_tag, **_weights_record(backbone),
        "pretrained_source": backbone.pretrained_source, "weights_check": weight_source,
        "preprocessing": {**backbone.data_config, "img_size": cfg.img_size,
                          "crop_pct_used": cfg.crop_pct or backbone.data_config.get("crop_pct")},
        "data": {"source": splits.source, "train_size": len(splits.train), "eval_size": len(splits.eval),
                 "eval_split": splits.eval_split, "headline_metric": splits.metric, **splits.notes},
        "bad_files": {k: dict(v.counts) for k, v in scans.items()},
        "classes": splits.classes,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _weights_record(backbone) -> dict:
    """What the weights really were, for env.json and summary.json: a --weights file by path and
    sha256 (its weight_tag is "file:<sha256 prefix>", not the hub tag its preprocessing comes from)."""
    if not backbone.weights_file:
        return {}
    return {"weights_file": backbone.weights_file, "weights_sha256": backbone.weights_sha256,
            "weights_layout": backbone.weights_layout}


def _summary_base(cfg, run, splits, backbone, costs, device) -> dict:
    from .distributed import device_name

    return {
        "run_name": run.path.name, "dataset": run.path.parent.name, "model": cfg.model, "width": cfg.width,
        "timm_name": backbone.timm_name, "weight_tag": backbone.weight_tag, "pretrained": cfg.pretrained,
        **_weights_record(backbone),
        "recipe": cfg.recipe, "seed": cfg.seed, "img_size": cfg.img_size, "num_classes": len(splits.classes),
        "train_size": len(splits.train), "eval_size": len(splits.eval), "eval_split": splits.eval_split,
        "headline_metric": splits.metric, "params_m": costs["params_m"], "gmacs": costs["gmacs"], "device": device_name(device),
    }


def _finish(run: RunDir, splits, result: dict, base: dict) -> dict:
    from .interpret import most_confused

    last = dict(result["last_eval"])
    confusion = last.pop("confusion")
    train_speeds = [r["train_img_per_s"] for r in run.metrics() if r.get("train_img_per_s")]
    summary = {
        **base, "status": "complete",
        "headline": last.get(splits.metric),
        "final": {k: last.get(k) for k in ("top1", "top5", "mean_class_acc", "loss")},
        "best": result["best"], "epochs": result["epochs"], "steps": result["steps"],
        "stopped_early": result["stopped_early"],
        "train_img_per_s": sorted(train_speeds)[len(train_speeds) // 2] if train_speeds else None,
        "eval_img_per_s": last.get("eval_img_per_s"), "wall_time_s": result["wall_time_s"],
        "most_confused": most_confused(confusion, splits.classes),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    run.write_results(confusion, splits.classes, splits.metric, splits.eval_split)
    run.write_summary(summary)  # last: a summary marked complete means every other file is there
    return summary


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
