"""The training loop: epochs -> optimizer steps -> micro-batches; evaluate; checkpoint.

Read `train()` top to bottom: it is the whole algorithm. Everything around it is a small helper
(optimizer groups, lr schedule, checkpoint state). Exactness contract: a run interrupted at any
step boundary and resumed ends with bit-identical weights and metrics on CPU, because
  * data order and augmentation are pure functions of (seed, epoch, step) (see pipeline.py),
  * everything else random (dropout, mixup, head init) uses the global RNGs, saved in last.pt.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config
from .console import err, log
from .data.base import DataSplits
from .errors import Interrupted, TrainingError
from .metrics import Accumulator
from .runs import RunDir


@dataclass
class Dist:
    """Process layout: one process per device under torchrun, else rank 0 of 1."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
def lr_factor(step: int, total: int, cfg: Config) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based) of `total`."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps  # linear warmup, never exactly 0
    if cfg.schedule == "step":
        done = step / max(1, total)
        return cfg.step_gamma ** sum(done >= m for m in cfg.step_milestones)
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, cfg: Config, head_names: set[str]) -> list[dict]:
    """Groups by (lr scale, weight decay): no decay on norms/biases; head lr multiplier;
    optional layer-wise lr decay from timm (deeper layers keep more of the lr)."""
    if cfg.layer_decay:
        from timm.optim import param_groups_layer_decay

        names = {id(p): n for n, p in model.named_parameters()}
        base = [{**g, "param_names": [names[id(p)] for p in g["params"]]}
                for g in param_groups_layer_decay(model, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)]
    else:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(name)
        base = [
            {"param_names": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
            {"param_names": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
        ]
    params = dict(model.named_parameters())
    groups = []
    for group in base:
        for is_head in (False, True):
            names = [n for n in group["param_names"] if (n in head_names) == is_head]
            if names:
                scale = group.get("lr_scale", 1.0) * (cfg.head_lr_mult if is_head else 1.0)
                groups.append({"params": [params[n] for n in names], "param_names": names,
                               "weight_decay": group["weight_decay"], "lr_scale": scale})
    return groups


def make_optimizer(model: nn.Module, cfg: Config, head_names: set[str]) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    groups = param_groups(model, cfg, head_names)
    name = "adamw" if cfg.optimizer == "adamw" else ("sgd" if cfg.nesterov else "momentum")  # timm: sgd = Nesterov
    kwargs: dict[str, Any] = {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {"betas": (cfg.momentum, 0.999)}
    return create_optimizer_v2(groups, opt=name, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)


def apply_bn_momentum(model: nn.Module, cfg: Config, steps_per_epoch: int) -> float | None:
    """Kornblith et al.'s rule for short fine-tunes: keep max(1 - 10/steps_per_epoch, 0.9) of the
    running stats per step (PyTorch's momentum is the complement)."""
    if cfg.bn_momentum == "default":
        return None
    keep = max(1 - 10 / steps_per_epoch, 0.9) if cfg.bn_momentum == "auto" else 1 - float(cfg.bn_momentum)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 1 - keep
    return 1 - keep


def set_backbone_trainable(model: nn.Module, head_names: set[str], trainable: bool) -> None:
    """Linear probe: freeze every non-head parameter and keep the backbone's BN stats fixed."""
    for name, p in model.named_parameters():
        if name not in head_names:
            p.requires_grad_(trainable)
    if not trainable:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def rng_state() -> dict:
    state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [state[0], torch.from_numpy(state[1].astype(np.int64)), int(state[2]), int(state[3]), float(state[4])],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


class StopSignal:
    """SIGINT/SIGTERM set a flag; the loop saves at the next step boundary and exits cleanly.
    A second Ctrl-C while saving is ignored so the checkpoint is never torn."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            err.print("\n[yellow]stopping: saving a checkpoint at the end of this step...[/]")
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


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
def evaluate(model: nn.Module, pipeline: Any, samples: Any, num_classes: int, autocast: Any) -> tuple[dict, torch.Tensor, float]:
    """Metrics, confusion matrix and images/s of `model` on a split."""
    was_training = model.training
    model.eval()
    acc = Accumulator(num_classes)
    start = time.perf_counter()
    for images, labels in pipeline.eval_batches(samples):
        with autocast():
            logits = model(images)
        acc.update(logits, labels)
    seconds = time.perf_counter() - start
    model.train(was_training)
    return acc.result(), acc.confusion, acc.count / max(seconds, 1e-9)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
def train(cfg: Config, run: RunDir, splits: DataSplits, model: nn.Module, head_names: set[str],
          pipeline: Any, device: torch.device, dist: Dist, resume: dict | None = None) -> dict:
    """Train `model` on splits.train, evaluating on splits.eval; returns the final state as a dict
    (metrics of the last evaluation, best so far, timings). Rank 0 writes the run folder."""
    num_classes = len(splits.classes)
    headline = splits.metric
    steps_per_epoch = pipeline.steps_per_epoch(len(splits.train))
    total_steps = cfg.steps or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    autocast = autocast_for(cfg, device)

    # -- model, optimizer, EMA, mixup ------------------------------------------------------------
    apply_bn_momentum(model, cfg, steps_per_epoch)
    optimizer = make_optimizer(model, cfg, head_names)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from timm.data import Mixup

        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                      label_smoothing=cfg.label_smoothing, num_classes=num_classes)
    train_model: nn.Module = model
    if cfg.compile:
        train_model = torch.compile(train_model)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Head-only epochs leave backbone params without grads: DDP must then look for unused ones.
        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None,
                          find_unused_parameters=cfg.probe_epochs > 0)

    # -- where we start: fresh, or exactly where a checkpoint left off ----------------------------
    step, epoch, step_in_epoch = 0, 0, 0
    best: dict = {}
    bad_evals = 0
    epoch_acc = {"loss_sum": 0.0, "seen": 0, "data_s": 0.0, "train_s": 0.0}
    last_eval: dict = {}
    history: list[dict] = []  # the epoch records; metrics.jsonl is rebuilt from it on resume
    wall_before, wall_start = 0.0, time.perf_counter()  # wall time of earlier sessions of this run
    if resume:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if ema is not None and resume.get("ema") is not None:
            ema.module.load_state_dict(resume["ema"])
        step, epoch, step_in_epoch = resume["step"], resume["epoch"], resume["step_in_epoch"]
        best, bad_evals, epoch_acc = resume["best"], resume["bad_evals"], resume["epoch_acc"]
        last_eval = resume.get("last_eval", {})
        wall_before = resume.get("wall_time_s", 0.0)
        history = list(resume.get("history", []))
        if dist.main:  # a kill between checkpoint and log line, or after the log line: the checkpoint decides
            run.rewrite_metrics(history)
        set_rng_state(resume["rng"])
        if dist.main:
            log(f"resuming at epoch {epoch + 1}, step {step}/{total_steps}")

    def state_dict() -> dict:
        return {
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "step": step, "epoch": epoch, "step_in_epoch": step_in_epoch, "best": best,
            "bad_evals": bad_evals, "epoch_acc": epoch_acc, "last_eval": last_eval,
            "rng": rng_state(), "config": cfg.to_dict(), "history": history,
            "wall_time_s": wall_before + time.perf_counter() - wall_start,
        }

    def save_last() -> None:
        if dist.main:
            from .runs import write_with

            write_with(run.last_ckpt, lambda p: torch.save(state_dict(), p))

    # -- the epochs --------------------------------------------------------------------------------
    from .progress import TrainProgress

    stopped_early = False
    with StopSignal() as stop, TrainProgress(total_steps, enabled=dist.main) as bar:
        bar.advance_to(step)
        while step < total_steps and not stopped_early:
            probing = epoch < cfg.probe_epochs
            model.train()
            set_backbone_trainable(model, head_names, trainable=not probing)
            batches = iter(pipeline.train_batches(splits.train, epoch, start_step=step_in_epoch))
            tick = time.perf_counter()
            while step_in_epoch < steps_per_epoch and step < total_steps:
                factor = lr_factor(step, total_steps, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * group["lr_scale"] * factor
                step_loss = 0.0
                for micro in range(cfg.grad_accum):
                    wait = time.perf_counter()
                    images, labels = next(batches)
                    epoch_acc["data_s"] += time.perf_counter() - wait
                    targets = labels
                    if mixup is not None:
                        images, targets = mixup(images, labels)
                    sync = micro == cfg.grad_accum - 1 or dist.world == 1
                    with (contextlib.nullcontext() if sync else train_model.no_sync()), autocast():
                        logits = train_model(images)
                        if mixup is not None:
                            loss = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
                        else:
                            loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
                    (loss / cfg.grad_accum).backward()
                    step_loss += loss.item() / cfg.grad_accum
                    epoch_acc["seen"] += labels.shape[0] * dist.world
                if not math.isfinite(step_loss):
                    raise TrainingError(
                        f"loss became {step_loss} at step {step + 1}; stopped without saving it — "
                        f"the last good checkpoint is {run.last_ckpt}; try a lower --lr (now {cfg.lr:g})")
                if cfg.clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(model, step=step)
                step += 1
                step_in_epoch += 1
                epoch_acc["loss_sum"] += step_loss
                bar.update(step, loss=step_loss, lr=cfg.lr * factor,
                           img_s=epoch_acc["seen"] / max(1e-9, epoch_acc["train_s"] + time.perf_counter() - tick))
                if stop.received or _any_rank_stopped(stop, dist):
                    epoch_acc["train_s"] += time.perf_counter() - tick
                    save_last()
                    raise Interrupted(
                        f"{stop.received or 'stop'} received; saved step {step}/{total_steps} to {run.last_ckpt} — "
                        f"resume with: rextransfer finetune --resume {run.path}")
            epoch_acc["train_s"] += time.perf_counter() - tick

            # -- end of epoch: evaluate (rank 0), record, checkpoint --------------------------------
            epoch += 1
            step_in_epoch = 0
            is_last = step >= total_steps
            record = {"epoch": epoch, "step": step, "lr": cfg.lr * lr_factor(step - 1, total_steps, cfg),
                      "train_loss": epoch_acc["loss_sum"] / max(1, steps_per_epoch),
                      "train_img_per_s": epoch_acc["seen"] / max(1e-9, epoch_acc["train_s"]),
                      "data_wait_share": epoch_acc["data_s"] / max(1e-9, epoch_acc["train_s"]),
                      "probe": probing}
            epoch_acc = {"loss_sum": 0.0, "seen": 0, "data_s": 0.0, "train_s": 0.0}
            if dist.main and (epoch % cfg.eval_every == 0 or is_last):
                eval_model = ema.module if ema is not None else model
                metrics, confusion, eval_speed = evaluate(eval_model, pipeline, splits.eval, num_classes, autocast)
                last_eval = {**metrics, "epoch": epoch, "step": step, "eval_img_per_s": eval_speed,
                             "confusion": confusion}
                record.update({f"eval_{k}": v for k, v in metrics.items()}, eval_img_per_s=eval_speed)
                if not best or metrics[headline] > best[headline]:
                    best = {**metrics, "epoch": epoch, "step": step}
                    bad_evals = 0
                    _save_best(run, eval_model, cfg, splits, best)
                else:
                    bad_evals += 1
                bar.note(f"epoch {epoch}/{epochs}  {headline} {metrics[headline]:.2f}  loss {metrics['loss']:.3f}")
                stopped_early = bool(cfg.early_stop) and bad_evals >= cfg.early_stop
            history.append(record)
            save_last()  # first the checkpoint (it holds the record), then the log line
            if dist.main:
                run.append_metrics(record)
            if dist.world > 1:
                stopped_early = _broadcast_flag(stopped_early)
    return {"last_eval": last_eval, "best": best, "steps": step, "epochs": epoch,
            "total_steps": total_steps, "stopped_early": stopped_early,
            "wall_time_s": wall_before + time.perf_counter() - wall_start}


def _save_best(run: RunDir, model: nn.Module, cfg: Config, splits: DataSplits, best: dict) -> None:
    from safetensors.torch import save_file

    from .runs import write_with

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}
    meta = {"epoch": str(best["epoch"]), "step": str(best["step"]), "model": cfg.model, "width": str(cfg.width),
            "num_classes": str(len(splits.classes))}
    write_with(run.best_ckpt, lambda p: save_file(tensors, str(p), metadata=meta))


def _any_rank_stopped(stop: StopSignal, dist: Dist) -> bool:
    """Under DDP every rank must stop at the same step, or the others hang in all-reduce."""
    if dist.world == 1:
        return False
    return _broadcast_flag(stop.received is not None, op="max")


def _broadcast_flag(flag: bool, op: str = "max") -> bool:
    import torch.distributed as tdist

    t = torch.tensor([1.0 if flag else 0.0], device="cuda" if tdist.get_backend() == "nccl" else "cpu")
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())
