"""Optional extras (pyproject's [onnx], [tensorboard], [mlflow], [wandb]): is one installed, and
the one-line error that names it when it is not (exit 7, environment)."""

from __future__ import annotations

import importlib.util

from ..core.errors import EnvironmentProblem


def missing(modules: tuple[str, ...]) -> list[str]:
    """The modules of `modules` that cannot be imported (checked without importing them)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(extra: str, modules: tuple[str, ...], what: str) -> None:
    """Raise the one-line EnvironmentProblem if any of `modules` is not installed."""
    absent = missing(modules)
    if absent:
        raise EnvironmentProblem(f"{what} needs {', '.join(absent)} (not installed): pip install rextransfer[{extra}]")
