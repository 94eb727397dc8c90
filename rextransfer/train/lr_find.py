"""A learning-rate sweep (fastai's `lr_find`) that leaves the model exactly as it found it.

    lr at step i = start * (end / start) ** (i / (steps - 1)), one optimizer step per lr
    loss curve: exponentially smoothed (beta 0.98, bias-corrected, as fastai records it); the
      sweep stops early once the smoothed loss passes 4x its minimum (fastai's stop_div) or is
      not finite
    suggestion: fastai's "valley" rule on the curve without its first tenth and last 5 points:
      the longest stretch over which the loss keeps falling, and a point about halfway into
      its middle third

The sweep uses the run's optimizer, parameter groups (head multiplier, layer decay), batch,
precision and BN-momentum settings, all parameters trainable, and the plain (smoothed-label)
cross-entropy; mixup is left out. Weights, BN statistics, requires_grad flags and every RNG are
restored afterwards, so `finetune --lr auto` trains bit-identically to `finetune --lr <suggestion>`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.settings import Config
from ..core.console import log
from ..core.errors import TrainingError

START_LR, END_LR, SWEEP_STEPS = 1e-7, 10.0, 200  # fastai's range; "a few hundred" steps (fastai: 100) for a smoother curve
BETA, DIVERGE = 0.98, 4.0                         # fastai's Recorder smoothing and stop_div factor


@dataclass
class LrSweep:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)     # raw loss of each step
    smoothed: list[float] = field(default_factory=list)   # what the rule reads
    suggestion: float = math.nan
    start: float = START_LR
    end: float = END_LR
    steps: int = SWEEP_STEPS                               # planned; len(lrs) = steps taken
    stopped_early: bool = False

    def record(self) -> dict[str, Any]:
        """What a run folder keeps of the sweep (env.json), without the curve itself."""
        return {"suggested_lr": self.suggestion, "rule": "valley", "start_lr": self.start, "end_lr": self.end,
                "planned_steps": self.steps, "steps": len(self.lrs), "stopped_early": self.stopped_early}


def sweep_lr(cfg: Config, model, head_names: set[str], pipeline, samples, device, *,
             start: float = START_LR, end: float = END_LR, steps: int | None = None) -> LrSweep:
    """Run the sweep on `model` (on `device`) over the training `samples`; restores everything.
    steps: None = SWEEP_STEPS (read at call time)."""
    import torch
    import torch.nn.functional as F

    from .loop import autocast_for
    from .optim import apply_bn_momentum, make_optimizer
    from .state import rng_state, set_rng_state

    steps = SWEEP_STEPS if steps is None else steps
    if not (0 < start < end) or steps < 2:
        raise TrainingError(f"lr sweep needs 0 < start ({start:g}) < end ({end:g}) and at least 2 steps ({steps})")
    result = LrSweep(start=start, end=end, steps=steps)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    rngs, was_training = rng_state(), model.training
    try:
        apply_bn_momentum(model, cfg, pipeline.steps_per_epoch(len(samples)))
        optimizer = make_optimizer(model, dataclasses.replace(cfg, lr=start), head_names)
        autocast = autocast_for(cfg, device)
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        batches = (b for epoch in itertools.count() for b in pipeline.train_batches(samples, epoch))
        avg, best = 0.0, math.inf
        for i in range(steps):
            lr = start * (end / start) ** (i / (steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss_sum = 0.0
            for _ in range(cfg.grad_accum):
                images, labels = next(batches)
                with autocast():
                    logits = model(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
                (loss / cfg.grad_accum).backward()
                loss_sum += loss.item() / cfg.grad_accum
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            avg = BETA * avg + (1 - BETA) * loss_sum
            smooth = avg / (1 - BETA ** (i + 1))
            result.lrs.append(lr)
            result.losses.append(loss_sum)
            result.smoothed.append(smooth)
            best = min(best, smooth)
            if not math.isfinite(smooth) or smooth > DIVERGE * best:
                result.stopped_early = i < steps - 1
                break
    finally:
        model.load_state_dict(saved)
        for name, p in model.named_parameters():
            p.requires_grad_(grad_flags[name])
            p.grad = None
        model.train(was_training)
        set_rng_state(rngs)
    result.suggestion = valley(result.lrs, result.smoothed)
    return result


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's "valley" suggestion (see the module docstring); an lr from `lrs`."""
    n_all = len(lrs)
    if n_all == 0:
        return math.nan
    lo, hi = n_all // 10, n_all - 5  # fastai drops the first tenth and the last 5 points
    if hi - lo < 3:
        lo, hi = 0, n_all
    xs, ys = lrs[lo:hi], losses[lo:hi]
    finite = next((k for k, y in enumerate(ys) if not math.isfinite(y)), len(ys))
    xs, ys = xs[:finite], ys[:finite]
    n = len(ys)
    if n == 0:
        return lrs[0]
    # run[i]: length of the longest strictly falling sequence of losses that ends at point i
    run = [1] * n
    for i in range(1, n):
        run[i] = 1 + max((run[j] for j in range(i) if ys[i] < ys[j]), default=0)
    end = max(range(n), key=lambda i: (run[i], -i))  # the earliest point ending the longest valley
    begin = end - run[end]
    third = (end - begin) / 3
    index = min(n - 1, max(0, begin + int(third) + int(third / 2)))
    return float(xs[index])


def plot_sweep(path: Path, sweep: LrSweep, title: str) -> Path:
    """lr_find.png: the smoothed loss against lr (log axis), the suggestion marked."""
    from ..core import plots

    finite = [y for y in sweep.smoothed if math.isfinite(y)]
    # the interesting part is below the start: clip the divergent tail so it does not flatten the valley
    ylim = None
    if finite:
        lo, first = min(finite), finite[0]
        ylim = (lo - 0.1 * abs(first - lo) - 1e-3, max(first, lo) + 0.6 * abs(first - lo) + 1e-3)
    at = sweep.lrs.index(sweep.suggestion) if sweep.suggestion in sweep.lrs else None
    # the smoothed curve only, as fastai plots it: single-step losses are too noisy to read
    series = [{"label": "training loss (smoothed)", "x": sweep.lrs, "y": sweep.smoothed}]
    if at is not None:
        series.append({"label": f"suggested lr {sweep.suggestion:.2g} (valley)", "x": [sweep.suggestion],
                       "y": [sweep.smoothed[at]], "line": False, "marker": True,
                       "point_labels": [f"{sweep.suggestion:.2g}"]})
    steps = f"{len(sweep.lrs)} of {sweep.steps} steps" + (", stopped: loss diverged" if sweep.stopped_early else "")
    return plots.line_panels(path, [{
        "title": f"lr sweep {sweep.start:g} → {sweep.end:g} ({steps})", "xlabel": "learning rate (log)",
        "ylabel": "training loss", "xlog": True, "ylim": ylim, "series": series}],
        title=title, panel_size=(640, 400))


def run_lr_find(dataset: str, *, recipe: str | None, flags: dict, sets: list[str], config_file: Path | None,
                start: float = START_LR, end: float = END_LR, steps: int = SWEEP_STEPS) -> tuple[LrSweep, Config, Any]:
    """`rextransfer lr-find`: the run's settings, data and model as finetune would build them
    (its --dry-run path, so the set-up rules exist once), then the sweep. Returns (sweep, cfg, splits)."""
    from ..data.pipeline import Pipeline
    from ..models.build import head_parameter_names
    from .distributed import select_device
    from .run import run_finetune

    plan = run_finetune(dataset, recipe=recipe, flags=flags, sets=sets, config_file=config_file, dry_run=True).dry_run
    cfg, backbone = plan.cfg, plan.backbone
    device = select_device(cfg.device)
    model = backbone.model.to(device)
    pipeline = Pipeline(cfg, backbone.data_config, device)
    pipeline.prepare(plan.splits.train)
    log(f"lr sweep: {steps} steps from {start:g} to {end:g} on {len(plan.splits.train)} training images")
    sweep = sweep_lr(cfg, model, head_parameter_names(model), pipeline, plan.splits.train, device,
                     start=start, end=end, steps=steps)
    return sweep, cfg, plan.splits
