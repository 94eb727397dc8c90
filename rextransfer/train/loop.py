"""The training loop: epochs -> optimizer steps -> micro-batches; evaluate; checkpoint.

Read `train()` top to bottom: set-up, resume, then epochs of `train_step` calls, each epoch closed
by `end_of_epoch` (record, evaluate, keep the best). Optimizer groups and the lr schedule are in
optim.py, the resumable state in state.py. Exactness contract: a run interrupted at any
step boundary and resumed ends with bit-identical weights and metrics on CPU, because
  * data order and augmentation are pure functions of (seed, epoch, step) (see pipeline.py),
  * everything else random (dropout, mixup, head init) uses the global RNGs, saved in last.pt.

No host-device sync in the step loop except where a value is needed: a step's losses stay on the
device, and `read_losses` reads them every `log_every` steps and at the end of an epoch (the
progress bar is updated then), adds them to the epoch's sum in step order (so the sums do not
depend on log_every), and stops every rank at the first non-finite one, before anything is saved.
Under DDP the same read also tells every rank whether any rank got Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.settings import Config
from ..core.console import log
from ..core.errors import Interrupted, TrainingError
from ..data.base import DataSplits
from .distributed import Dist, broadcast_state, shard
from .loggers import Loggers
from .metrics import Accumulator
from .optim import apply_bn_momentum, lr_factor, make_optimizer, set_backbone_trainable
from .rundir import RunDir
from .state import StopSignal, TrainState, new_epoch_acc, rng_state, set_rng_state


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
def autocast_for(cfg: Config, device: torch.device):
    """A factory of autocast contexts: bf16 when cfg.amp asks for it (auto = on CUDA), else none."""
    use_amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

    return autocast


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


@torch.no_grad()
def evaluate(model: nn.Module, pipeline: Any, samples: Any, num_classes: int, autocast: Any,
             dist: Dist | None = None) -> tuple[dict, torch.Tensor, float]:
    """Metrics, confusion matrix and images/s of `model` on a split.

    With several processes (`dist`), each one evaluates a contiguous block of the split's eval
    batches -- the very batches one process would see -- and the counts are all-reduced, so every
    rank returns exactly the single-process numbers. Nothing is read from the device per batch."""
    dist = dist or Dist()
    was_training = model.training
    model.eval()
    acc = Accumulator(num_classes, device=next(model.parameters()).device)
    start = time.perf_counter()
    n, eb = len(samples), pipeline.eval_batch()
    first, last = shard(math.ceil(n / eb), dist.rank, dist.world)
    for images, labels in pipeline.eval_batches(samples, start=first * eb, stop=min(n, last * eb)):
        with autocast():
            logits = model(images)
        acc.update(logits, labels)
    acc.all_reduce(dist.world)
    metrics = acc.result()  # reads the counts: the device has finished
    seconds = time.perf_counter() - start
    model.train(was_training)
    return metrics, acc.confusion_matrix(), acc.count / max(seconds, 1e-9)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
@dataclass
class Trainer:
    """What the loop works with: fixed for the whole run once `train()` has set it up."""

    cfg: Config
    run: RunDir
    splits: DataSplits
    model: nn.Module           # the bare model (weights, EMA source, checkpoints)
    train_model: nn.Module     # what the step calls: the model, maybe compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    ema: Any                   # timm ModelEmaV3 or None
    mixup: Any                 # timm Mixup or None
    loss_fn: Any               # cross-entropy (smoothed) or, with mixup, soft-target cross-entropy
    pipeline: Any
    dist: Dist
    autocast: Any
    total_steps: int
    steps_per_epoch: int
    loggers: Any = None        # experiment loggers (loggers.py); empty off rank 0


def train(cfg: Config, run: RunDir, splits: DataSplits, model: nn.Module, head_names: set[str],
          pipeline: Any, device: torch.device, dist: Dist, checkpoint: dict | None = None,
          loggers: Any = None) -> dict:
    """Train `model` on splits.train, evaluating on splits.eval; returns the final state as a dict
    (metrics of the last evaluation, best so far, timings). Rank 0 writes the run folder."""
    steps_per_epoch = pipeline.steps_per_epoch(len(splits.train))
    total_steps = cfg.steps or cfg.epochs * steps_per_epoch

    # -- model, optimizer, EMA, mixup, loss ----------------------------------------------------
    apply_bn_momentum(model, cfg, steps_per_epoch)
    optimizer = make_optimizer(model, cfg, head_names)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    mixup = None
    loss_fn: Any = _CrossEntropy(cfg.label_smoothing)
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                      label_smoothing=cfg.label_smoothing, num_classes=len(splits.classes))
        loss_fn = SoftTargetCrossEntropy()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: cuDNN times its kernels once, keeps the fastest
    train_model: nn.Module = torch.compile(model) if cfg.compile else model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Head-only epochs leave backbone params without grads: DDP must then look for unused ones.
        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None,
                          find_unused_parameters=cfg.probe_epochs > 0)
    t = Trainer(cfg, run, splits, model, train_model, optimizer, ema, mixup, loss_fn, pipeline, dist,
                autocast_for(cfg, device), total_steps, steps_per_epoch, loggers if loggers is not None else Loggers())

    # -- where we start: fresh, or exactly where a checkpoint left off --------------------------
    state = TrainState()
    if checkpoint:
        state = TrainState.from_dict(checkpoint.get("state"), str(run.path))
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if ema is not None and checkpoint.get("ema") is not None:
            ema.module.load_state_dict(checkpoint["ema"])
        set_rng_state(checkpoint["rng"])
        if dist.main:  # a kill between checkpoint and log line, or after the log line: the checkpoint decides
            run.rewrite_metrics(state.history)
            log(f"resuming at epoch {state.epoch + 1}, step {state.step}/{total_steps}")
    wall_before, wall_start = state.wall_time_s, time.perf_counter()

    saved_at = state.step

    def save_last() -> None:
        nonlocal saved_at
        _check_finite_weights(t, state, saved_at)
        saved_at = state.step
        if dist.main:
            state.wall_time_s = wall_before + time.perf_counter() - wall_start
            run.save_last({"state": state.to_dict(), "model": unwrap(model).state_dict(),
                           "optimizer": optimizer.state_dict(),
                           "ema": ema.module.state_dict() if ema is not None else None,
                           "rng": rng_state(), "config": cfg.to_dict()})

    # -- the epochs -------------------------------------------------------------------------------
    from ..core.progress import TrainProgress

    stopped_early = False
    pending: list = []  # the micro-batch losses (on the device) of steps not read yet
    with StopSignal() as stop, TrainProgress(total_steps, enabled=dist.main) as bar:
        bar.advance_to(state.step)
        while state.step < total_steps and not stopped_early:
            probing = state.epoch < cfg.probe_epochs
            model.train()
            set_backbone_trainable(model, head_names, trainable=not probing)
            batches = iter(pipeline.train_batches(splits.train, state.epoch, start_step=state.step_in_epoch))
            tick = time.perf_counter()
            while state.step_in_epoch < steps_per_epoch and state.step < total_steps:
                losses, lr = train_step(t, state, batches)
                pending.append(losses)
                epoch_done = state.step_in_epoch == steps_per_epoch or state.step == total_steps
                if not (state.step % cfg.log_every == 0 or epoch_done or (dist.world == 1 and stop.received)):
                    continue  # nothing is read from the device between reads
                mean_loss, stopping = read_losses(t, state, pending, stop)
                bar.update(state.step, loss=mean_loss, lr=lr,
                           img_s=state.epoch_acc["seen"] / max(1e-9, state.epoch_acc["train_s"] + time.perf_counter() - tick))
                t.loggers.log_step(state.step, {"loss": mean_loss, "lr": lr})  # every log_every steps
                if stopping:
                    state.epoch_acc["train_s"] += time.perf_counter() - tick
                    save_last()
                    raise Interrupted(
                        f"{stop.received or 'stop'} received; saved step {state.step}/{total_steps} to {run.last_ckpt} — "
                        f"resume with: rextransfer finetune --resume {run.path}")
            state.epoch_acc["train_s"] += time.perf_counter() - tick
            stopped_early = end_of_epoch(t, state, probing, bar)
            save_last()  # first the checkpoint (it holds the record), then the log line
            if dist.main:
                run.append_metrics(state.history[-1])
    return {"last_eval": state.last_eval, "best": state.best, "steps": state.step, "epochs": state.epoch,
            "total_steps": total_steps, "stopped_early": stopped_early,
            "wall_time_s": wall_before + time.perf_counter() - wall_start}


def train_step(t: Trainer, state: TrainState, batches) -> tuple[list[torch.Tensor], float]:
    """One optimizer step over `grad_accum` micro-batches; returns (the micro-batch losses, still on
    the device, and the lr) of the step. Nothing here waits for the device."""
    cfg = t.cfg
    factor = lr_factor(state.step, t.total_steps, cfg)
    for group in t.optimizer.param_groups:
        group["lr"] = cfg.lr * group["lr_scale"] * factor
    losses = []
    for micro in range(cfg.grad_accum):
        wait = time.perf_counter()
        images, labels = next(batches)
        state.epoch_acc["data_s"] += time.perf_counter() - wait
        targets = labels
        if t.mixup is not None:
            images, targets = t.mixup(images, labels)
        sync = micro == cfg.grad_accum - 1 or t.dist.world == 1  # DDP all-reduces on the last micro-batch only
        with (contextlib.nullcontext() if sync else t.train_model.no_sync()), t.autocast():
            loss = t.loss_fn(t.train_model(images).float(), targets)
        (loss / cfg.grad_accum).backward()
        losses.append(loss.detach())
        state.epoch_acc["seen"] += labels.shape[0] * t.dist.world
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), cfg.clip_grad)
    t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    if t.ema is not None:
        t.ema.update(t.model, step=state.step)
    state.step += 1
    state.step_in_epoch += 1
    return losses, cfg.lr * factor


def read_losses(t: Trainer, state: TrainState, pending: list, stop: StopSignal) -> tuple[float, bool]:
    """Read the losses of the steps since the last read (the loop's one wait for the device), add
    them to the epoch's sum, and return (their mean, whether any rank got a stop signal).

    A non-finite loss stops every rank with a one-line error naming the step, before anything is
    saved: the checkpoint on disk is the last one whose losses were all finite."""
    cfg = t.cfg
    first = state.step - len(pending) + 1
    values = torch.stack([loss for step in pending for loss in step]).tolist() if pending else []
    pending.clear()
    step_losses = []
    for k in range(0, len(values), cfg.grad_accum):
        step_loss = 0.0
        for v in values[k:k + cfg.grad_accum]:  # summed in this order, as one step always was
            step_loss += v / cfg.grad_accum
        step_losses.append(step_loss)
    bad = next((first + i for i, v in enumerate(step_losses) if not math.isfinite(v)), 0)
    stopping = stop.received is not None
    if t.dist.world > 1:
        bad, stopping = _agree(bad, stopping)
    if bad:
        value = step_losses[bad - first] if bad - first < len(step_losses) else float("nan")
        value_text = f"{value}" if not math.isfinite(value) else "non-finite on another rank"
        raise TrainingError(
            f"loss became {value_text} at step {bad} (checked steps {first}-{state.step}); stopped without saving "
            f"it — {_last_good(t)}; try a lower --lr (now {cfg.lr:g})")
    for v in step_losses:
        state.epoch_acc["loss_sum"] += v
    return (sum(step_losses) / len(step_losses) if step_losses else float("nan")), stopping


def end_of_epoch(t: Trainer, state: TrainState, probing: bool, bar) -> bool:
    """Record the epoch, evaluate (sharded over all ranks) when due, keep the best weights (rank 0
    writes them); True = stop early."""
    cfg, acc = t.cfg, state.epoch_acc
    state.epoch += 1
    state.step_in_epoch = 0
    record = {"epoch": state.epoch, "step": state.step, "lr": cfg.lr * lr_factor(state.step - 1, t.total_steps, cfg),
              "train_loss": acc["loss_sum"] / max(1, t.steps_per_epoch),
              "train_img_per_s": acc["seen"] / max(1e-9, acc["train_s"]),
              "data_wait_share": acc["data_s"] / max(1e-9, acc["train_s"]),
              "probe": probing}
    state.epoch_acc = new_epoch_acc()
    stop = False
    if state.epoch % cfg.eval_every == 0 or state.step >= t.total_steps:
        headline = t.splits.metric
        eval_model = t.ema.module if t.ema is not None else t.model
        if t.dist.world > 1:  # every rank evaluates rank 0's weights (BN stats and EMA may differ per rank)
            broadcast_state(eval_model)
        metrics, confusion, eval_speed = evaluate(eval_model, t.pipeline, t.splits.eval, len(t.splits.classes),
                                                  t.autocast, t.dist)
        state.last_eval = {**metrics, "epoch": state.epoch, "step": state.step, "eval_img_per_s": eval_speed,
                           "confusion": confusion}
        record.update({f"eval_{k}": v for k, v in metrics.items()}, eval_img_per_s=eval_speed)
        if not state.best or metrics[headline] > state.best[headline]:
            state.best = {**metrics, "epoch": state.epoch, "step": state.step}
            state.bad_evals = 0
            if t.dist.main:
                t.run.save_best(unwrap(eval_model).state_dict(), {
                    "epoch": str(state.epoch), "step": str(state.step), "model": cfg.model, "width": str(cfg.width),
                    "num_classes": str(len(t.splits.classes))})
        else:
            state.bad_evals += 1
        epochs = math.ceil(t.total_steps / t.steps_per_epoch)
        bar.note(f"epoch {state.epoch}/{epochs}  {headline} {metrics[headline]:.2f}  loss {metrics['loss']:.3f}")
        stop = bool(cfg.early_stop) and state.bad_evals >= cfg.early_stop  # the same on every rank
    state.history.append(record)
    t.loggers.log_epoch(state.epoch, record)
    return stop


class _CrossEntropy:
    """Cross-entropy with label smoothing, as a loss object like timm's (logits, targets) -> loss."""

    def __init__(self, smoothing: float):
        self.smoothing = smoothing

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=self.smoothing)


def _agree(bad: int, stopping: bool) -> tuple[int, bool]:
    """(the first non-finite step on any rank or 0, whether any rank got a stop signal): one
    all-reduce, at the same step on every rank, so all of them stop together."""
    import torch.distributed as tdist

    device = "cuda" if tdist.get_backend() == "nccl" else "cpu"
    flags = torch.tensor([-float(bad) if bad else -math.inf, 1.0 if stopping else 0.0], dtype=torch.float64, device=device)
    tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
    first_bad, any_stop = flags.tolist()
    return (int(-first_bad) if math.isfinite(first_bad) else 0), any_stop > 0


def _check_finite_weights(t: Trainer, state: TrainState, saved_at: int) -> None:
    """The last step's update is not covered by any loss: never save weights it made non-finite.
    (One read per checkpoint; every rank holds the same weights, so all of them stop together.)"""
    modules = [t.model] + ([t.ema.module] if t.ema is not None else [])
    tensors = [v for m in modules for v in m.state_dict().values() if v.is_floating_point()]
    if tensors and not bool(torch.stack([v.isfinite().all() for v in tensors]).all()):
        raise TrainingError(
            f"the weights became non-finite during steps {saved_at + 1}-{state.step} (the losses were finite); "
            f"stopped without saving them — {_last_good(t)}; try a lower --lr (now {t.cfg.lr:g})")


def _last_good(t: Trainer) -> str:
    if t.run.last_ckpt.exists():
        return f"the last good checkpoint is {t.run.last_ckpt}"
    return "there is no last good checkpoint yet (no epoch had finished)"
