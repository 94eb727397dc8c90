"""Data pipeline benchmark: rextransfer (cached and uncached) vs torchvision + timm vs NVIDIA DALI (CPU).

All pipelines do the same work on the same JPEGs with the same worker/thread count, batch and crop
size, and hand the consumer normalised float NCHW batches on the same device:
decode -> RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) -> horizontal flip -> normalise.

  * torchvision: how timm's train script (and most fine-tuning code) feeds a model --
    `ImageFolder` + PIL decode + timm's `create_transform(is_training=True)` (colour jitter off)
    in DataLoader worker processes, every epoch;
  * DALI CPU: `fn.readers.file` -> `fn.decoders.image_random_crop` (libjpeg-turbo, decodes only
    the crop window) -> `fn.resize` -> `fn.crop_mirror_normalize`, `device_id=None` (CPU operators
    only), `num_threads` = workers. Optional bench requirement, not a project dependency:
    `pip install nvidia-dali-cuda120`; without it the benchmark says why and goes on;
  * rextransfer uncached (`--no-cache`): PIL decode + crop in DataLoader workers every epoch;
  * rextransfer cached (the default): epoch 1 builds the pixel cache (whole images, shorter side
    256) from a fresh temporary folder and trains from it; later epochs only read the cache.

    .venv/bin/python bench/pipeline.py                       # CPU, 2 workers, 2,000 JPEGs, 3 epochs
    .venv/bin/python bench/pipeline.py --json bench.json
    .venv/bin/python bench/pipeline.py --images 400 --epochs 2   # a quick look
    .venv/bin/python bench/pipeline.py --device cuda --model rexnet_100 --steps 50 --batch-size 256

Epochs of the pipelines are interleaved (epoch 1 of each, then epoch 2 of each, ...), so a change
in the load of a shared machine hits all of them. Reported per pipeline: images/s (wall) and CPU
seconds per image (this process and its reaped worker processes) of epoch 1 and of epochs >= 2.

The JPEG set is generated deterministically once into --data-dir and reused: photo-like content
(smooth shapes, mid-frequency texture, sensor noise; ~0.24 bytes/pixel at quality 90, like real
photos) in the sizes of the paper's datasets: half ~500x375 (Food-101, Flowers-102; one in five
portrait), a quarter ~700x480 (Stanford Cars), a quarter ~1000x700 (FGVC Aircraft), +-10% jitter.
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
# (name, (width, height), share): the photo sizes of the four datasets
SIZE_MIX = (("food/flowers", (500, 375), 0.5), ("cars", (700, 480), 0.25), ("aircraft", (1000, 700), 0.25))


def photo(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    mid = Image.fromarray(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8))
    texture = (np.asarray(mid.resize((width, height), Image.BILINEAR), dtype=np.float64) - 128) * 0.35
    noise = rng.normal(0, 4, (height, width, 3))
    return np.clip(np.asarray(coarse, dtype=np.float64) + texture + noise, 0, 255).astype(np.uint8)


def make_jpegs(root: Path, n: int, classes: int, seed: int = 0) -> Path:
    """n JPEGs in root/<class>/ (deterministic); reused when already complete."""
    from PIL import Image

    marker = root / f".complete-{n}-{classes}-{seed}"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    shares = np.cumsum([share for _, _, share in SIZE_MIX])
    print(f"generating {n} JPEGs in {root} ...", file=sys.stderr)
    for i in range(n):
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        group = int(np.searchsorted(shares, (i + 0.5) / n))
        w, h = (int(v * rng.uniform(0.9, 1.1)) for v in SIZE_MIX[group][1])
        if group == 0 and rng.random() < 0.2:
            w, h = h, w
        Image.fromarray(photo(w, h, rng)).save(folder / f"{i:05d}.jpg", quality=90)
    marker.touch()
    return root


def torchvision_loader(root: Path, img_size: int, batch: int, workers: int, device: torch.device):
    from timm.data import create_transform
    from torchvision import datasets

    tf = create_transform(img_size, is_training=True, interpolation="bilinear", color_jitter=None,
                          mean=REXNET_DATA_CONFIG["mean"], std=REXNET_DATA_CONFIG["std"])
    dataset = datasets.ImageFolder(str(root), transform=tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                         pin_memory=device.type == "cuda")

    def epoch(_: int):
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return dataset, epoch


def dali_loader(root: Path, img_size: int, batch: int, workers: int, device: torch.device):
    """The DALI CPU pipeline, or (None, one-line reason) when DALI cannot run here."""
    try:
        from nvidia.dali import fn, pipeline_def, types
    except Exception as e:  # noqa: BLE001 - any import failure is a reason to skip, not to stop
        return None, f"nvidia-dali is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); pip install nvidia-dali-cuda120"
    mean = [255 * m for m in REXNET_DATA_CONFIG["mean"]]
    std = [255 * s for s in REXNET_DATA_CONFIG["std"]]

    @pipeline_def(batch_size=batch, num_threads=workers, device_id=None, seed=0, prefetch_queue_depth=2)
    def graph():
        jpegs, labels = fn.readers.file(file_root=str(root), random_shuffle=True, name="files")
        images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB,
                                               random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3])
        images = fn.resize(images, resize_x=img_size, resize_y=img_size)  # linear, antialiased
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std,
                                          mirror=fn.random.coin_flip())
        return images, labels

    try:
        probe = graph()
        probe.build()
        steps = probe.epoch_size("files") // batch
        del probe
    except Exception as e:  # noqa: BLE001
        return None, f"the DALI CPU pipeline does not build ({type(e).__name__}: {str(e).splitlines()[0]})"

    def epoch(e: int):
        # A fresh pipeline per epoch, closed at its end (as DataLoader workers are): DALI's threads
        # run `prefetch_queue_depth` batches ahead, and that work must not spill into (and be
        # charged to) the next pipeline's epoch. The build is timed (it is inside the epoch).
        start = time.perf_counter()
        pipe = graph(seed=e)
        pipe.build()
        epoch.build_s.append(time.perf_counter() - start)
        try:
            for _ in range(steps):
                images, labels = pipe.run()
                x = torch.from_numpy(np.array(images.as_tensor()))  # one copy, like a collate
                y = torch.from_numpy(np.array(labels.as_tensor())).view(-1)
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        finally:
            del pipe

    epoch.build_s = []
    return epoch, None


def rextransfer_loader(samples, img_size: int, batch: int, workers: int, device: torch.device, cache: bool):
    from rextransfer.config.settings import Config
    from rextransfer.data.pipeline import Pipeline

    cfg = Config(img_size=img_size, batch_size=batch, workers=workers, cache=cache)
    pipe = Pipeline(cfg, REXNET_DATA_CONFIG, device)
    return lambda e: pipe.train_batches(samples, e)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (loader workers exit at each epoch's end)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_epochs(pipelines: dict, epochs: int, device: torch.device) -> dict:
    """Images/s (wall) and CPU ms per image of each epoch, the consumer only receiving the batches."""
    out = {name: {"img_per_s": [], "cpu_ms_per_img": [], "batch_shape": None} for name in pipelines}
    for e in range(epochs):
        for name, epoch_fn in pipelines.items():
            start, cpu, seen = time.perf_counter(), cpu_seconds(), 0
            for x, _ in epoch_fn(e):
                seen += x.shape[0]
                out[name]["batch_shape"] = list(x.shape)
            sync(device)
            rate, ms = seen / (time.perf_counter() - start), 1000 * (cpu_seconds() - cpu) / seen
            out[name]["img_per_s"].append(rate)
            out[name]["cpu_ms_per_img"].append(ms)
            print(f"  epoch {e + 1} {name:22s} {rate:7.0f} img/s  {ms:5.2f} CPU ms/img", file=sys.stderr)
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


def summarise(timings: dict) -> dict:
    results = {}
    for name, t in timings.items():
        rates, cpu = t["img_per_s"], t["cpu_ms_per_img"]
        later = slice(1, None)
        results[name] = {"epoch1_img_per_s": rates[0], "epoch1_cpu_s_per_img": cpu[0] / 1000,
                         "later_img_per_s": float(np.mean(rates[later])) if len(rates) > 1 else None,
                         "later_cpu_s_per_img": float(np.mean(cpu[later])) / 1000 if len(cpu) > 1 else None,
                         "per_epoch_img_per_s": rates, "per_epoch_cpu_ms_per_img": cpu, "batch_shape": t["batch_shape"]}
    return results


def ratios(results: dict) -> dict:
    out = {}
    cached = results["rextransfer_cached"]
    for peer in ("torchvision", "dali_cpu", "rextransfer_uncached"):
        if peer not in results:
            continue
        p = results[peer]
        out[f"cached_vs_{peer}_epoch1"] = cached["epoch1_img_per_s"] / p["epoch1_img_per_s"]
        if p["later_img_per_s"]:
            out[f"cached_vs_{peer}_later"] = cached["later_img_per_s"] / p["later_img_per_s"]
            out[f"cached_vs_{peer}_later_cpu"] = p["later_cpu_s_per_img"] / cached["later_cpu_s_per_img"]
    if "torchvision" in results:
        out["uncached_vs_torchvision_later"] = (results["rextransfer_uncached"]["later_img_per_s"] or 0) / \
            (results["torchvision"]["later_img_per_s"] or 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, default=Path("~/.cache/rextransfer/bench").expanduser())
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="loader workers (processes or threads) of every pipeline")
    parser.add_argument("--epochs", type=int, default=3, help="epoch 1 (cache build for rextransfer) + later epochs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", default="", help="comma-separated pipelines to leave out (torchvision,dali_cpu,rextransfer_uncached)")
    parser.add_argument("--model", default="", help="also time training steps of this timm model (random init)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per pipeline (with --model)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers to this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    skip = {s for s in args.skip.split(",") if s}
    root = make_jpegs(args.data_dir / f"jpegs-mix-{args.images}-{args.classes}", args.images, args.classes)
    cache_dir = Path(tempfile.mkdtemp(prefix="rextransfer-bench-cache-"))
    os.environ["REXTRANSFER_CACHE"] = str(cache_dir)
    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "load_avg_before": os.getloadavg(), "python": platform.python_version(),
                    "torch": torch.__version__, "device": args.device if device.type != "cuda" else torch.cuda.get_device_name(device)},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "size_mix": [{"name": n, "width_height": s, "share": p} for n, s, p in SIZE_MIX],
    }
    try:
        from rextransfer.data.base import FileSamples

        dataset, torchvision_epoch = torchvision_loader(root, args.img_size, args.batch_size, args.workers, device)
        paths, labels = zip(*dataset.samples)
        samples = FileSamples(paths, labels, dataset.classes, "train")
        pipelines = {}
        if "torchvision" not in skip:
            pipelines["torchvision"] = torchvision_epoch
        dali_note = None
        if "dali_cpu" not in skip:
            dali_epoch, dali_note = dali_loader(root, args.img_size, args.batch_size, args.workers, device)
            if dali_epoch is not None:
                pipelines["dali_cpu"] = dali_epoch
            else:
                print(f"DALI CPU pipeline skipped: {dali_note}", file=sys.stderr)
        report["dali"] = {"ran": "dali_cpu" in pipelines, "reason": dali_note}
        if "rextransfer_uncached" not in skip:
            pipelines["rextransfer_uncached"] = rextransfer_loader(samples, args.img_size, args.batch_size, args.workers, device, False)
        pipelines["rextransfer_cached"] = rextransfer_loader(samples, args.img_size, args.batch_size, args.workers, device, True)
        results = summarise(time_epochs(pipelines, args.epochs, device))
        for name, r in results.items():
            line = f"{name:22s} epoch 1: {r['epoch1_img_per_s']:6.0f} img/s ({1000 * r['epoch1_cpu_s_per_img']:.2f} CPU ms/img)"
            if r["later_img_per_s"]:
                line += f"   epochs 2-{args.epochs}: {r['later_img_per_s']:6.0f} img/s ({1000 * r['later_cpu_s_per_img']:.2f} CPU ms/img)"
            print(line)
        report["data_only"] = results
        if "dali_cpu" in pipelines:
            report["dali"]["pipeline_build_s_per_epoch"] = pipelines["dali_cpu"].build_s
        report["ratios"] = r = ratios(results)
        for k, v in r.items():
            print(f"  {k}: {v:.2f}x")
        targets = {name: (r[key] >= bound if key in r else None) for name, key, bound in (
            ("cached >= 10x torchvision, epochs >= 2", "cached_vs_torchvision_later", 10),
            ("cached >= 5x DALI CPU, epochs >= 2", "cached_vs_dali_cpu_later", 5),
            ("cached >= 1.0x torchvision, epoch 1", "cached_vs_torchvision_epoch1", 1.0))}
        report["targets_met"] = targets
        for name, met in targets.items():
            print(f"  target {name}: {'not measured' if met is None else 'met' if met else 'NOT met'}")
        if not report["dali"]["ran"] and "dali_cpu" not in skip:
            print(f"note: the DALI CPU pipeline did not run: {dali_note}")
        if args.model:
            training = {}
            for name in ("torchvision", "rextransfer_cached"):
                if name in pipelines:
                    training[name] = t = time_training(pipelines[name], args.model, args.classes, args.steps, device)
                    print(f"{name:22s} {args.model} train: {t['img_per_s']:.1f} img/s, per step {t['data_wait_s_per_step'] * 1e3:.0f} ms "
                          f"data wait + {t['compute_s_per_step'] * 1e3:.0f} ms compute ({100 * t['data_wait_share']:.0f}% waiting)")
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
