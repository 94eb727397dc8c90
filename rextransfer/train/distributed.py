"""Devices, processes and seeds.

`torchrun --nproc_per_node=N rextransfer ...` runs N processes with WORLD_SIZE/RANK/LOCAL_RANK set
(with `--nnodes=M --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT`, N processes on each of M nodes);
each trains on its own device (NCCL on GPUs, gloo on CPU). Every rank evaluates its contiguous
shard of the eval split and the counts are all-reduced (metrics.py), so all ranks hold the same,
single-process metrics; rank 0 alone writes the run folder. Each node builds or reuses its own
pixel cache (local rank 0 first, see `local_rank_zero_first`). `batch_size` stays the *global*
batch: each process takes batch_size / (world x grad_accum) images per micro-batch, so a recipe
means the same thing on 1 or 8 GPUs.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, TypeVar

import numpy as np
import torch

from ..core.errors import RunError, UsageError

# A cache build on one node can take long (decoding Food-101 once); the other ranks wait for it on
# a CPU (gloo) group of its own with this timeout, not on the NCCL group's ten-minute watchdog.
PREPARE_TIMEOUT = timedelta(hours=12)
T = TypeVar("T")


@dataclass
class Dist:
    """Process layout: one process per device under torchrun, else rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0            # rank on this node (torchrun's LOCAL_RANK)

    @property
    def main(self) -> bool:
        return self.rank == 0


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """[first, last) of `n` items for `rank`: contiguous blocks whose sizes differ by at most one,
    in rank order (like DistributedSampler without shuffling or padding: every item exactly once)."""
    return n * rank // world, n * (rank + 1) // world


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
    return Dist(rank=tdist.get_rank(), world=world, local_rank=local), device


def local_rank_zero_first(dist: Dist, fn: Callable[[], T], what: str) -> T:
    """fn() on every rank, local rank 0 of each node first and the node's other ranks once all of
    those have finished: e.g. a pixel cache that local rank 0 builds on its node's disk (on a
    shared file system, the one that gets the cache's lock) and the other ranks then only open.
    A failure on any rank stops every rank (they would otherwise wait for hours)."""
    if dist.world == 1:
        return fn()
    import torch.distributed as tdist

    group = tdist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
    result: Any = None
    try:
        for my_turn in (dist.local_rank == 0, dist.local_rank != 0):
            failed = torch.tensor([1])
            try:
                if my_turn:
                    result = fn()
                failed[0] = 0
            finally:  # reached by a failing rank too, so that the others learn of it
                tdist.all_reduce(failed, op=tdist.ReduceOp.MAX, group=group)
            if failed.item():
                raise RunError(f"another rank failed while {what}; its message says why")
    finally:
        tdist.destroy_process_group(group)
    return result


def same_on_all_ranks(value: Any, dist: Dist, what: str) -> None:
    """A one-line error on every rank unless `value` is equal on all of them (e.g. whether the run
    folder holds a checkpoint to resume: it must be one folder that every node sees)."""
    if dist.world == 1:
        return
    import torch.distributed as tdist

    values: list = [None] * dist.world
    tdist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise RunError(f"{what} differs between ranks ({', '.join(f'rank {r}: {v}' for r, v in enumerate(values))}); "
                       f"put --runs-dir on a file system that every node shares")


def broadcast_object(value, dist: Dist):
    """Rank 0's value on every rank (e.g. the run folder name that carries a timestamp)."""
    if dist.world == 1:
        return value
    import torch.distributed as tdist

    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_state(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers into `module` on every rank (in place)."""
    import torch.distributed as tdist

    for tensor in module.state_dict().values():
        buf = tensor if tensor.is_contiguous() else tensor.contiguous()  # channels_last weights
        tdist.broadcast(buf, src=0)
        if buf is not tensor:
            tensor.copy_(buf)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
