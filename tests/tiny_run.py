"""A tiny trained run for the tests of what a finished run is used for (loggers, export, predict,
lr-find, interpretation): timm's 0.1 M-parameter `test_efficientnet` at 32 px, from scratch, on
the generated pattern images, CPU, no loader workers. Each test module trains its own once."""

from __future__ import annotations

from pathlib import Path

from rextransfer.train.run import run_finetune
from synthetic import make_patterns

TINY = {"model": "test_efficientnet", "pretrained": False, "img_size": 32, "batch_size": 16, "workers": 0,
        "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.01, "warmup_steps": 0, "probe_epochs": 0,
        "label_smoothing": 0.0, "rrc_scale_min": 0.5, "epochs": 1, "loggers": "none"}


def patterns(root: Path, per_class: int = 8, test_per_class: int = 3) -> Path:
    """4 classes: 32 training images (2 steps of 16), 12 test images."""
    return make_patterns(root, per_class=per_class, test_per_class=test_per_class)


def train_tiny(data: Path, runs: Path, name: str = "tiny", **flags) -> Path:
    return run_finetune(str(data), flags={**TINY, **flags}, name=name, runs_dir=str(runs)).path
