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


def predict_images(run_dir: Path, inputs: list, *, top_k: int, checkpoint: str, device: str,
                   tta: str = "none") -> list[dict]:
    """Top-k classes with probabilities for each image of `inputs` (files, folders, glob patterns),
    in batches the size of the run's evaluation; tta "flip" averages the image and its mirror.
    Unreadable images are skipped with a note on stderr (an error if none is left)."""
    import torch

    from ..core.console import log
    from ..data.base import FileSamples
    from ..data.pipeline import Pipeline
    from ..data.scan import scan_samples
    from .loop import autocast_for

    if top_k < 1:
        raise UsageError("--top-k must be at least 1")
    if tta not in TTA:
        raise UsageError(f"--tta must be one of {', '.join(TTA)}; got {tta!r}")
    images = expand_images(inputs)
    model, cfg, classes, data_config = load_run_model(run_dir, checkpoint, device)
    scan = scan_samples(FileSamples(images, [0] * len(images), classes, "predict"), policy="skip",
                        progress=len(images) > 200)
    if scan.bad:
        if not scan.good:
            key, reason = scan.bad[0]
            raise DataError(f"cannot read {key}: {reason}" if len(scan.bad) == 1 else
                            f"none of the {len(scan.bad)} images can be read (first: {key}: {reason})")
        log(f"[yellow]skipped {len(scan.bad)} unreadable image(s) (first: {scan.bad[0][0]}: {scan.bad[0][1]})[/]")
        images = [images[i] for i in scan.good]
    device_ = next(model.parameters()).device
    # decoded straight from the files (no pixel cache); worker processes only pay off for many images
    workers = cfg.workers if len(images) > 64 else 0
    pipeline = Pipeline(dataclasses.replace(cfg, cache=False, workers=workers), data_config, device_)
    samples = FileSamples(images, [0] * len(images), classes, "predict")
    autocast = autocast_for(cfg, device_)
    k = min(top_k, len(classes))
    results = []
    with torch.no_grad():
        for batch, _ in pipeline.eval_batches(samples):
            with autocast():
                probs = model(batch).float().softmax(dim=1)
                if tta == "flip":
                    probs = (probs + model(batch.flip(dims=[3])).float().softmax(dim=1)) / 2
            values, indices = probs.topk(k, dim=1)
            for v, i in zip(values.tolist(), indices.tolist()):
                results.append({"image": str(images[len(results)]),
                                "top": [{"class": classes[c], "index": c, "prob": p} for p, c in zip(v, i)]})
    return results


TTA = ("none", "flip")
_GLOB = set("*?[")


def expand_images(inputs: list) -> list[Path]:
    """Files as given; folders: every image below them (sorted, hidden ones left out); anything
    with * ? [ that is not a path: a glob pattern (** = any depth). Duplicates are kept once."""
    import glob

    from ..data.images import is_image_name

    found: list[Path] = []
    for item in map(str, inputs):
        path = Path(item).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            below = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p.name)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not below:
                raise DataError(f"no images under {path}")
            found += below
        elif _GLOB & set(item):
            matched = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file() and is_image_name(p))
            if not matched:
                raise DataError(f"no images match {item}")
            found += matched
        else:
            raise DataError(f"image not found: {item}")
    return list(dict.fromkeys(found))


def write_predictions(results: list[dict], path: Path) -> None:
    """CSV or JSON (by suffix) in the layout of timm's inference.py: CSV with separate columns
    filename, index_0.., label_0.., prob_0..; JSON keyed by filename with index/label/prob lists."""
    import csv
    import io

    from ..core.files import write_json, write_text

    path = Path(path)
    if path.suffix.lower() == ".json":
        write_json(path, {r["image"]: {"index": [t["index"] for t in r["top"]], "label": [t["class"] for t in r["top"]],
                                       "prob": [t["prob"] for t in r["top"]]} for r in results})
        return
    if path.suffix.lower() != ".csv":
        raise UsageError(f"--output must end in .csv or .json; got {path.name}")
    k = max((len(r["top"]) for r in results), default=0)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["filename", *[f"index_{i}" for i in range(k)], *[f"label_{i}" for i in range(k)],
                *[f"prob_{i}" for i in range(k)]])
    for r in results:
        w.writerow([r["image"], *[t["index"] for t in r["top"]], *[t["class"] for t in r["top"]],
                    *[f"{t['prob']:.6f}" for t in r["top"]]])
    write_text(path, buf.getvalue())
