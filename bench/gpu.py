"""GPU suite: training throughput of rextransfer's loop against a plain loop, and of the full
pipeline, in one prepared run (under 8 minutes on one GPU; `bench/gpu.sh` runs it as is).

    bench/gpu.sh                                   # CUDA: everything below, JSON + table
    bench/gpu.sh --device cpu --small --threads 1  # anywhere: the same code paths, tiny sizes

Part 1, synthetic on-device data (the model and the loop alone). For ReXNet x1.0, ResNet50 and
EfficientNet-B0 (random init: weights do not change speed), bf16 autocast + channels_last, each
eager and with torch.compile:
  * plain: a timm-style loop -- forward, cross-entropy, backward, SGD step, zero_grad -- that
    never waits for the GPU inside the timed steps;
  * rextransfer: `rextransfer.train.loop.train()` itself on the same model, batch, AMP and
    tensors (bench/harness.py), img/s from the run's own record of the timed epoch; eager, it
    also counts every host-device sync of the whole train() call (torch.cuda sync debug mode).
Part 2, the full pipeline: `run_finetune` on generated JPEGs (bench/pipeline.py's generator),
pixel cache built first, batches gathered by loader threads, uploaded pinned and cropped/flipped/
normalised on the GPU: the run's median train img/s and the share of time spent waiting for data.

Each measurement is a warm-up (includes compiling) and then a timed window; GPU work is
synchronised before the clock stops. A time budget (--budget-s) skips what would not fit and
says so in the JSON. Results go to --out (default runs/bench/gpu-suite-<device>.json).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

MODELS = ["rexnet@1.0", "resnet50", "efficientnet_b0"]
NUM_CLASSES = 100  # a fine-grained head (Food-101 size); the head is a negligible part of the work
LOG_EVERY = 10     # rextransfer's default: losses are read every 10 optimizer steps


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    p.add_argument("--small", action="store_true", help="tiny sizes (a check that every path runs, e.g. on CPU)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated rextransfer model specs")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 (small: 4)")
    p.add_argument("--img-size", type=int, default=None, help="default 224 (small: 64)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 50; small: 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 15; small: 2)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurements")
    p.add_argument("--no-pipeline", action="store_true", help="skip the full-pipeline run")
    p.add_argument("--images", type=int, default=None, help="JPEGs for the pipeline run (default 4096; small: 64)")
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "rextransfer-gpu-suite-jpegs")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 on a busy shared CPU)")
    p.add_argument("--budget-s", type=float, default=400.0, help="start no measurement after this many seconds")
    p.add_argument("--out", type=Path, default=None, help="JSON result (default runs/bench/gpu-suite-<device>.json)")
    a = p.parse_args()
    small = a.small
    a.batch_size = a.batch_size or (4 if small else 256)
    a.img_size = a.img_size or (64 if small else 224)
    a.steps = a.steps or (3 if small else 50)
    a.warmup = a.warmup if a.warmup is not None else (2 if small else 15)
    a.images = a.images or (64 if small else 4096)
    return a


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def make_model(spec: str, dev: torch.device, channels_last: bool):
    import timm

    from rextransfer.compare.bench import timm_spec

    _, _, arch, kwargs = timm_spec(spec)
    model = timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES, **kwargs).to(dev)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def synthetic_batches(a, dev: torch.device, channels_last: bool) -> list:
    g = torch.Generator(device="cpu").manual_seed(0)
    out = []
    for _ in range(4):
        x = torch.randn(a.batch_size, 3, a.img_size, a.img_size, generator=g).to(dev)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append((x, torch.randint(0, NUM_CLASSES, (a.batch_size,), generator=g).to(dev)))
    return out


def plain_loop(a, spec: str, dev: torch.device, compiled: bool, amp: bool, channels_last: bool) -> dict:
    """img/s of a timm-style loop: no host sync inside the timed window."""
    model = make_model(spec, dev, channels_last)
    model.train()
    step_model = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    batches = synthetic_batches(a, dev, channels_last)

    def step(k: int) -> None:
        x, y = batches[k % len(batches)]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(step_model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for k in range(a.warmup):
        step(k)
    sync(dev)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(a.steps):
        step(k)
    sync(dev)
    seconds = time.perf_counter() - t0
    del model, step_model, opt, batches
    return {"img_per_s": round(a.steps * a.batch_size / seconds, 1), "warmup_s": round(warm, 1)}


def rextransfer_loop(a, spec: str, dev: torch.device, compiled: bool, amp: bool, channels_last: bool) -> dict:
    """img/s of rextransfer's train() on the same model, batch and tensors: epoch 1 warms up
    (and compiles), epoch 2 is timed by the loop's own record."""
    from harness import head_names, train_in_memory

    model = make_model(spec, dev, channels_last)
    batches = synthetic_batches(a, dev, channels_last)
    steps = max(a.steps, a.warmup)
    count_syncs = dev.type == "cuda" and not compiled
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        if count_syncs:  # every host-device sync of the whole train() call: reads, evaluation, checkpoints
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        try:
            records, wall, _ = train_in_memory(
                model, batches, head=head_names(model), num_classes=NUM_CLASSES, steps_per_epoch=steps,
                epochs=2, device=dev,
                settings={"img_size": a.img_size, "device": str(dev), "amp": "bf16" if amp else "off",
                          "channels_last": "on" if channels_last else "off", "compile": compiled, "optimizer": "sgd",
                          "log_every": LOG_EVERY})
        finally:
            if count_syncs:
                torch.cuda.set_sync_debug_mode("default")
    del model, batches
    timed = records[1]
    out = {"img_per_s": round(timed["train_img_per_s"], 1), "warmup_epoch_img_per_s": round(records[0]["train_img_per_s"], 1),
           "train_call_s": round(wall, 1), "steps_per_epoch": steps, "log_every": LOG_EVERY,
           "total_s": round(time.perf_counter() - t0, 1)}
    if count_syncs:
        out["host_syncs_in_train_call"] = sum("synchronizing CUDA operation" in str(w.message) for w in caught)
        out["optimizer_steps_in_train_call"] = 2 * steps
    return out


def full_pipeline(a, dev: torch.device) -> dict:
    """The full pipeline feeding the device from the pixel cache: a real run on generated JPEGs."""
    spec = importlib.util.spec_from_file_location("bench_pipeline", ROOT / "bench" / "pipeline.py")
    jpegs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(jpegs)
    import os

    from rextransfer.train.run import run_finetune

    data = jpegs.make_jpegs(a.data_dir / f"n{a.images}", a.images, classes=10)
    with tempfile.TemporaryDirectory(prefix="rextransfer-gpu-suite-") as tmp:
        old_cache = os.environ.get("REXTRANSFER_CACHE")
        os.environ["REXTRANSFER_CACHE"] = str(Path(tmp) / "cache")  # epoch timing below excludes the build
        try:
            t0 = time.perf_counter()
            result = run_finetune(str(data), flags={
                "model": "rexnet", "width": 1.0, "pretrained": False, "img_size": a.img_size,
                "batch_size": a.batch_size, "epochs": 3, "device": str(dev), "val_fraction": 0.05,
                "workers": -1, "cache": True, "log_every": 10}, name="pipeline", runs_dir=str(Path(tmp) / "runs"))
            wall = time.perf_counter() - t0
            records = [json.loads(x) for x in (result.path / "metrics.jsonl").read_text().splitlines()]
        finally:
            if old_cache is None:
                os.environ.pop("REXTRANSFER_CACHE", None)
            else:
                os.environ["REXTRANSFER_CACHE"] = old_cache
    speeds = [r["train_img_per_s"] for r in records]
    return {"model": "rexnet@1.0", "images": a.images, "epochs": len(records),
            "img_per_s_by_epoch": [round(v, 1) for v in speeds],
            "img_per_s": round(statistics.median(speeds), 1),
            "data_wait_share": round(statistics.median(r["data_wait_share"] for r in records), 3),
            "run_s_including_cache_build": round(wall, 1)}


def table(report: dict) -> str:
    rows = [("model", "compile", "plain img/s", "rextransfer img/s", "ratio", "host syncs / steps (train call)")]
    for r in report["synthetic"]:
        plain, ours = r.get("plain", {}).get("img_per_s"), r.get("rextransfer", {}).get("img_per_s")
        ratio = f"{ours / plain:.3f}" if plain and ours else "-"
        loop = r.get("rextransfer", {})
        syncs = (f"{loop['host_syncs_in_train_call']} / {loop['optimizer_steps_in_train_call']}"
                 if "host_syncs_in_train_call" in loop else "-")
        rows.append((r["model"], "on" if r["compile"] else "off", f"{plain or '-'}", f"{ours or '-'}", ratio, syncs))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    p = report.get("pipeline")
    if p and "img_per_s" in p:
        lines.append(f"\nfull pipeline (cache -> {report['device']}), {p['model']}: {p['img_per_s']} img/s "
                     f"(epochs {p['img_per_s_by_epoch']}), waiting for data {100 * p['data_wait_share']:.1f}% of the time")
    for s in report["skipped"]:
        lines.append(f"skipped: {s}")
    head = (f"{report['device']}  batch {report['batch_size']} at {report['img_size']} px, amp {report['amp']}, "
            f"channels_last {report['channels_last']}, {report['steps']} timed steps after {report['warmup']}")
    return head + "\n" + "\n".join(lines)


def main() -> None:
    a = parse()
    start = time.perf_counter()
    from rextransfer.train.distributed import device_name, select_device

    dev = select_device(a.device)
    cuda = dev.type == "cuda"
    if a.threads:
        torch.set_num_threads(a.threads)
    amp, channels_last = cuda, cuda  # what a run does on each device (amp auto, channels_last auto)
    if cuda:
        torch.backends.cudnn.benchmark = True
    import timm

    report = {
        "kind": "rextransfer-gpu-suite", "version": 1, "device": device_name(dev),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "batch_size": a.batch_size, "img_size": a.img_size, "steps": a.steps, "warmup": a.warmup,
        "amp": "bf16" if amp else "off", "channels_last": channels_last, "num_classes": NUM_CLASSES,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None, "platform": platform.platform(),
        "synthetic": [], "pipeline": None, "skipped": [],
    }
    specs = [s.strip() for s in a.models.split(",") if s.strip()]

    def synthetic(compiled: bool) -> None:
        for spec in specs:
            entry = {"model": spec, "compile": compiled}
            report["synthetic"].append(entry)
            for name, fn in (("plain", plain_loop), ("rextransfer", rextransfer_loop)):
                if time.perf_counter() - start > a.budget_s:
                    report["skipped"].append(f"{spec} {name} compile={compiled}: time budget")
                    continue
                note(f"[{time.perf_counter() - start:5.0f} s] {spec} {name} loop, compile {'on' if compiled else 'off'}")
                torch.manual_seed(0)
                entry[name] = fn(a, spec, dev, compiled, amp, channels_last)
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
            if "plain" in entry and "rextransfer" in entry:
                entry["ratio"] = round(entry["rextransfer"]["img_per_s"] / entry["plain"]["img_per_s"], 3)

    # eager first, then the full pipeline, then what compiling takes minutes for (the budget cuts last)
    synthetic(compiled=False)
    if not a.no_pipeline:
        if time.perf_counter() - start > a.budget_s:
            report["skipped"].append("full pipeline: time budget")
        else:
            note(f"[{time.perf_counter() - start:5.0f} s] full pipeline (JPEGs -> cache -> {dev.type})")
            report["pipeline"] = full_pipeline(a, dev)
    if not a.no_compile:
        synthetic(compiled=True)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    out = a.out or ROOT / "runs" / "bench" / f"gpu-suite-{re.sub(r'[^a-z0-9]+', '-', report['device'].lower()).strip('-')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\n{report['wall_s']:.0f} s; JSON: {out}")


if __name__ == "__main__":
    main()
