"""Shared by bench/loop.py and bench/gpu.py: rextransfer's own training loop fed in-memory batches.

`train_in_memory` calls `rextransfer.train.loop.train()` -- set-up, steps, reads, end of epoch,
checkpoint, evaluation, as a run does -- with a stand-in pipeline that hands out a few batches
made once on the device, so that only the model, the device and the loop are measured. It uses
nothing but train()'s signature and the run's metrics, so it measures older versions too.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any


class MemoryPipeline:
    """The pipeline interface train() uses, over batches made once (cycled)."""

    def __init__(self, batches: list, channels_last: bool):
        self.batches = batches
        self.batch_size = batches[0][0].shape[0]
        self.channels_last = channels_last

    def steps_per_epoch(self, n: int) -> int:
        return max(1, n // self.batch_size)

    def eval_batch(self) -> int:
        return self.batch_size

    def train_batches(self, samples, epoch, start_step=0):
        for s in range(start_step, self.steps_per_epoch(len(samples))):
            yield self.batches[s % len(self.batches)]

    def eval_batches(self, samples, start=0, stop=None):
        stop = len(samples) if stop is None else stop
        for k, a in enumerate(range(start, stop, self.batch_size)):
            x, y = self.batches[k % len(self.batches)]
            yield x[: stop - a], y[: stop - a]


def train_in_memory(model, batches: list, *, head: set[str], num_classes: int, steps_per_epoch: int, epochs: int,
                    device, settings: dict[str, Any]) -> tuple[list[dict], float, float]:
    """(the run's epoch records, wall and process CPU seconds of the train() call). Evaluation
    runs once, at the end, on one batch; every epoch ends with a checkpoint in a temporary run
    folder."""
    from rextransfer.config.settings import Config
    from rextransfer.data.base import DataSplits, SampleSet
    from rextransfer.train.distributed import Dist
    from rextransfer.train.loop import train
    from rextransfer.train.rundir import RunDir

    classes = [f"c{i}" for i in range(num_classes)]
    bs = batches[0][0].shape[0]
    splits = DataSplits(train=SampleSet([0] * (steps_per_epoch * bs), classes, "train"),
                        eval=SampleSet([0] * bs, classes, "test"), eval_split="test", classes=classes, source="bench")
    cfg = Config(**{"model": "bench", "pretrained": False, "batch_size": bs, "epochs": epochs, "eval_every": epochs,
                    "lr": 1e-4, "workers": 0, **settings})
    pipeline = MemoryPipeline(batches, channels_last=cfg.channels_last == "on")
    with tempfile.TemporaryDirectory(prefix="rextransfer-bench-run-") as tmp:
        run = RunDir(Path(tmp) / "run")
        run.create()
        start, cpu = time.perf_counter(), time.process_time()
        train(cfg, run, splits, model, head, pipeline, device, Dist())
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        records = run.metrics()
    return records, wall, cpu


def head_names(model) -> set[str]:
    """Parameter names of a timm model's classifier."""
    classifier = {id(p) for p in model.get_classifier().parameters()}
    return {n for n, p in model.named_parameters() if id(p) in classifier}
