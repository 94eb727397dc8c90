"""Fault suite, signals before training: Ctrl-C (to the whole process group, as a terminal sends
it) or SIGTERM (to the process, as `kill` does) during the pre-flight scan or the pixel-cache
build is one line and exit 130, with loader workers running, and leaves nothing half-written.
(Signals during training save a checkpoint: test_faults.py.)"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from faultkit import FAST, env_with, one_line, rx, start
from synthetic import make_patterns


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory):
    """132 small images (enough for loader worker processes) and 4 large ones that take a good
    fraction of a second each to decode: the window in which the signal arrives."""
    root = make_patterns(tmp_path_factory.mktemp("signals") / "slow", per_class=33, test_per_class=2)
    for i in range(4):
        Image.new("L", (6000, 6000), 90 + i).save(root / "train" / "dots" / f"large{i}.png", compress_level=1)
    return root


def wait_until_open(folder: Path, proc, timeout: float = 300) -> None:
    """Until some process (the CLI or one of its loader workers) has a large image open."""
    began = time.time()
    while time.time() - began < timeout:
        for fd in glob.glob("/proc/[0-9]*/fd/*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(str(folder)) and "large" in target:
                return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.01)
    raise AssertionError("no large image was opened")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="watches /proc to signal during the scan")
@pytest.mark.slow  # two CLI processes up to the scan or the cache build: ~15 s each idle
@pytest.mark.parametrize("phase, sig", [("scan", signal.SIGINT), ("cache", signal.SIGTERM)], ids=["scan-ctrl-c", "cache-sigterm"])
def test_a_signal_before_training_is_one_line_and_exit_130(slow_data, tmp_path, phase, sig):
    cache = tmp_path / "cache"
    env = env_with(REXTRANSFER_CACHE=str(cache))
    if phase == "cache":  # the scan's verdicts are cached, so the large images are next opened to cache pixels
        assert rx("scan", slow_data, env=env).returncode == 0
    runs = tmp_path / "runs"
    proc = start("finetune", slow_data, "--runs-dir", runs, "--name", "sig", "--epochs", "1", *FAST,
                 "--set", "workers=2", env=env, start_new_session=True)
    wait_until_open(slow_data / "train", proc)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # a terminal's Ctrl-C reaches the loader workers too
    else:
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    name = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    one_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr), 130, f"interrupted by {name}")
    run = runs / slow_data.name / "sig"
    assert not (run / "checkpoints" / "last.pt").exists() and not (run / "summary.json").exists()
    if phase == "scan":
        assert not run.exists()  # the run folder it had just taken is given back
    else:
        assert [p.name for p in (cache / "pixels").iterdir() if p.name.startswith(".tmp-")] == []  # no half cache
    for verdicts in (cache / "scan").glob("*.json") if (cache / "scan").exists() else []:
        json.loads(verdicts.read_text())  # the scan cache is whole or absent
