"""Penultimate-feature analysis (`rextransfer analyze features`): rank and nuclear norm of a
backbone's features on real images.

`feature_spectrum` computes the singular values, numerical rank and normalised nuclear norm of a
backbone's penultimate features on real images, the measure the ReXNet paper (Han et al., CVPR
2021) uses to compare ReXNet with MobileNetV2; here it compares backbones, or a model before and
after fine-tuning. Sources (`source_from_run`, `source_from_model`) name what to measure,
`extract_features` collects the features, `write_feature_results` writes the outputs.

Numerical rank is `rextransfer.analyze.numerical_rank` (singular values above `rtol * s_max`); the
single-layer rank study lives in `rextransfer.analyze`.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .layers import environment, numerical_rank

NORMALIZATIONS = ("max", "fro", "none")


def feature_spectrum(features: torch.Tensor, *, rtol: float = 1e-4, normalize: str = "max",
                     center: bool = False) -> dict[str, Any]:
    """Rank and nuclear norm of an (images x channels) feature matrix.

    normalize: "max" divides the matrix by its largest singular value, so the nuclear norm is
    sum(s_i) / s_max, between 1 and the rank (an "effective rank" that does not depend on the
    feature scale); "fro" divides by the Frobenius norm (nuclear norm between 1 and sqrt(rank));
    "none" reports the raw sum of singular values. center subtracts the mean feature first (off by
    default: the paper measures the rank of the features as they are).
    """
    if normalize not in NORMALIZATIONS:
        from ..core.errors import UsageError

        raise UsageError(f"--normalize must be one of {', '.join(NORMALIZATIONS)}; got {normalize!r}")
    m = features.detach().to("cpu", torch.float64)
    if center:
        m = m - m.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(m)
    s_max = float(s.max()) if s.numel() else 0.0
    scale = {"max": s_max, "fro": float(s.norm()), "none": 1.0}[normalize] or 1.0
    rank = numerical_rank(s, rtol)
    return {
        "images": m.shape[0], "channels": m.shape[1], "rank": rank,
        "rank_ratio": rank / max(1, min(m.shape)), "nuclear_norm": float(s.sum()) / scale,
        "normalize": normalize, "center": center, "rtol": rtol, "s_max": s_max,
        "singular_values": (s / (s_max or 1.0)).tolist(),  # relative to the largest
    }


@dataclass
class FeatureSettings:
    """Settings of the feature-spectrum analysis; written beside the results."""

    split: str = "eval"             # which split's images: eval (the run's), train, or a named extra split (test, val)
    limit: int = 1000               # at most this many images (a seeded random subset); 0 = all
    img_size: int = 0               # crop size, px; 0 = the run's img_size / the weights' input size
    batch_size: int = 64            # images per forward pass
    rtol: float = 1e-4              # numerical rank: singular values > rtol * s_max
    normalize: str = "max"          # nuclear norm of the matrix divided by: max (s_max) | fro | none
    center: bool = False            # subtract the mean feature before the SVD
    seed: int = 0                   # seeds the image subset and random-init models
    checkpoint: str = "best"        # run folders: best | last
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    workers: int = 0                # data loader workers (0 = decode in this process)


@dataclass
class Source:
    """One thing to measure: a fine-tuned run or a timm backbone, and the images to feed it."""

    label: str
    model: torch.nn.Module
    cfg: Any                        # rextransfer Config: data and preprocessing settings
    data_config: dict
    info: dict                      # recorded in the results (run dir, timm name, weights)


def source_from_run(run_dir, settings: FeatureSettings, dataset: str | None = None, data_root: str = "") -> Source:
    """A run folder's fine-tuned model, on its own dataset (and data root) unless given others."""
    import dataclasses
    from pathlib import Path

    from ..train.inference import load_run_model

    model, cfg, classes, data_config = load_run_model(Path(run_dir), settings.checkpoint, "cpu")
    cfg = dataclasses.replace(cfg, dataset=dataset or cfg.dataset, data_root=data_root or cfg.data_root,
                              img_size=settings.img_size or cfg.img_size)
    label = f"{Path(run_dir).name} ({settings.checkpoint})"
    return Source(label, model, cfg, data_config,
                  {"run_dir": str(run_dir), "checkpoint": settings.checkpoint, "model": cfg.model,
                   "width": cfg.width, "dataset": cfg.dataset})


def source_from_model(name: str, width: float, pretrained: bool, settings: FeatureSettings,
                      dataset: str, data_root: str = "", img_size: int = 0, weights_file: str = "") -> Source:
    """A backbone as published (ImageNet weights) or randomly initialised (seeded), fed `img_size`
    crops (settings.img_size wins; 0 = the weights' input size)."""
    import dataclasses

    from ..config.settings import Config
    from ..models.build import build_backbone
    from ..models.registry import REXNET_ANY_WIDTH

    cfg = Config(dataset=dataset, data_root=data_root, model=name, width=width, pretrained=pretrained,
                 weights_file=weights_file, seed=settings.seed)
    torch.manual_seed(settings.seed)  # random init is reproducible
    backbone = build_backbone(cfg, num_classes=1000)
    cfg = dataclasses.replace(cfg, img_size=settings.img_size or img_size or int(backbone.data_config["input_size"][-1]))
    scaled = name == "rexnet" and backbone.timm_name == REXNET_ANY_WIDTH and width != 1.0
    label = backbone.weight_tag or f"{backbone.timm_name}{f' x{width:g}' if scaled else ''} (random init)"
    return Source(label, backbone.model, cfg, backbone.data_config,
                  {"model": name, "width": width, "timm_name": backbone.timm_name,
                   "weight_tag": backbone.weight_tag, "pretrained": pretrained, "dataset": dataset})


def split_samples(splits, split: str):
    """The SampleSet named `split` of a DataSplits: eval, train, or one of its extra splits."""
    from ..core.errors import UsageError

    if split == "eval":
        return splits.eval
    if split == "train":
        return splits.train
    if split in splits.extra:
        return splits.extra[split]
    names = ", ".join(["eval", "train", *splits.extra])
    raise UsageError(f"no split {split!r} in this dataset; choose from {names}")


@torch.no_grad()
def extract_features(source: Source, settings: FeatureSettings,
                     progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, dict]:
    """Penultimate features (timm forward_features + forward_head(pre_logits=True)) of a split,
    preprocessed by the trainer's eval pipeline (resize, center crop, normalise).

    Returns (features [images x channels] float32 on CPU, data info). With limit > 0 and a
    larger split, a seeded random subset of `limit` images is used.
    """
    import dataclasses

    from ..data import get_splits
    from ..train.distributed import select_device
    from ..data.pipeline import Pipeline

    samples = split_samples(get_splits(source.cfg), settings.split)
    if len(samples) == 0:
        from ..core.errors import DataError

        raise DataError(f"split {settings.split!r} of {source.cfg.dataset} has no images")
    indices = list(range(len(samples)))
    if 0 < settings.limit < len(indices):
        indices = sorted(random.Random(settings.seed).sample(indices, settings.limit))
        samples = samples.subset(indices)
    device = select_device(settings.device)
    # The eval batch of Pipeline is 2 x micro-batch; no pixel cache: the images are read once.
    cfg = dataclasses.replace(source.cfg, cache=False, workers=settings.workers, grad_accum=1,
                              batch_size=max(1, settings.batch_size // 2), channels_last="off")
    pipeline = Pipeline(cfg, source.data_config, device)
    model = source.model.eval().to(device)
    chunks, done = [], 0
    for x, _ in pipeline.eval_batches(samples):
        chunks.append(model.forward_head(model.forward_features(x), pre_logits=True).float().flatten(1).cpu())
        done += len(x)
        if progress:
            progress(done, len(samples))
    info = {"dataset": str(source.cfg.dataset), "split": settings.split, "images": len(samples),
            "img_size": cfg.img_size, "device": str(device)}
    return torch.cat(chunks), info


def spectrum_panels(results: dict[str, dict]) -> list[dict]:
    """Relative singular values (log y) and the cumulative share of the nuclear norm, per source."""
    rel, cum = [], []
    for label, r in results.items():
        s = r["singular_values"]
        idx = list(range(1, len(s) + 1))
        rel.append({"label": label, "x": idx, "y": s})
        cum.append({"label": label, "x": idx, "y": [v / (sum(s) or 1.0) for v in itertools.accumulate(s)]})
    return [
        {"title": "singular values / largest", "xlabel": "index", "ylabel": "s_i / s_max", "ylog": True, "series": rel},
        {"title": "cumulative share of the nuclear norm", "xlabel": "index", "ylabel": "share", "ylim": (0, 1.0), "series": cum},
    ]


# ------------------------------------------------------------------------------------------------
# Result files
# ------------------------------------------------------------------------------------------------
def write_feature_results(out_dir, settings: FeatureSettings, results: dict[str, dict],
                          features: dict[str, torch.Tensor] | None = None) -> dict[str, Path]:
    """features.json (per source: rank, nuclear norm, spectrum, data), spectrum.png, settings.json;
    with `features`, also features.safetensors (the matrices, keyed source_0, source_1, ...)."""
    from ..core import plots
    from ..core.files import write_json, write_with

    out = Path(out_dir)
    paths = {"json": out / "features.json", "png": out / "spectrum.png", "settings": out / "settings.json"}
    write_json(paths["json"], {"settings": asdict(settings), "results": results})
    plots.line_panels(paths["png"], spectrum_panels(results), title="Penultimate feature spectrum", ncols=2)
    write_json(paths["settings"], {"analysis": "features", **asdict(settings), **environment()})
    if features:
        from safetensors.torch import save_file

        paths["features"] = out / "features.safetensors"
        tensors = {f"source_{i}": f.contiguous() for i, f in enumerate(features.values())}
        write_with(paths["features"], lambda p: save_file(tensors, str(p), metadata={
            f"source_{i}": label for i, label in enumerate(features)}))
    return paths
