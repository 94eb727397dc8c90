"""Where output goes: results to stdout, progress and log lines to stderr (so pipes stay clean)."""

from __future__ import annotations

from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def log(message: str) -> None:
    err.print(message)
