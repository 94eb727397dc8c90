"""Exact resume after Ctrl-C, and 2-process DDP (gloo, CPU) writing one run folder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from faultkit import free_port
from synthetic import make_patterns

SETTINGS = ["model=rexnet", "pretrained=false", "img_size=32", "batch_size=16", "workers=0", "epochs=6",
            "optimizer=sgd", "lr=0.05", "warmup_steps=2", "label_smoothing=0.1", "mixup=0.2",
            "ema=true", "ema_decay=0.9", "seed=7"]


def cli(*args: str, env: dict | None = None) -> list[str]:
    return [sys.executable, "-m", "rextransfer.cli", *args]


def sets(*extra: str) -> list[str]:
    out = []
    for s in (*SETTINGS, *extra):
        out += ["--set", s]
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_patterns(tmp_path_factory.mktemp("pat"), per_class=16, test_per_class=6)


def _wait_for_epochs(metrics: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("run did not reach the interruption point")


def test_interrupted_then_resumed_equals_uninterrupted(data, tmp_path):
    runs = str(tmp_path / "runs")
    ref = subprocess.run(cli("finetune", str(data), "--name", "ref", "--runs-dir", runs, *sets()),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr

    proc = subprocess.Popen(cli("finetune", str(data), "--name", "cut", "--runs-dir", runs, *sets()),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = Path(runs) / data.name / "cut"
    _wait_for_epochs(run_dir / "metrics.jsonl", 2, proc)
    time.sleep(0.1)  # land somewhere inside epoch 3 (an epoch takes longer than this)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "resume with: rextransfer finetune --resume" in stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    stopped_at = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state"]["step"]
    assert 0 < stopped_at < 6 * 4

    resumed = subprocess.run(cli("finetune", "--resume", str(run_dir)), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr

    ref_dir = Path(runs) / data.name / "ref"
    a = torch.load(ref_dir / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert a["state"]["step"] == b["state"]["step"] == 24
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for key, tensor in a["ema"].items():
        assert torch.equal(tensor, b["ema"][key]), key
    best_a, best_b = load_file(str(ref_dir / "checkpoints/best.safetensors")), load_file(str(run_dir / "checkpoints/best.safetensors"))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref_dir, run_dir))
    assert sa["final"] == sb["final"] and sa["best"] == sb["best"]
    ma = [json.loads(x) for x in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = ("epoch", "step", "train_loss", "eval_top1", "eval_loss", "eval_mean_class_acc")
    assert [[r.get(k) for k in keys] for r in ma] == [[r.get(k) for k in keys] for r in mb]


def test_rerunning_the_same_name_with_other_settings_is_refused(data, tmp_path):
    runs = str(tmp_path / "runs")
    proc = subprocess.Popen(cli("finetune", str(data), "--name", "x", "--runs-dir", runs, *sets()),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = Path(runs) / data.name / "x"
    _wait_for_epochs(run_dir / "metrics.jsonl", 1, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    again = subprocess.run(cli("finetune", str(data), "--name", "x", "--runs-dir", runs, *sets("lr=0.1")),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 5
    assert "cannot resume" in again.stderr and "lr" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_ddp_two_processes_gloo_write_one_run_folder(data, tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "rextransfer.cli", "finetune", str(data), "--runs-dir", str(runs), *sets("epochs=2", "device=cpu")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    folders = [p for p in (runs / data.name).iterdir()]
    assert len(folders) == 1, folders
    run_dir = folders[0]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]  # written once, by rank 0
    env_json = json.loads((run_dir / "env.json").read_text())
    assert env_json["world_size"] == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 2 * 4
