"""Optimizer, parameter groups, the lr schedule and fine-tuning switches (BN momentum, probing).

Pure functions of the config and the model; the loop calls them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from ..config.settings import Config


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
