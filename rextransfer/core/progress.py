"""A rich progress bar for training: step count, loss, lr, img/s, and per-epoch notes above it."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .console import err


class TrainProgress:
    def __init__(self, total_steps: int, enabled: bool = True):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[img_s]:.0f} img/s"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=err, transient=False, disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=total_steps, loss=float("nan"), lr=0.0, img_s=0.0)

    def __enter__(self) -> "TrainProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def advance_to(self, step: int) -> None:
        self.progress.update(self.task, completed=step)

    def update(self, step: int, *, loss: float, lr: float, img_s: float) -> None:
        self.progress.update(self.task, completed=step, loss=loss, lr=lr, img_s=img_s)

    def note(self, text: str) -> None:
        if self.enabled:
            self.progress.console.print(text)
