"""The run folder: what a run writes, written so that a kill at any moment loses nothing.

    runs/<dataset>/<name>/
        config.yaml  env.json  metrics.jsonl  summary.json  per_class.csv  confusion.csv
        curves.png  confusion.png  bad_files.csv
        predictions.csv  top_losses.png   per-image eval results and the worst of them (interpret.py)
        lr_find.png                       with --lr auto: the sweep that chose the lr (lr_find.py)
        checkpoints/last.pt            full training state (torch.load(weights_only=True))
        checkpoints/best.safetensors   weights of the best evaluation so far
        tensorboard/  wandb/           experiment-logger files, written by those libraries (loggers.py)
        export/<format>/               `rextransfer export` without --out (export.py)

`RunDir` is the only writer of a run folder (the logger libraries write into the folders it
names). Every file except metrics.jsonl is written atomically (core/files.py), so a SIGKILL
mid-write leaves the previous version intact; an export folder appears whole or not at all.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import yaml

from ..core.errors import EnvironmentProblem, RunError
from ..core.files import disk_full, json_safe, read_json, write_json, write_text, write_with


class RunDir:
    """A run folder: its names, its state, and every write into it (nothing else writes there)."""

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

    def logger_dir(self, name: str) -> Path:
        """Where an experiment logger library keeps its files (tensorboard/, wandb/)."""
        return self.path / name

    def export_dir(self, fmt: str) -> Path:
        return self.path / "export" / fmt

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
        line = json.dumps(json_safe(record)) + "\n"
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
        write_text(self.path / "metrics.jsonl", "".join(json.dumps(json_safe(r)) + "\n" for r in records))

    def remove_stale_temp_files(self) -> None:
        """Temp files of writes a SIGKILL interrupted (the real files are intact)."""
        for folder in (self.path, self.path / "checkpoints"):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    # -- writes (the only writer of a run folder) ------------------------------------------------
    def write_config(self, cfg) -> None:
        from ..config.settings import to_yaml

        write_text(self.path / "config.yaml", to_yaml(cfg))

    def write_env(self, env: dict) -> None:
        write_json(self.path / "env.json", env)

    def write_summary(self, summary: dict) -> None:
        write_json(self.path / "summary.json", summary)

    def write_bad_files(self, scans: list) -> None:
        from ..data.scan import write_bad_files_csv

        write_with(self.path / "bad_files.csv", lambda p: write_bad_files_csv(scans, p))

    def save_last(self, checkpoint: dict) -> None:
        """checkpoints/last.pt: the whole resumable state (read back with weights_only=True)."""
        import torch

        write_with(self.last_ckpt, lambda p: torch.save(checkpoint, p))

    def save_best(self, state_dict: dict, metadata: dict[str, str]) -> None:
        """checkpoints/best.safetensors: the weights of the best evaluation so far."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
        write_with(self.best_ckpt, lambda p: save_file(tensors, str(p), metadata=metadata))

    def write_results(self, confusion, classes: list[str], metric: str, eval_split: str) -> None:
        """per_class.csv, confusion.csv, curves.png and confusion.png of a finished run."""
        from ..core import plots
        from .metrics import write_confusion_csv, write_per_class_csv

        write_with(self.path / "per_class.csv", lambda p: write_per_class_csv(p, confusion, classes))
        write_with(self.path / "confusion.csv", lambda p: write_confusion_csv(p, confusion, classes))
        rows = self.metrics()
        evals = [r for r in rows if r.get(f"eval_{metric}") is not None]
        plots.line_panels(self.path / "curves.png", [
            {"title": "loss", "xlabel": "epoch", "ylabel": "cross-entropy", "xinteger": True,
             "series": [{"label": "train", "x": [r["epoch"] for r in rows], "y": [r["train_loss"] for r in rows]},
                        {"label": "eval", "x": [r["epoch"] for r in evals], "y": [r["eval_loss"] for r in evals]}]},
            {"title": f"eval {metric}", "xlabel": "epoch", "ylabel": "%", "xinteger": True,
             "series": [{"label": eval_split, "x": [r["epoch"] for r in evals],
                         "y": [r[f"eval_{metric}"] for r in evals], "marker": True}]},
        ], title=f"{self.path.parent.name} / {self.path.name}")
        plots.heatmap(self.path / "confusion.png", confusion.tolist(), row_labels=classes,
                      col_labels=classes, title=f"confusion ({eval_split}), rows = true",
                      xlabel="predicted", ylabel="true")

    def write_interpretation(self, predictions, samples, classes: list[str], crop_pct: float, eval_split: str) -> None:
        """predictions.csv (every eval image) and top_losses.png (the worst ones, fastai-style)."""
        from ..core import plots
        from .interpret import top_losses

        write_with(self.path / "predictions.csv", lambda p: predictions.write_csv(p, classes))
        images, titles, wrong = top_losses(predictions, samples, classes, crop_pct)
        plots.image_grid(self.path / "top_losses.png", images, titles, highlight=wrong, ncols=4,
                         title=f"top losses ({eval_split}): highest loss first; orange caption = wrong prediction")

    def write_lr_find(self, sweep) -> None:
        """lr_find.png: the sweep that `--lr auto` ran before training."""
        from .lr_find import plot_sweep

        plot_sweep(self.path / "lr_find.png", sweep, title=f"{self.path.parent.name} / {self.path.name}")

    def write_export(self, fmt: str, writer) -> Path:
        """export/<fmt>/ written by `writer(folder)` into a temp folder, then renamed into place."""
        import shutil
        import tempfile

        final = self.export_dir(fmt)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{fmt}.", suffix=".tmp", dir=final.parent))
        try:
            writer(tmp)
            os.chmod(tmp, 0o755)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if disk_full(e):
                raise EnvironmentProblem(f"disk full while writing {final}; free space and export again") from None
            raise
        return final
