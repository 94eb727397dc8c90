"""The resumable state of a run: one dataclass saved and restored as a whole, the RNG states, and
the stop signal that makes the loop save it at a step boundary.

checkpoints/last.pt = {"state": TrainState as a dict, "model", "optimizer", "ema", "rng", "config"},
loadable with torch.load(weights_only=True): only tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import dataclasses
import random
import signal
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.console import err
from ..core.errors import RunError


@dataclass
class TrainState:
    """Where a run is: everything besides the tensors that resuming needs, bit for bit."""

    step: int = 0                  # optimizer steps done
    epoch: int = 0                 # epochs done
    step_in_epoch: int = 0         # optimizer steps done in the current epoch
    best: dict = field(default_factory=dict)       # metrics of the best evaluation so far
    bad_evals: int = 0             # evaluations since the best (early stopping)
    epoch_acc: dict = field(default_factory=lambda: new_epoch_acc())  # running sums of this epoch
    last_eval: dict = field(default_factory=dict)  # metrics (and confusion) of the latest evaluation
    history: list = field(default_factory=list)    # the epoch records; metrics.jsonl is rebuilt from it
    wall_time_s: float = 0.0       # wall time of earlier sessions of this run

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "TrainState":
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - names:
            raise RunError(f"cannot resume {where}: its checkpoint was written by another version of rextransfer; "
                           f"start a new run with another --name")
        return cls(**data)


def new_epoch_acc() -> dict:
    return {"loss_sum": 0.0, "seen": 0, "data_s": 0.0, "train_s": 0.0}


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
