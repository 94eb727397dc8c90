"""Devices, processes and seeds.

`torchrun --nproc_per_node=N rextransfer ...` runs N processes with WORLD_SIZE/RANK/LOCAL_RANK set;
each trains on its own device (NCCL on GPUs, gloo on CPU), rank 0 alone evaluates and writes the
run folder. `batch_size` stays the *global* batch: each process takes batch_size / (N x grad_accum)
images per micro-batch, so a recipe means the same thing on 1 or 8 GPUs.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import UsageError


@dataclass
class Dist:
    """Process layout: one process per device under torchrun, else rank 0 of 1."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"device {name!r} does not exist ({torch.cuda.device_count()} GPU(s) visible)")
    return device


def device_name(device: torch.device) -> str:
    """How runs and benchmarks name a device: cpu | cuda:<GPU name>."""
    return f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type


def init_distributed(cfg) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), select_device(cfg.device)
    import torch.distributed as tdist

    use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    cfg.micro_batch(world)  # a batch that does not split evenly is a one-line error on every rank
    return Dist(rank=tdist.get_rank(), world=world), device


def broadcast_object(value, dist: Dist):
    """Rank 0's value on every rank (e.g. the run folder name that carries a timestamp)."""
    if dist.world == 1:
        return value
    import torch.distributed as tdist

    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
