"""Experiment loggers: TensorBoard, MLflow and Weights & Biases, each an optional extra.

    settings `loggers`: auto (TensorBoard if it is installed, else none) | none | tensorboard,mlflow,wandb

`make_loggers` runs on rank 0 only (the other ranks get an empty `Loggers`). The loop calls
`log_step` where it refreshes the progress bar (scalars at most every `log_every` steps) and
`log_epoch` with each epoch's record; run.py logs the settings at the start and the plots and
summary at the finish, then closes them. Where each one writes:

    tensorboard  <run folder>/tensorboard/ (event files: scalars, hparams, the run's PNGs)
    mlflow       $MLFLOW_TRACKING_URI, else a local store beside the runs: <runs_dir>/mlruns/
                 (mlflow.db, MLflow's local SQLite backend, and artifacts/); experiment
                 $MLFLOW_EXPERIMENT_NAME, else rextransfer-<dataset>
    wandb        project $WANDB_PROJECT, else rextransfer; files under <run folder>/wandb/ unless
                 $WANDB_DIR is set; WANDB_MODE=offline (read by wandb itself) keeps it local

A logger that fails (at start or later) is dropped with a one-line warning: it never costs the run.
Asking for one whose package is missing is a one-line error naming the extra (exit 7).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from ..config.settings import LOGGERS, Config
from ..core.console import log
from ..core.errors import EnvironmentProblem
from .extras import missing, require

# What each logger imports (all must be installed); the extra that installs them has the logger's name.
NEEDS = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic"), "wandb": ("wandb",)}


def installed(name: str) -> bool:
    return not missing(NEEDS[name])


def logger_names(setting: str) -> list[str]:
    """The loggers a `loggers` setting asks for; a named one that is not installed is an error."""
    names = [n.strip() for n in setting.split(",") if n.strip()]
    if names == ["none"]:
        return []
    if names == ["auto"]:
        return ["tensorboard"] if installed("tensorboard") else []
    for name in names:
        if name not in LOGGERS:  # Config.validate reports it first; kept for direct callers
            raise EnvironmentProblem(f"unknown logger {name!r}; choose from {', '.join(LOGGERS)}")
        require(name, NEEDS[name], f"--log {name}")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------------------
# The loggers the loop and run.py talk to
# ------------------------------------------------------------------------------------------------
class Loggers:
    """The active loggers as one; every call is guarded (a failing logger is dropped, once)."""

    def __init__(self, backends: list | None = None, log_every: int = 1):
        self.backends = list(backends or [])
        self.log_every = max(1, int(log_every))
        self._last_step: int | None = None

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.backends]

    def describe(self) -> str:
        if not self.backends:
            hint = "" if installed("tensorboard") else " (pip install rextransfer[tensorboard] for TensorBoard)"
            return f"experiment loggers: none{hint}"
        return "experiment loggers: " + "; ".join(f"{b.name} → {b.where}" for b in self.backends)

    def log_step(self, step: int, values: dict[str, Any]) -> None:
        """Training scalars (loss, lr, img/s) as `train/<key>`, at most every log_every steps."""
        if not self.backends or (self._last_step is not None and step - self._last_step < self.log_every):
            return
        self._last_step = step
        self._each("scalars", step, _numbers({f"train/{k}": v for k, v in values.items()}))

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """One epoch record: `eval_<m>` as `eval/<m>`, the rest as `epoch/<key>`, at the record's step."""
        if not self.backends:
            return
        scalars = {(f"eval/{k[5:]}" if k.startswith("eval_") else f"epoch/{k}"): v
                   for k, v in record.items() if k not in ("epoch", "step")}
        scalars["epoch/epoch"] = epoch
        self._each("scalars", int(record.get("step", epoch)), _numbers(scalars))

    def log_settings(self, settings: dict[str, Any], metrics: list[str]) -> None:
        """The run's settings (TensorBoard hparams, MLflow params, W&B config) and its key metrics."""
        self._each("settings", {k: _plain(v) for k, v in settings.items()}, metrics)

    def log_finish(self, step: int, images: dict[str, Path], files: list[Path], summary: dict) -> None:
        """At the end of a finished run: its PNGs, its result files and summary numbers."""
        present = {k: Path(p) for k, p in images.items() if Path(p).exists()}
        self._each("finish", step, present, [Path(f) for f in files if Path(f).exists()], _flat_numbers(summary))

    def close(self, status: str = "complete") -> None:
        """status: complete | interrupted | failed."""
        for backend in list(self.backends):
            self._guard(backend, "close", status)
        self.backends = []

    # -- guarding ---------------------------------------------------------------------------------
    def _each(self, method: str, *args: Any) -> None:
        for backend in list(self.backends):
            self._guard(backend, method, *args)

    def _guard(self, backend, method: str, *args: Any) -> None:
        try:
            getattr(backend, method)(*args)
        except Exception as e:  # noqa: BLE001 - a logger never costs the run
            if backend in self.backends:
                self.backends.remove(backend)
                warn(backend.name, e)
                if method != "close":
                    try:
                        backend.close("failed")
                    except Exception:  # noqa: BLE001
                        pass


HINTS = {"wandb": " (WANDB_MODE=offline logs locally without an account)"}


def warn(name: str, e: BaseException, starting: bool = False) -> None:
    from rich.markup import escape

    message = (str(e).strip().splitlines() or [""])[0][:200]
    what = f"could not start{escape(HINTS.get(name, ''))}" if starting else "stopped"
    log(f"[yellow]warning: {name} logging {what}: {escape(type(e).__name__)}: {escape(message)}; the run goes on[/]")


def make_loggers(cfg: Config, run, main: bool = True) -> Loggers:
    """The loggers of a run (rank 0; an empty one elsewhere). One that cannot start is a warning."""
    if not main:
        return Loggers([], cfg.log_every)
    backends = []
    for name in logger_names(cfg.loggers):
        try:
            backends.append(BACKENDS[name](cfg, run))
        except Exception as e:  # noqa: BLE001 - e.g. W&B without a key, an unreachable MLflow server
            warn(name, e, starting=True)
    return Loggers(backends, cfg.log_every)


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """Finite numbers only (bools count as 0/1; a NaN placeholder or a string is left out)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool):
            value = float(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[key] = number
    return out


def _flat_numbers(summary: dict, prefix: str = "") -> dict[str, float]:
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update(_flat_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return _numbers(flat)


def _plain(value: Any) -> Any:
    """A setting as a scalar every logger takes (lists become text)."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


# ------------------------------------------------------------------------------------------------
# Backends: each has name, where, settings(), scalars(), finish(), close()
# ------------------------------------------------------------------------------------------------
class TensorBoardLogger:
    name = "tensorboard"

    def __init__(self, cfg: Config, run):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = run.logger_dir("tensorboard")
        self.writer = SummaryWriter(log_dir=str(self.dir))
        self.where = str(self.dir)

    def settings(self, settings: dict, metrics: list[str]) -> None:
        from torch.utils.tensorboard.summary import hparams

        # written into this run's own event file (add_hparams would start a separate run folder)
        writer = self.writer._get_file_writer()
        for summary in hparams(settings, {m: 0.0 for m in metrics}):
            writer.add_summary(summary)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, step: int, images: dict[str, Path], files: list[Path], summary: dict) -> None:
        import numpy as np
        from PIL import Image

        for name, path in images.items():
            with Image.open(path) as im:
                self.writer.add_image(name, np.asarray(im.convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class MLflowLogger:
    name = "mlflow"
    STATUS = {"complete": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}

    def __init__(self, cfg: Config, run):
        for noisy in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." on every new store
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        uri, artifacts = os.environ.get("MLFLOW_TRACKING_URI"), None
        if not uri:
            store = (Path(cfg.runs_dir) / "mlruns").resolve()
            store.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"rextransfer-{run.path.parent.name}"
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            try:
                experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
            except Exception:  # another run created it a moment ago
                experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        self.run_id = self.client.create_run(experiment_id, run_name=run.path.name,
                                             tags={"rextransfer.run_dir": str(run.path.resolve())}).info.run_id
        self.where = f"{uri}, experiment {experiment}, run {self.run_id}"

    def settings(self, settings: dict, metrics: list[str]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in settings.items()])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def finish(self, step: int, images: dict[str, Path], files: list[Path], summary: dict) -> None:
        for path in [*images.values(), *files]:
            self.client.log_artifact(self.run_id, str(path))
        self.scalars(step, {f"summary/{k}": v for k, v in summary.items()})

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=self.STATUS.get(status, "FAILED"))


class WandbLogger:
    name = "wandb"

    def __init__(self, cfg: Config, run):
        import wandb

        self.wandb = wandb
        kwargs: dict[str, Any] = {}
        if not os.environ.get("WANDB_DIR"):
            kwargs["dir"] = str(run.logger_dir("wandb").parent)  # wandb adds the wandb/ folder itself
        # WANDB_MODE (online | offline | disabled) is read by wandb.init itself; silent: our stdout stays ours
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "rextransfer", name=run.path.name,
                              group=run.path.parent.name, config=cfg.to_dict(),
                              settings=wandb.Settings(silent=True, console="off"), **kwargs)
        offline = getattr(self.run.settings, "mode", "") in ("offline", "dryrun")
        self.where = f"offline, {self.run.dir}" if offline else (self.run.url or self.run.dir)

    def settings(self, settings: dict, metrics: list[str]) -> None:
        self.run.config.update(settings, allow_val_change=True)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def finish(self, step: int, images: dict[str, Path], files: list[Path], summary: dict) -> None:
        self.run.log({name: self.wandb.Image(str(path)) for name, path in images.items()}, step=step)
        self.run.summary.update(summary)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "complete" else 1)


BACKENDS = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger, "wandb": WandbLogger}
