"""Data pipeline benchmark: rextransfer's cached Pipeline vs the standard ImageFolder loader.

The standard pipeline is how timm's train script (and most fine-tuning code) feeds a model:
torchvision ImageFolder + PIL decode + RandomResizedCrop + flip + ToTensor + Normalize inside
DataLoader workers, every epoch. rextransfer decodes once into a pixel cache (epoch 1 includes
building it) and crops/flips on the device. Both run with the same worker count, batch and crop
size, and hand the consumer normalised float batches on the same device.

    .venv/bin/python bench/pipeline.py                       # CPU, 2 workers, 2,000 JPEGs, 3 epochs
    .venv/bin/python bench/pipeline.py --json bench.json
    .venv/bin/python bench/pipeline.py --model rexnet_100 --steps 5 --img-size 64 --batch-size 32
    .venv/bin/python bench/pipeline.py --device cuda --model rexnet_100 --steps 50 --batch-size 256

The JPEG set is generated deterministically (smooth photo-like content plus sensor-like noise,
300-500 px sides, quality 90) once into --data-dir and reused. The pixel cache goes to a fresh
temporary folder (removed at the end), so epoch 1 always includes the cache build.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

REXNET_DATA_CONFIG = {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.875,
                      "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def make_jpegs(root: Path, n: int, classes: int, seed: int = 0) -> Path:
    """n JPEGs in root/<class>/ (deterministic); reused when already complete."""
    from PIL import Image

    marker = root / f".complete-{n}-{classes}-{seed}"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    print(f"generating {n} JPEGs in {root} ...", file=sys.stderr)
    for i in range(n):
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(300, 501, 2))
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        noise = rng.normal(0, 6, (h, w, 3))
        pixels = np.clip(np.asarray(coarse, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    marker.touch()
    return root


def standard_loader(root: Path, img_size: int, batch: int, workers: int, device: torch.device):
    from torchvision import datasets, transforms as T

    tf = T.Compose([T.RandomResizedCrop(img_size), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(REXNET_DATA_CONFIG["mean"], REXNET_DATA_CONFIG["std"])])
    dataset = datasets.ImageFolder(str(root), transform=tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                         pin_memory=device.type == "cuda")

    def epoch(_: int):
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return dataset, epoch


def rextransfer_loader(root: Path, img_size: int, batch: int, workers: int, device: torch.device, samples_from):
    from rextransfer.config.settings import Config
    from rextransfer.data.base import FileSamples
    from rextransfer.data.pipeline import Pipeline

    paths, labels = zip(*samples_from.samples)
    samples = FileSamples(paths, labels, samples_from.classes, "train")
    cfg = Config(img_size=img_size, batch_size=batch, workers=workers, cache=True)
    pipe = Pipeline(cfg, REXNET_DATA_CONFIG, device)
    return pipe, (lambda e: pipe.train_batches(samples, e))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (loader workers exit at each epoch's end)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_epochs(pipelines: dict, epochs: int, device: torch.device) -> dict:
    """Images/s (wall) and CPU ms per image of each epoch, consumer only receiving the batches.

    Epochs of the pipelines are interleaved, so a change in the load of a shared machine hits both.
    """
    out = {name: {"img_per_s": [], "cpu_ms_per_img": []} for name in pipelines}
    for e in range(epochs):
        for name, epoch_fn in pipelines.items():
            start, cpu, seen = time.perf_counter(), cpu_seconds(), 0
            for x, _ in epoch_fn(e):
                seen += x.shape[0]
            sync(device)
            out[name]["img_per_s"].append(seen / (time.perf_counter() - start))
            out[name]["cpu_ms_per_img"].append(1000 * (cpu_seconds() - cpu) / seen)
    return out


def time_training(epoch_fn, model_name: str, classes: int, steps: int, device: torch.device, warmup: int = 2) -> dict:
    """Train steps of a random-init model: where each step's time goes (waiting for data vs compute)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=classes).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    wait = compute = 0.0
    seen = done = 0
    epoch = 0
    while done < steps + warmup:
        batches = iter(epoch_fn(epoch))
        while done < steps + warmup:
            t0 = time.perf_counter()
            try:
                x, y = next(batches)
            except StopIteration:
                epoch += 1
                break
            sync(device)
            t1 = time.perf_counter()
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            t2 = time.perf_counter()
            if done >= warmup:  # skip the first steps: cuDNN autotuning, worker start-up
                wait, compute, seen = wait + t1 - t0, compute + t2 - t1, seen + x.shape[0]
            done += 1
    return {"img_per_s": seen / (wait + compute), "data_wait_s_per_step": wait / steps,
            "compute_s_per_step": compute / steps, "data_wait_share": wait / (wait + compute)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, default=Path("~/.cache/rextransfer/bench").expanduser())
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="epoch 1 (cache build for rextransfer) + later epochs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="", help="also time training steps of this timm model (random init)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per pipeline (with --model)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers to this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    root = make_jpegs(args.data_dir / f"jpegs-{args.images}-{args.classes}", args.images, args.classes)
    cache_dir = Path(tempfile.mkdtemp(prefix="rextransfer-bench-cache-"))
    os.environ["REXTRANSFER_CACHE"] = str(cache_dir)
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "load_avg_before": os.getloadavg(), "python": platform.python_version(),
                    "torch": torch.__version__, "device": args.device if device.type != "cuda" else torch.cuda.get_device_name(device)},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    try:
        dataset, standard = standard_loader(root, args.img_size, args.batch_size, args.workers, device)
        pipe, cached = rextransfer_loader(root, args.img_size, args.batch_size, args.workers, device, dataset)
        timings = time_epochs({"standard": standard, "rextransfer": cached}, args.epochs, device)
        results = {}
        for name, t in timings.items():
            rates, cpu = t["img_per_s"], t["cpu_ms_per_img"]
            later = slice(1, None)
            results[name] = {"epoch1_img_per_s": rates[0], "epoch1_cpu_ms_per_img": cpu[0],
                             "later_img_per_s": float(np.mean(rates[later])) if len(rates) > 1 else None,
                             "later_cpu_ms_per_img": float(np.mean(cpu[later])) if len(cpu) > 1 else None,
                             "per_epoch_img_per_s": rates}
            r = results[name]
            line = f"{name:12s} epoch 1: {rates[0]:6.0f} img/s ({cpu[0]:.2f} CPU ms/img)"
            if len(rates) > 1:
                line += f"   epochs 2-{args.epochs}: {r['later_img_per_s']:6.0f} img/s ({r['later_cpu_ms_per_img']:.2f} CPU ms/img)"
            print(line)
        std, rex = results["standard"], results["rextransfer"]
        results["ratio_epoch1"] = rex["epoch1_img_per_s"] / std["epoch1_img_per_s"]
        line = f"ratio rextransfer / standard: epoch 1 {results['ratio_epoch1']:.2f}x"
        if std["later_img_per_s"]:
            results["ratio_later"] = rex["later_img_per_s"] / std["later_img_per_s"]
            results["ratio_later_cpu"] = std["later_cpu_ms_per_img"] / rex["later_cpu_ms_per_img"]
            line += (f", later epochs {results['ratio_later']:.2f}x img/s "
                     f"({results['ratio_later_cpu']:.2f}x less CPU per image)")
        print(line)
        report["data_only"] = results
        if args.model:
            training = {}
            for name, fn in (("standard", standard), ("rextransfer", cached)):
                training[name] = time_training(fn, args.model, args.classes, args.steps, device)
                t = training[name]
                print(f"{name:12s} {args.model} train: {t['img_per_s']:.1f} img/s, per step {t['data_wait_s_per_step'] * 1e3:.0f} ms "
                      f"data wait + {t['compute_s_per_step'] * 1e3:.0f} ms compute ({100 * t['data_wait_share']:.0f}% waiting)")
            training["ratio"] = training["rextransfer"]["img_per_s"] / training["standard"]["img_per_s"]
            print(f"training ratio (rextransfer / standard): {training['ratio']:.2f}x")
            report["training"] = training
        report["machine"]["load_avg_after"] = os.getloadavg()
        print(f"load average before/after: {report['machine']['load_avg_before'][0]:.1f} / "
              f"{report['machine']['load_avg_after'][0]:.1f} on {os.cpu_count()} CPUs")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
            print(f"wrote {args.json}")
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
