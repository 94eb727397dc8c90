"""Using a finished run: load its model, evaluate it on a split, predict classes for images.

Results are returned, never printed: `cli/evaluate.py` and `cli/predict.py` report them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config.settings import from_dict
from ..core.console import log
from ..core.errors import DataError, RunError, UsageError
from .rundir import RunDir, state_dict_mismatch


def load_run_model(run_dir: Path, checkpoint: str = "best", device: str = "cpu"):
    """(model in eval mode on device, cfg, classes, data_config) of a run folder."""
    run = RunDir(Path(run_dir))
    if not run.path.exists():
        raise RunError(f"run folder not found: {run.path}")
    cfg = run.settings()
    env = run.env()
    classes = env["classes"]
    if checkpoint not in ("best", "last"):
        raise UsageError(f"--checkpoint must be best or last; got {checkpoint!r}")
    path = run.best_ckpt if checkpoint == "best" else run.last_ckpt
    if not path.exists():
        raise RunError(f"{path} not found; the run has not evaluated yet (try --checkpoint last)")
    import torch  # after the checks: a damaged run folder is refused at once

    from .distributed import select_device
    from ..models.build import build_backbone

    cfg = from_dict({**cfg.to_dict(), "pretrained": False, "weights_file": ""}, "run")
    backbone = build_backbone(cfg, num_classes=len(classes))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    except Exception as e:  # torn, truncated or foreign file
        raise RunError(f"cannot load {path}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    mismatch = state_dict_mismatch(backbone.model, state)
    if mismatch:
        raise RunError(f"{path} does not fit the run's model ({cfg.model} x{cfg.width:g}, {len(classes)} classes "
                       f"in env.json): {mismatch}")
    backbone.model.load_state_dict(state)
    data_config = {k: v for k, v in env["preprocessing"].items() if k in ("input_size", "interpolation", "mean", "std", "crop_pct")}
    dev = select_device(device)
    return backbone.model.to(dev).eval(), cfg, classes, data_config


def evaluate_run(run_dir: Path, *, split: str, checkpoint: str, device: str) -> dict:
    """Metrics of a run's checkpoint on one of its dataset's splits, without the images the run's
    pre-flight scan skipped (bad_files.csv) or that the same scan finds unusable now."""
    run = RunDir(Path(run_dir))
    model, cfg, classes, data_config = load_run_model(run_dir, checkpoint, device)
    from ..data import get_splits
    from ..data.pipeline import Pipeline
    from ..data.scan import scan_samples
    from .loop import autocast_for, evaluate

    splits = get_splits(cfg)
    if splits.classes != classes:
        raise DataError("the dataset's classes no longer match the run's (data changed since training)")
    choices = {"eval": splits.eval, "train": splits.train, **splits.extra}
    if split not in choices:
        raise UsageError(f"split {split!r} not available for this dataset; choose from {', '.join(choices)}")
    samples = choices[split]
    skipped = run.skipped()
    scan = scan_samples(samples, policy="skip", workers=cfg.workers)  # cached per file: instant after training
    usable = [i for i in scan.good if samples.key(i) not in skipped]
    left_out = len(samples) - len(usable)
    if left_out:
        log(f"[yellow]{left_out} of {len(samples)} images left out (unusable, as in the run's pre-flight scan)[/]")
    if not usable:
        raise DataError(f"no usable images in the {split} split of {cfg.dataset}")
    samples = samples.subset(usable)
    device_ = next(model.parameters()).device
    pipeline = Pipeline(cfg, data_config, device_)
    # the run's own precision: an evaluation reproduces the numbers training reported
    metrics, _, speed = evaluate(model, pipeline, samples, len(classes), autocast_for(cfg, device_))
    result = {"run": str(run_dir), "split": split if split != "eval" else splits.eval_split, "checkpoint": checkpoint,
              "images": len(samples), "skipped": left_out, "headline_metric": splits.metric, **metrics, "img_per_s": speed}
    return result


def predict_images(run_dir: Path, images: list[Path], *, top_k: int, checkpoint: str, device: str) -> list[dict]:
    """Top-k classes with probabilities for each image."""
    import torch

    from ..data.base import FileSamples
    from ..data.images import ImageDecodeError, open_rgb
    from ..data.pipeline import Pipeline

    if top_k < 1:
        raise UsageError("--top-k must be at least 1")
    for path in images:
        if not Path(path).is_file():
            raise DataError(f"image not found: {path}")
        try:
            open_rgb(path)
        except ImageDecodeError as e:
            raise DataError(f"cannot read {path}: {e.reason} ({e.detail})") from None
    model, cfg, classes, data_config = load_run_model(run_dir, checkpoint, device)
    device_ = next(model.parameters()).device
    # a few loose images: decode them directly, no pixel cache and no worker processes
    pipeline = Pipeline(dataclasses.replace(cfg, cache=False, workers=0), data_config, device_)
    samples = FileSamples(images, [0] * len(images), classes, "predict")
    k = min(top_k, len(classes))
    results = []
    with torch.no_grad():
        done = 0
        for batch, _ in pipeline.eval_batches(samples):
            probs = model(batch).float().softmax(dim=1)
            values, indices = probs.topk(k, dim=1)
            for v, i in zip(values.tolist(), indices.tolist()):
                results.append({"image": str(images[done]), "top": [{"class": classes[c], "index": c, "prob": p} for p, c in zip(v, i)]})
                done += 1
    return results
