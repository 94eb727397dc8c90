"""Bad input and faults, each as a real file, flag or signal: exit code, one line, nothing lost.

The suite is split by what goes wrong: this file (data and training faults), test_faults_settings.py
(settings, flags, config files), test_faults_runs.py (run folders: location, lock, resume, what
evaluate and predict read back), test_faults_signals.py (Ctrl-C and SIGTERM before training),
test_faults_codes.py (the README's exit-code table against the codes asserted here). Helpers are
in faultkit.py. Cases covered elsewhere: offline without weights and corrupt --weights files
(test_models.py), archive path traversal and offline download (test_download.py), undecodable
image kinds (test_scan.py), incompatible resume (test_state.py), bad flags (test_app.py).
"""

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from faultkit import FAST, one_line, rx
from faultkit import wait_lines as _wait_lines
from synthetic import make_patterns


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_patterns(tmp_path_factory.mktemp("fault"), per_class=8, test_per_class=3)


@pytest.fixture(scope="module")
def done_run(data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = rx("finetune", data, "--runs-dir", runs, "--name", "done", "--epochs", "1", *FAST)
    assert result.returncode == 0, result.stderr
    return runs / data.name / "done"


def snapshot(run: Path) -> dict:
    return {p.name: p.read_bytes() for p in [run / "summary.json", run / "checkpoints" / "last.pt"]}


# -- user errors --------------------------------------------------------------------------------
def test_unknown_dataset_name(tmp_path):
    one_line(rx("finetune", "carz", "--no-pretrained", cwd=tmp_path), 3, "neither a dataset name")


def test_unpublished_width_with_pretrained(data):
    one_line(rx("finetune", data, "--width", "1.2", "--dry-run"), 4, r"1\.0.*1\.3.*1\.5.*2\.0.*3\.0")


def test_unknown_option():
    one_line(rx("finetune", "demo", "--epoch", "3"), 2, "--epoch")


def test_bad_config_file(data, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("lr: [0.1\nepochs: 3\n")
    one_line(rx("finetune", data, "--config", cfg, "--no-pretrained", "--dry-run"), 2, "not valid YAML")


def test_complete_run_is_not_overwritten(data, done_run):
    before = snapshot(done_run)
    one_line(rx("finetune", data, "--runs-dir", done_run.parent.parent, "--name", "done", "--epochs", "1", *FAST),
             5, "already complete")
    assert snapshot(done_run) == before


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    one_line(rx("finetune", "--resume", tmp_path), 5, "not a run folder")


def test_resume_from_a_corrupt_checkpoint(data, tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "rextransfer.cli", "finetune", str(data), "--runs-dir", str(runs),
                             "--name", "c", "--epochs", "50", *FAST], stderr=subprocess.PIPE, text=True)
    run = runs / data.name / "c"
    _wait_lines(run / "metrics.jsonl", 1, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    (run / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    one_line(rx("finetune", "--resume", run), 5, "checkpoint unreadable")


def test_evaluate_and_predict_bad_targets(done_run, tmp_path):
    one_line(rx("evaluate", tmp_path), 5, "not a run folder|no config")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture")
    one_line(rx("predict", done_run, text), 3, "cannot read")
    one_line(rx("predict", done_run, tmp_path / "missing.jpg"), 3, "not found")


def test_bad_files_fail_policy_stops_before_training(data, tmp_path):
    bad = tmp_path / "bad"
    make_patterns(bad, per_class=8, test_per_class=3)
    (bad / "train" / "dots" / "zero.jpg").write_bytes(b"")
    one_line(rx("finetune", bad, "--runs-dir", tmp_path / "runs", "--bad-files", "fail", "--epochs", "1", *FAST), 3, "zero|empty|unusable")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("summary.json"))


def test_bad_files_are_skipped_counted_and_listed(tmp_path):
    bad = tmp_path / "messy"
    make_patterns(bad, per_class=8, test_per_class=3)
    (bad / "train" / "dots" / "zero.jpg").write_bytes(b"")
    (bad / "train" / "dots" / "text.png").write_text("hello")
    good = (bad / "train" / "vertical" / "000.png").read_bytes()
    (bad / "train" / "vertical" / "cut.png").write_bytes(good[: len(good) // 2])
    (bad / "test" / "dots" / "bomb.png").write_bytes(_png_header(70000, 70000))
    result = rx("finetune", bad, "--runs-dir", tmp_path / "runs", "--name", "m", "--epochs", "1", *FAST)
    assert result.returncode == 0, result.stderr
    assert re.search(r"unusable", result.stderr)
    run = tmp_path / "runs" / "messy" / "m"
    listed = (run / "bad_files.csv").read_text()
    for name in ("zero.jpg", "text.png", "cut.png", "bomb.png"):
        assert name in listed
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_size"] == 32 and summary["eval_size"] == 12  # the good images only


# -- faults during training ---------------------------------------------------------------------
def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(data, tmp_path):
    runs = tmp_path / "runs"
    # an lr that grows without bound during a long warmup: the loss diverges after a few epochs
    result = rx("finetune", data, "--runs-dir", runs, "--name", "nan", "--epochs", "400", *FAST,
                "--set", "optimizer=sgd", "--set", "lr=1e12", "--set", "warmup_steps=1000000")
    line = one_line(result, 6, "loss became (nan|inf).*last good checkpoint")
    run = runs / data.name / "nan"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed"
    if (run / "checkpoints" / "last.pt").exists():  # epochs before the divergence were saved intact
        state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert "lower --lr" in line


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint_and_resume_finishes(data, tmp_path):
    runs = tmp_path / "runs"
    run = runs / data.name / "k"
    args = [sys.executable, "-m", "rextransfer.cli", "finetune", str(data), "--runs-dir", str(runs), "--name", "k",
            "--epochs", "16", *FAST]  # long enough that no kill below comes after the end
    # Kill -9 at different moments after an epoch ends: inside the next checkpoint write, in training,
    # in evaluation. Each time the checkpoint on disk must load and rerunning the name resumes it.
    for delay in (0.0, 0.05, 0.12, 0.25):
        proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        seen = len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").exists() else 0
        _wait_lines(run / "metrics.jsonl", seen + 1, proc)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # never torn
        assert state["state"]["step"] >= 2 * (seen + 1)
    final = rx("finetune", data, "--runs-dir", runs, "--name", "k", "--epochs", "16", *FAST)
    assert final.returncode == 0, final.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 16 * 2
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 17))  # each epoch logged once, however often it was killed
    assert not list(run.rglob(".*.tmp"))  # temp files of killed writes were cleaned up


def _limit_file_size():  # runs in the child: a 2 MB file-size limit acts like a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))


def test_full_disk_gives_a_clear_error_and_keeps_earlier_files(data, tmp_path):
    runs = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "rextransfer.cli", "finetune", str(data), "--runs-dir", str(runs),
                             "--name", "full", "--epochs", "1", "--no-cache", *FAST],
                            capture_output=True, text=True, timeout=600, preexec_fn=_limit_file_size)
    line = one_line(result, 7, "disk full while writing .*(last.pt|best.safetensors)")
    assert "nothing was written" in line and "previous version" not in line  # a 1-epoch run had none
    run = runs / data.name / "full"
    assert (run / "config.yaml").read_text().startswith("dataset:")
    assert json.loads((run / "env.json").read_text())["timm_name"] == "rexnet_100"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_out_of_memory_message_suggests_a_batch_size():
    from rextransfer.config.settings import Config
    from rextransfer.core.errors import TrainingError
    from rextransfer.train.run import _oom_error

    error = _oom_error(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), Config(batch_size=128))
    assert isinstance(error, TrainingError) and error.exit_code == 6
    assert re.search(r"--batch-size 64.*grad_accum=2", str(error))
    assert _oom_error(ValueError("shapes do not match"), Config()) is None


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels: what a decompression bomb looks like."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def test_environment_variable_debug_shows_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rextransfer.cli", "--debug", "finetune", str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=300, env={**os.environ})
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_ctrl_c_to_the_whole_process_group_with_loader_workers_saves_and_resumes(data, tmp_path):
    # A terminal's Ctrl-C reaches the DataLoader worker processes too, not only the trainer.
    runs = tmp_path / "runs"
    run = runs / data.name / "group"
    args = [sys.executable, "-m", "rextransfer.cli", "finetune", str(data), "--runs-dir", str(runs), "--name", "group",
            "--epochs", "30", "--no-cache", *FAST, "--set", "workers=2"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_lines(run / "metrics.jsonl", 1, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "resume with: rextransfer finetune --resume" in stderr and "Traceback" not in stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state"]["step"] >= 2
