"""Training-loop overhead on CPU: optimizer steps per second of a tiny model through `train()`.

The model is so small (one 3x3 conv of 8 channels on 16 px images, batch 8) that a step costs
about a millisecond, so what the loop does around a step -- reading the loss, updating the
progress bar, checking for a stop signal -- shows in the rate. Batches are made once, in memory,
and handed out by a stand-in pipeline (no decoding), and the loop is rextransfer's own
`rextransfer.train.loop.train` with a real run folder in a temporary directory (bench/harness.py).

Compare two versions of the code by pointing --code at a checkout of each (the default is this
repository); the script only uses `train()`'s signature, which both sides share:

    git archive 06ab599 | (mkdir -p /tmp/before && tar -x -C /tmp/before)
    python bench/loop.py --code /tmp/before --json before.json
    python bench/loop.py --json after.json

Reported: steps/s of each epoch from the run's own metrics (train_img_per_s / batch: the step loop
alone, without evaluation and checkpoints), the median over the epochs after the first (warm-up),
the wall time of the whole `train()` call, and its process CPU time per step (with --threads 1 the
loop's own work; wall-clock rates on a busy shared machine mostly measure waiting for a core).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1],
                        help="root of the rextransfer checkout to measure (default: this one)")
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps per epoch")
    parser.add_argument("--epochs", type=int, default=4, help="epochs (the first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    sys.path.insert(0, str(args.code.resolve()))
    sys.path.insert(1, str(Path(__file__).resolve().parent))
    import torch
    import torch.nn as nn

    import rextransfer
    from harness import train_in_memory

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bs, size, classes = args.batch_size, args.img_size, 4
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(bs, 3, size, size, generator=g), torch.randint(0, classes, (bs,), generator=g))
               for _ in range(8)]
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))
    records, wall, cpu = train_in_memory(model, batches, head={"5.weight", "5.bias"}, num_classes=classes,
                                    steps_per_epoch=args.steps, epochs=args.epochs, device=torch.device("cpu"),
                                    settings={"img_size": size, "lr": 0.01, "device": "cpu", "amp": "off",
                                              "channels_last": "off"})
    per_epoch = [r["train_img_per_s"] / bs for r in records]
    result = {
        "code": str(Path(rextransfer.__file__).resolve().parents[1]), "rextransfer": rextransfer.__version__, "torch": torch.__version__,
        "threads": args.threads, "batch_size": bs, "img_size": size, "steps_per_epoch": args.steps,
        "epochs": args.epochs, "steps_per_s_by_epoch": [round(v, 1) for v in per_epoch],
        "steps_per_s": round(statistics.median(per_epoch[1:] or per_epoch), 1),
        "train_call_s": round(wall, 2),
        # CPU time of the process per step: on a shared machine less disturbed than wall time,
        # which also counts the time the process waited for a core
        "cpu_ms_per_step": round(1e3 * cpu / (args.steps * args.epochs), 3),
    }
    print(f"{result['steps_per_s']:.1f} steps/s (median of epochs 2-{args.epochs}; by epoch "
          f"{', '.join(f'{v:.0f}' for v in per_epoch)}), train() {wall:.1f} s, "
          f"{result['cpu_ms_per_step']:.3f} CPU ms/step  [{result['code']}]")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
