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

One process at a time: `finetune` holds an exclusive flock on `<run>/.lock` for as long as it runs
(the kernel drops it when the process ends, however it ends), so a second `finetune` of the same
run refuses at once. Everything a command reads back from a run folder (config.yaml, env.json,
bad_files.csv) is checked here, so a damaged run folder is a one-line RunError (exit 5).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Iterator

import yaml

from ..core.errors import EnvironmentProblem, RunError, UsageError
from ..core.files import disk_full, json_safe, read_json, write_json, write_text, write_with

LOCK_NAME = ".lock"


def check_name(name: str) -> str:
    """A --name is one ordinary folder name: it may not climb out of the runs folder or hide."""
    if (not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name
            or "\0" in name or name != name.strip()):
        raise UsageError(f"--name must be a plain folder name (no '/', not '.', '..' or hidden); got {name!r}")
    return name


def _os_problem(e: OSError, path: Path, doing: str) -> Exception:
    """The one-line error for an OSError on a run folder: a file in the way is the run folder's
    problem (exit 5), a read-only, full or foreign disk the environment's (exit 7)."""
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return RunError(f"cannot {doing} {path}: a file is in the way ({e.filename or path} is not a folder); "
                        f"move it, or choose another --runs-dir/--name")
    why = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.ENOSPC: "the disk is full"}.get(e.errno, e.strerror or str(e))
    return EnvironmentProblem(f"cannot {doing} {path}: {why}; choose a writable --runs-dir")


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

    # -- before any work ------------------------------------------------------------------------
    def check_location(self) -> None:
        """The run folder can be written, checked before any work (no side effects): it is a
        folder or can be created as one, inside folders, on a writable disk."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path} is a file, not a run folder; move it, or choose another --name/--runs-dir")
        existing = next((p for p in (self.path, *self.path.parents) if p.exists()), Path("."))
        if not existing.is_dir():
            raise RunError(f"cannot create run folder {self.path}: {existing} is a file, not a folder; "
                           f"choose another --runs-dir")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise EnvironmentProblem(f"cannot create run folder {self.path}: {existing} is not writable; "
                                     f"choose a writable --runs-dir")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder for this process (creating it), or refuse at once if another holds
        it. A folder that nothing was written into is removed again on the way out."""
        made = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = self._take_lock()
        except OSError as e:
            raise _os_problem(e, self.path, "create run folder") from None
        try:
            yield
        finally:
            handle.close()  # releases the flock
            self._remove_if_unused(made)

    def _take_lock(self):
        import fcntl

        path = self.path / LOCK_NAME
        while True:
            handle = open(path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip()
                handle.close()
                raise RunError(f"run {self.path} is in use by another rextransfer process"
                               f"{f' (pid {holder})' if holder.isdigit() else ''}; wait for it to finish, "
                               f"or choose another --name") from None
            except OSError as e:  # a file system without flock (some network mounts): run unlocked
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    handle.close()
                    raise
                return handle
            # the holder before us may have removed an unused folder's lock file: lock the live one
            try:
                same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n")
                handle.flush()
                return handle
            handle.close()

    def _remove_if_unused(self, made: list[Path]) -> None:
        try:
            if [p.name for p in self.path.iterdir()] != [LOCK_NAME]:
                return
            (self.path / LOCK_NAME).unlink()
            for folder in made:  # the run folder first, then the parents this run created
                folder.rmdir()
        except OSError:
            pass

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
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path} is a file, not a run folder")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            raise RunError(f"{self.path} is not a run folder (no config.yaml)") from None
        except (yaml.YAMLError, ValueError, OSError):  # ValueError: not UTF-8 text
            raise RunError(f"{path} is corrupt; cannot use this run") from None
        if not isinstance(data, dict):
            raise RunError(f"{path} is corrupt; cannot use this run")
        return data

    def settings(self):
        """The run's stored Config, checked like any settings: a bad value there is the run
        folder's problem (exit 5), not the command line's."""
        from ..config.settings import from_dict

        try:
            return from_dict(self.stored_config(), f"{self.path}/config.yaml").validate()
        except UsageError as e:
            raise RunError(f"{self.path}/config.yaml is damaged: {e}; fix it, or start a new run with another --name") from None

    def env(self) -> dict:
        """env.json, checked for what readers use: classes and preprocessing."""
        path = self.path / "env.json"
        try:
            env = read_json(path)
        except (OSError, ValueError):
            raise RunError(f"{self.path} has no readable env.json; was the run started?") from None
        problem = _env_problem(env)
        if problem:
            raise RunError(f"{path} is damaged ({problem}); cannot use this run")
        return env

    def resume_point(self) -> str:
        """"resume" (continue from checkpoints/last.pt) or "start" (nothing done yet: step 0).
        A run that made progress but lost its checkpoint is an error, never a silent restart."""
        if self.last_ckpt.exists():
            return "resume"
        done = len(self.metrics())
        if done or self.best_ckpt.exists():
            raise RunError(f"cannot resume {self.path}: checkpoints/last.pt is missing but {done} epoch(s) were done; "
                           f"restore it, or start a new run with another --name")
        return "start"

    def check_classes(self, classes: list[str]) -> None:
        """Resuming needs the classes the checkpoint was trained on (checked before any write)."""
        old = self.env()["classes"]
        if list(classes) != old:
            added, removed = sorted(set(classes) - set(old)), sorted(set(old) - set(classes))
            what = "; ".join(f"{verb} {', '.join(map(repr, names[:3]))}{' ...' if len(names) > 3 else ''}"
                             for verb, names in (("added", added), ("removed", removed)) if names) or "reordered"
            raise RunError(f"cannot resume {self.path}: the dataset's classes changed since it started ({what}; "
                           f"the checkpoint has {len(old)}, the data {len(classes)}); restore the data or start a "
                           f"new run with another --name")

    def check_checkpoint(self, model, checkpoint) -> None:
        """Resuming needs a last.pt whose weights fit the model the stored settings build."""
        state = checkpoint.get("model") if isinstance(checkpoint, dict) else checkpoint
        mismatch = state_dict_mismatch(model, state)
        if mismatch:
            raise RunError(f"cannot resume {self.path}: its checkpoint does not fit the model ({mismatch}); "
                           f"start a new run with another --name")

    def skipped(self) -> set[str]:
        """Keys of the images the pre-flight scan left out of this run (bad_files.csv)."""
        try:
            with open(self.path / "bad_files.csv", newline="") as f:
                return {row["file"] for row in csv.DictReader(f) if row.get("file")}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, csv.Error):
            raise RunError(f"{self.path}/bad_files.csv is damaged; cannot tell which images the run skipped") from None

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


def _numbers(value, n: int) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def _env_problem(env) -> str | None:
    """What is wrong with an env.json's shape (None if nothing)."""
    if not isinstance(env, dict):
        return "not a JSON object"
    classes = env.get("classes")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes)):
        return "'classes' must be a list of at least 2 distinct names"
    pre = env.get("preprocessing")
    if not isinstance(pre, dict):
        return "'preprocessing' must be an object"
    for key in ("mean", "std"):
        if not _numbers(pre.get(key), 3):
            return f"'preprocessing.{key}' must be 3 numbers"
    if pre.get("interpolation") is not None and not isinstance(pre["interpolation"], str):
        return "'preprocessing.interpolation' must be a name"
    crop = pre.get("crop_pct")
    if crop is not None and not (_numbers([crop], 1) and 0 < crop <= 1):
        return "'preprocessing.crop_pct' must be in (0, 1]"
    return None


def state_dict_mismatch(model, state: dict) -> str | None:
    """One line saying how `state` differs from `model`'s parameters and buffers (None if it fits)."""
    if not isinstance(state, dict):
        return f"not a state dict ({type(state).__name__})"
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and getattr(state[k], "shape", None) != own[k].shape]
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} with another shape (e.g. {k}: checkpoint {list(getattr(state[k], 'shape', []))}, "
                     f"model {list(own[k].shape)})")
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return "; ".join(parts) or None
