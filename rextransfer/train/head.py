"""Where the new classifier starts: zero (BiT), random (timm's init), or the class means (ncm).

`ncm` imprints the head with the training classes' mean frozen features (Qi et al. 2018,
"Low-shot learning with imprinted weights"; the prototype classifier of Snell et al. 2017) in
the exact linear form of a nearest-class-mean classifier:

    argmin_c |x - mu_c|^2  =  argmax_c  2 mu_c . x - |mu_c|^2     ->  W_c = 2 t mu_c,  b_c = -t |mu_c|^2

so the run's step 0 already predicts what nearest-class-mean on the backbone's frozen features
predicts, and fine-tuning starts from there instead of from uniform predictions. The temperature
t is the one (on a log grid) with the lowest leave-one-out cross-entropy on the training features
(each image against its own class's mean without it); nothing of the evaluation split is looked
at. The features are the penultimate ones (timm's forward_head(pre_logits=True)) of the training
images under the evaluation preprocessing, in eval mode: one inference pass over the training set
before the first step, read from the files (not worth a second pixel cache of the training set
on disk). Under several processes each rank reads its shard and the sums are all-reduced, so every
rank sets the same head.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ModelError
from .distributed import Dist, shard

# log10 temperatures tried, in units of 1/(mean squared feature norm) so the grid fits any scale
LOG10_T = [k / 8 for k in range(-24, 25)]


def init_head(cfg, model: nn.Module, pipeline: Any, samples: Any, num_classes: int, autocast: Any,
              dist: Dist | None = None) -> dict:
    """Set the new classifier as cfg.head_init says; returns what to record ({} for zero/random,
    whose init happened when the model was built)."""
    if cfg.head_init != "ncm":
        return {}
    head = model.get_classifier()
    if not isinstance(head, nn.Linear) or head.out_features != num_classes or head.bias is None:
        raise ModelError(f"head_init=ncm needs a classifier that is one Linear layer with a bias; {cfg.model}'s is {type(head).__name__}: "
                         f"use --set head_init=zero")
    start = time.perf_counter()
    dist = dist or Dist()
    x, y = frozen_features(model, pipeline, samples, autocast, dist, cached=False)  # one pass: not worth a cache
    device = head.weight.device
    sums = torch.zeros(num_classes, x.shape[1], device=device, dtype=torch.float64)
    sums.index_add_(0, y, x.double())
    counts = torch.bincount(y, minlength=num_classes).double()
    scale = torch.stack([x.double().square().sum(), torch.tensor(float(len(y)), device=device, dtype=torch.float64)])
    _all_reduce(dist, sums, counts, scale)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:  # a class with no training image cannot have a mean; the scan would have said so
        raise ModelError(f"head_init=ncm: classes {missing} have no training image, so no mean to start from")
    means = (sums / counts[:, None]).float()
    weight, bias = 2 * means, -means.square().sum(1)
    logits = x @ weight.T + bias
    # The temperature is fitted leave-one-out: an image's own class mean without that image (a
    # mean over 3 images that includes the image sits a third of the way to it, so the fit would
    # see margins wider than unseen images have and pick a head too soft for them: measured on
    # 63 dog photos, temperature 0.0032 -> 0.0043, val loss 0.80 -> 0.59).
    own = counts[y] > 1
    loo_means = ((sums[y] - x.double()) / (counts[y] - 1).clamp(min=1)[:, None]).float()
    loo_own = 2 * (loo_means * x).sum(1) - loo_means.square().sum(1)
    fit_logits = logits.clone()
    fit_logits[own, y[own]] = loo_own[own]
    unit = 1.0 / (scale[0] / scale[1]).item()
    temps = [unit * 10 ** k for k in LOG10_T]
    losses = torch.stack([F.cross_entropy(fit_logits * t, y, reduction="sum", label_smoothing=cfg.label_smoothing)
                          for t in temps]).double()
    _all_reduce(dist, losses)
    best = int(losses.argmin())
    temp = temps[best]
    with torch.no_grad():
        head.weight.copy_((weight * temp).to(head.weight.dtype))
        head.bias.copy_((bias * temp).to(head.bias.dtype))
    hits = torch.stack([(logits.argmax(1) == y).double().sum()])
    _all_reduce(dist, hits)
    n = scale[1].item()
    return {"head_init": "ncm", "head_images": int(n), "head_train_top1": 100 * hits.item() / n,
            "head_train_loss": losses[best].item() / n, "head_temperature": temp,
            "head_s": time.perf_counter() - start}


@torch.no_grad()
def frozen_features(model: nn.Module, pipeline: Any, samples: Any, autocast: Any = contextlib.nullcontext,
                    dist: Dist | None = None, cached: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (timm's forward_head(pre_logits=True), float32) and labels of this
    rank's shard of `samples` (all of them for one process), eval preprocessing, eval mode."""
    dist = dist or Dist()
    was_training = model.training
    model.eval()
    n, eb = len(samples), pipeline.eval_batch()
    first, last = shard(math.ceil(n / eb), dist.rank, dist.world)
    xs, ys = [], []
    for images, labels in pipeline.eval_batches(samples, start=first * eb, stop=min(n, last * eb), cached=cached):
        with autocast():
            features = model.forward_head(model.forward_features(images), pre_logits=True)
        xs.append(features.float().flatten(1))
        ys.append(labels)
    model.train(was_training)
    device = next(model.parameters()).device
    if not xs:
        return torch.zeros(0, model.get_classifier().in_features, device=device), torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(xs), torch.cat(ys).to(device)


def _all_reduce(dist: Dist, *tensors: torch.Tensor) -> None:
    if dist.world == 1:
        return
    import torch.distributed as tdist

    for t in tensors:
        tdist.all_reduce(t)
