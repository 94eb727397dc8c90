"""`rextransfer bench`: training and inference throughput of backbones on this machine.

Random-init models (weights do not change speed) on random tensors, so only the model and the
device are measured, not data loading. Per model:
    train: forward + cross-entropy + backward + SGD step, batch B at S px
    eval:  forward only under inference_mode
each timed per step after warm-up steps (torch.cuda.synchronize on CUDA), reported as the median
step -> images per second. On CUDA it uses bf16 autocast and channels_last, as training does.
Results go to <runs>/bench/bench-<device>.json, which `compare` uses for backbones no run measured.
"""

from __future__ import annotations

import gc
import platform
import re
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .table import parse_model_spec, reference_backbone
from ..train.distributed import device_name, select_device
from ..core.errors import UsageError

DEFAULT_MODELS = ["rexnet@1.0", "resnet50", "efficientnet_b0"]
NUM_CLASSES = 1000  # ImageNet head: params match the published model sizes


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def default_path(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / "bench" / f"bench-{device_slug(name)}.json"


def timm_spec(spec: str) -> tuple[str, float, str, dict]:
    """(model, width, timm architecture, create_model kwargs) for rexnet[@w], resnet50, efficientnet_b0
    or any timm name, resolved by the weights registry (one-line ModelError for unknown names)."""
    from ..models.registry import create_kwargs, resolve_spec

    model, width = parse_model_spec(spec)
    width = 1.0 if width is None else width
    arch, _ = resolve_spec(model, width, pretrained=False)
    extra = create_kwargs(model, width)
    return model, width, arch, extra


def _timed(step: Callable[[], None], dev: torch.device, warmup: int, steps: int) -> float:
    """Median seconds per call after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)  # kernels are async: time to completion, not to launch
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(spec: str, *, batch_size: int, img_size: int, dev: torch.device, steps: int, warmup: int) -> dict:
    import timm

    model_name, width, timm_name, kwargs = timm_spec(spec)
    cuda = dev.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = timm.create_model(timm_name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    model = model.to(dev, memory_format=fmt)
    x = torch.randn(batch_size, 3, img_size, img_size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def train_step() -> None:
        with autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def eval_step() -> None:
        with torch.inference_mode(), autocast():
            model(x)

    model.train()
    train_s = _timed(train_step, dev, warmup, steps)
    model.eval()
    eval_s = _timed(eval_step, dev, warmup, steps)
    del model, opt, x, y
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    ref = reference_backbone(model_name, width)
    return {"model": model_name, "width": width, "label": ref["label"] if ref else spec, "timm_name": timm_name,
            "params_m": round(params_m, 3), "train_ms_per_step": round(train_s * 1e3, 2),
            "eval_ms_per_batch": round(eval_s * 1e3, 2), "train_img_per_s": round(batch_size / train_s, 2),
            "eval_img_per_s": round(batch_size / eval_s, 2)}


def run_bench(models: list[str] | None = None, *, batch_size: int | None = None, img_size: int = 224,
              device: str = "auto", steps: int = 10, warmup: int = 3,
              on_model: Callable[[str], None] = lambda s: None) -> dict:
    """Measure each model; returns the report written to the bench JSON file.

    batch_size None: 128 on CUDA (a GPU needs large batches to reach its throughput), 16 on CPU.
    """
    dev = select_device(device)
    batch_size = batch_size if batch_size is not None else (128 if dev.type == "cuda" else 16)  # 0 is an error, not "default"
    if batch_size < 1 or img_size < 32 or steps < 1 or warmup < 0:
        raise UsageError("bench needs --batch-size >= 1, --img-size >= 32, --steps >= 1, --warmup >= 0")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels (during warm-up)
    specs = models or DEFAULT_MODELS
    for spec in specs:
        timm_spec(spec)  # unknown names fail before anything is measured
    results = []
    for spec in specs:
        on_model(spec)
        results.append(measure(spec, batch_size=batch_size, img_size=img_size, dev=dev, steps=steps, warmup=warmup))
    base = next((r for r in results if r["model"] == "rexnet" and r["width"] == 1.0), None)
    for r in results:  # ratios vs ReXNet x1.0: the paper's point of comparison
        for k in ("train", "eval"):
            r[f"{k}_vs_rexnet"] = round(r[f"{k}_img_per_s"] / base[f"{k}_img_per_s"], 3) if base else None
    import timm

    return {
        "kind": "rextransfer-bench", "version": 1, "device": device_name(dev),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "img_size": img_size, "batch_size": batch_size, "steps": steps, "warmup": warmup,
        "amp": "bf16" if dev.type == "cuda" else "off", "channels_last": dev.type == "cuda",
        "num_classes": NUM_CLASSES, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "timm": timm.__version__, "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
        "results": results,
    }
