"""Atomic file writes: a kill at any moment leaves the previous version of a file intact.

Every write goes to a temp file in the same folder and is renamed over the old one (atomic on
POSIX). A full disk becomes a one-line EnvironmentProblem, and the previous file is still there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import EnvironmentProblem


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
    existed = path.exists()
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; run files are ordinary files
        os.replace(tmp_path, path)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        if disk_full(e):
            kept = "the previous version is intact" if existed else "nothing was written"
            raise EnvironmentProblem(f"disk full while writing {path}; {kept} — free space and resume") from None
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


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(json_safe(data), indent=2) + "\n")


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Atomic write through a function that writes to a given path (CSV writers, torch.save)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
