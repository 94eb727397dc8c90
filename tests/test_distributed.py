"""Several processes on CPU (gloo): evaluation sharded over ranks gives exactly the one-process
numbers, and `torchrun --nnodes=2` (two "nodes" on this machine) trains one run folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rextransfer.train.distributed import shard
from faultkit import free_port
from synthetic import make_patterns

DATA_CONFIG = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 0.875, "interpolation": "bilinear"}
CLASSES = 4
METRICS = ("top1", "top5", "mean_class_acc", "loss")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 20 eval images, eval batches of 8: 3 batches (8, 8, 4), so the 2 ranks get 1 and 2 of them
    return make_patterns(tmp_path_factory.mktemp("dist"), per_class=4, test_per_class=5)


def evaluate_checkpoint(checkpoint: str, data: str, rank: int, world: int, cache: bool, first: int = 0) -> dict:
    import timm

    from rextransfer.config.settings import Config
    from rextransfer.data.folder import load_folder
    from rextransfer.data.pipeline import Pipeline
    from rextransfer.train.distributed import Dist
    from rextransfer.train.loop import autocast_for, evaluate

    cfg = Config(model="rexnet", pretrained=False, img_size=32, batch_size=4, workers=0, cache=cache, amp="off")
    model = timm.create_model("rexnet_100", num_classes=CLASSES)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    pipeline = Pipeline(cfg, DATA_CONFIG, torch.device("cpu"), rank=rank, world=world)
    samples = load_folder(Path(data)).eval
    if first:  # only the first `first` images
        samples = samples.subset(range(first))
    metrics, confusion, _ = evaluate(model, pipeline, samples, CLASSES, autocast_for(cfg, torch.device("cpu")),
                                     Dist(rank=rank, world=world))
    return {"metrics": metrics, "confusion": confusion.tolist()}


def all_cases(checkpoint: str, data: str, rank: int, world: int) -> dict:
    """From the pixel cache, from the files, and a split of one batch (rank 1 of 2 gets none of it)."""
    return {"cached": evaluate_checkpoint(checkpoint, data, rank, world, cache=True),
            "files": evaluate_checkpoint(checkpoint, data, rank, world, cache=False),
            "one batch": evaluate_checkpoint(checkpoint, data, rank, world, cache=False, first=5)}


def _rank_main(rank: int, world: int, port: int, checkpoint: str, data: str, out: str) -> None:
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = all_cases(checkpoint, data, rank, world)
    finally:
        tdist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


def test_shards_are_contiguous_and_cover_every_item_once():
    for n in (0, 1, 3, 7, 100):
        for world in (1, 2, 3, 8):
            spans = [shard(n, r, world) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            sizes = [b - a for a, b in spans]
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.slow  # two spawned processes import torch and timm and build caches on 2 shared cores: ~60 s
def test_sharded_evaluation_on_two_processes_equals_one_process(data, tmp_path):
    import timm

    torch.manual_seed(0)
    # CPU kernels may split a reduction differently with another thread count: use the ranks' one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    checkpoint = str(tmp_path / "model.pt")
    torch.save(timm.create_model("rexnet_100", num_classes=CLASSES).state_dict(), checkpoint)
    try:
        single = all_cases(checkpoint, str(data), 0, 1)
    finally:
        torch.set_num_threads(threads)

    mp.spawn(_rank_main, args=(2, free_port(), checkpoint, str(data), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for case, one in single.items():
        assert sum(map(sum, one["confusion"])) == (5 if case == "one batch" else 20)
        for r in range(2):  # every rank holds the whole split's numbers, bit for bit
            assert ranks[r][case]["confusion"] == one["confusion"], (case, r)
            assert ranks[r][case]["metrics"] == one["metrics"], (case, r)


def _sets(*extra: str) -> list[str]:
    settings = ["model=rexnet", "pretrained=false", "img_size=32", "batch_size=8", "workers=0", "epochs=2",
                "optimizer=sgd", "lr=0.05", "seed=5", "device=cpu", "log_every=3", *extra]
    return [arg for s in settings for arg in ("--set", s)]


@pytest.mark.slow  # two torchrun agents + two trainer processes start (torch, timm) and train on 2 shared cores: ~60 s
def test_torchrun_two_nodes_rendezvous_train_one_run_folder(data, tmp_path):
    runs, port = tmp_path / "runs", free_port()
    procs = []
    for node in range(2):
        # each "node" has its own local disk for pixel caches
        env = {**os.environ, "OMP_NUM_THREADS": "1", "REXTRANSFER_CACHE": str(tmp_path / f"node{node}-cache")}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=rextransfer-test",
               "--local_addr=127.0.0.1", "-m", "rextransfer.cli", "finetune", str(data), "--runs-dir", str(runs),
               "--name", "two-nodes", *_sets()]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]

    assert [p.name for p in (runs / data.name).iterdir()] == ["two-nodes"]
    run = runs / data.name / "two-nodes"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 2 * 2  # 16 images / 8 per step, 2 epochs
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # written once, by rank 0
    for name in ("config.yaml", "per_class.csv", "confusion.csv", "curves.png", "confusion.png",
                 "checkpoints/last.pt", "checkpoints/best.safetensors"):
        assert (run / name).is_file(), name
    # the evaluation sharded over the two nodes is, bit for bit, one process evaluating the best weights
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    evaluated = subprocess.run([sys.executable, "-m", "rextransfer.cli", "evaluate", str(run), "--checkpoint", "best",
                                "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    one = json.loads(evaluated.stdout)
    assert {k: one[k] for k in METRICS} == {k: summary["best"][k] for k in METRICS}
    for node in range(2):  # each node built the train and eval caches on its own disk
        built = list((tmp_path / f"node{node}-cache" / "pixels").glob("*/meta.json"))
        assert sorted(json.loads(m.read_text())["split"] for m in built) == ["test", "train"], node
