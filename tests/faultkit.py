"""What the fault suite (tests/test_faults*.py) shares: running the CLI as a user does, the
one-line-error check, tiny fast runs, interrupted runs, snapshots of folders, and the few
environments (a read-only folder, a tiny disk) that need a private mount namespace."""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# tiny images, 2 steps per epoch, no workers, no pretrained weights: a run takes seconds
FAST = ["--no-pretrained", "--set", "img_size=32", "--set", "batch_size=16", "--set", "workers=0",
        "--set", "probe_epochs=0", "--set", "eval_every=1"]


def env_with(**extra: str) -> dict:
    """The test environment, with this checkout first on the path (cwd may be anywhere)."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, **extra}


def command(*args) -> list[str]:
    return [sys.executable, "-m", "rextransfer.cli", *map(str, args)]


def rx(*args, timeout=600, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=timeout,
                          env=env or env_with(), **kw)


def start(*args, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(command(*args), stderr=subprocess.PIPE, text=True, env=env or env_with(), **kw)


def one_line(result, code: int, pattern: str) -> str:
    """Exit `code`, exactly one `error:` line matching `pattern`, and no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (but the lock file, which records its last holder's pid)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def wait_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    start_ = time.time()
    while time.time() - start_ < timeout:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "ended"
        time.sleep(0.02)
    raise AssertionError("timed out")


def interrupted_run(data: Path, runs: Path, name: str, epochs: int = 4, cwd: Path | None = None) -> Path:
    """A run stopped by SIGTERM after its first epoch: resumable, with checkpoints/last.pt."""
    proc = start("finetune", data, "--runs-dir", runs, "--name", name, "--epochs", epochs, *FAST, cwd=cwd)
    assert Path(runs).is_absolute()
    run = Path(runs) / Path(data).name / name
    wait_lines(run / "metrics.jsonl", 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert (run / "checkpoints" / "last.pt").exists()
    return run


def free_port() -> int:
    """A TCP port nobody listens on now (parallel test workers must not share a rendezvous port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock"))
    return to


@functools.cache
def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


def in_private_mounts(mounts: list[str], argv: list[str], **kw) -> subprocess.CompletedProcess:
    """Run argv after `mounts` (shell mount commands) in a mount namespace of its own, so a
    read-only folder or a tiny disk is real for the command and invisible to everything else.
    Needs root and unshare(1); skips the test otherwise."""
    if not _can_unshare():
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    script = " && ".join([*mounts, 'exec "$@"'])
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *argv], capture_output=True, text=True,
                          timeout=600, **kw)


def read_only(folder: Path, argv: list[str], **kw) -> subprocess.CompletedProcess:
    """Run argv with `folder` read-only: a read-only bind mount as root (root ignores permission
    bits), the permission bits otherwise."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)
        finally:
            folder.chmod(0o755)
    return in_private_mounts([f"mount --bind '{folder}' '{folder}'", f"mount -o remount,bind,ro '{folder}'"], argv, **kw)
