"""The run folder: what a run writes, written so that a kill at any moment loses nothing.

    runs/<dataset>/<name>/
        config.yaml  env.json  metrics.jsonl  summary.json  per_class.csv  confusion.csv
        curves.png  confusion.png  bad_files.csv
        checkpoints/last.pt            full training state (torch.load(weights_only=True))
        checkpoints/best.safetensors   weights of the best evaluation so far

Every file except metrics.jsonl is written to a temp file in the same folder and renamed over the
old one (atomic on POSIX), so a SIGKILL mid-write leaves the previous version intact. A full disk
becomes a one-line EnvironmentProblem, and the previous file is still there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from .errors import EnvironmentProblem, RunError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; run files are ordinary files
        os.replace(tmp_path, path)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        if disk_full(e):
            raise EnvironmentProblem(f"disk full while writing {path}; the previous version is intact — free space and resume") from None
        raise


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_FULL_TEXTS = ("no space left", "file too large", "disk quota", "os error 28", "os error 27", "file write failed")


def disk_full(e: BaseException) -> bool:
    """OSError from Python, or the wrapped errors of torch.save (RuntimeError) and safetensors."""
    if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
        return True
    return isinstance(e, Exception) and any(text in str(e).lower() for text in _FULL_TEXTS)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(_json_safe(data), indent=2) + "\n")


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Atomic write through a function that writes to a given path (CSV writers, torch.save)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    # -- names ----------------------------------------------------------------------------------
    @staticmethod
    def default_name(model: str, width: float) -> str:
        return f"{model}-w{width:g}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def last_ckpt(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best_ckpt(self) -> Path:
        return self.path / "checkpoints" / "best.safetensors"

    # -- state ----------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / "config.yaml").exists()

    def summary(self) -> dict | None:
        try:
            return read_json(self.path / "summary.json")
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def status(self) -> str:
        """complete | interrupted | failed | running | new."""
        summary = self.summary()
        if summary:
            return summary.get("status", "interrupted")
        return "interrupted" if self.exists() else "new"

    def stored_config(self) -> dict:
        path = self.path / "config.yaml"
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise RunError(f"{self.path} is not a run folder (no config.yaml)") from None
        except yaml.YAMLError:
            raise RunError(f"{path} is corrupt; cannot resume this run") from None
        if not isinstance(data, dict):
            raise RunError(f"{path} is corrupt; cannot resume this run")
        return data

    def create(self) -> None:
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)

    def append_metrics(self, record: dict) -> None:
        """One JSON line per epoch; appended and fsynced (a torn last line is skipped on read)."""
        line = json.dumps(_json_safe(record)) + "\n"
        try:
            with open(self.path / "metrics.jsonl", "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if disk_full(e):
                raise EnvironmentProblem(f"disk full while writing {self.path / 'metrics.jsonl'}; free space and resume") from None
            raise

    def metrics(self) -> list[dict]:
        rows = []
        try:
            lines = (self.path / "metrics.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return rows
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
        return rows

    def rewrite_metrics(self, records: list[dict]) -> None:
        """On resume: metrics.jsonl becomes exactly the epochs the checkpoint holds."""
        write_text(self.path / "metrics.jsonl", "".join(json.dumps(_json_safe(r)) + "\n" for r in records))

    def remove_stale_temp_files(self) -> None:
        """Temp files of writes a SIGKILL interrupted (the real files are intact)."""
        for folder in (self.path, self.path / "checkpoints"):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
