"""Experiment loggers with the real libraries, offline: TensorBoard event files and the MLflow
store are read back with their own readers; W&B runs offline; a failing logger costs nothing."""

import json
import os

import pytest
from typer.testing import CliRunner

from rextransfer.cli.app import app
from rextransfer.train.loggers import Loggers, logger_names
from tiny_run import patterns, train_tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return patterns(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def logged(data, tmp_path_factory):
    """One 2-epoch run (2 steps each) logging to TensorBoard, MLflow and W&B (offline) at once."""
    runs = tmp_path_factory.mktemp("runs")
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "MLFLOW_TRACKING_URI", "WANDB_DIR")}
    os.environ["WANDB_MODE"] = "offline"
    for k in ("MLFLOW_TRACKING_URI", "WANDB_DIR"):
        os.environ.pop(k, None)
    try:
        path = train_tiny(data, runs, "logged", epochs=2, log_every=1, loggers="tensorboard,mlflow,wandb")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return path


def metrics_of(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_event_file_holds_the_per_epoch_eval_metric(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logged / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    records = metrics_of(logged)
    top1 = acc.Scalars("eval/top1")
    assert [e.step for e in top1] == [r["step"] for r in records] == [2, 4]
    assert [e.value for e in top1] == pytest.approx([r["eval_top1"] for r in records])
    assert [e.value for e in acc.Scalars("epoch/train_loss")] == pytest.approx([r["train_loss"] for r in records])
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]  # log_every=1
    assert {"curves", "confusion", "top_losses"} <= set(acc.Tags()["images"])
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(acc.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["model"].string_value == "test_efficientnet"
    assert start.session_start_info.hparams["lr"].number_value == pytest.approx(0.003)


def test_mlflow_metrics_read_back_from_the_local_store_beside_the_runs(logged):
    from mlflow.tracking import MlflowClient

    store = logged.parent.parent / "mlruns"
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"rextransfer-{logged.parent.name}")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "logged" and run.info.status == "FINISHED"
    assert run.data.params["model"] == "test_efficientnet" and float(run.data.params["lr"]) == 0.003
    history = client.get_metric_history(run.info.run_id, "eval/top1")
    records = metrics_of(logged)
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["eval_top1"])) for r in records]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "top_losses.png", "summary.json"} <= artifacts
    assert (store / "artifacts").is_dir()


def test_wandb_offline_keeps_the_run_in_the_run_folder(logged):
    (offline,) = (logged / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))
    logged_images = {p.name.split("_")[0] for p in (offline / "files" / "media" / "images").glob("*.png")}
    assert {"curves", "confusion", "top"} <= logged_images  # top_losses_<step>_<hash>.png


def test_the_run_output_says_which_loggers_are_active(data, tmp_path):
    result = runner.invoke(app, ["finetune", str(data), "--model", "test_efficientnet", "--no-pretrained",
                                 "--img-size", "32", "-b", "16", "--workers", "0", "--steps", "1",
                                 "--runs-dir", str(tmp_path), "--log", "tensorboard"])
    assert result.exit_code == 0, result.output
    assert "experiment loggers: tensorboard → " in result.stderr
    assert list((tmp_path / data.name).glob("*/tensorboard/events.out.tfevents.*"))


def test_auto_is_tensorboard_when_installed_and_none_is_none():
    assert logger_names("auto") == ["tensorboard"]
    assert logger_names("none") == []
    assert logger_names("mlflow,tensorboard,mlflow") == ["mlflow", "tensorboard"]


def test_a_missing_logger_package_is_one_line_naming_the_extra(data, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "mlflow", None)  # as if not installed
    result = runner.invoke(app, ["finetune", str(data), "--no-pretrained", "--log", "mlflow", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 7
    assert result.stderr.strip().count("\n") == 0
    assert "pip install rextransfer[mlflow]" in result.stderr
    assert not list(tmp_path.rglob("config.yaml"))  # refused before anything was written


def test_a_logger_that_cannot_start_is_a_warning_and_the_run_completes(data, tmp_path, monkeypatch):
    # a real MLflow client against a port where nothing listens, told not to retry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    result = runner.invoke(app, ["finetune", str(data), "--model", "test_efficientnet", "--no-pretrained",
                                 "--img-size", "32", "-b", "16", "--workers", "0", "--steps", "1",
                                 "--runs-dir", str(tmp_path), "--log", "mlflow"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "mlflow logging" in line]
    assert len(warnings) == 1 and "could not start" in warnings[0], result.stderr
    summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert summary["status"] == "complete"


class _Breaks:
    """A logger backend whose writes fail after the first (a full disk, a server gone)."""

    name, where = "breaks", "nowhere"

    def __init__(self):
        self.calls, self.closed = 0, None

    def scalars(self, step, values):
        self.calls += 1
        if self.calls > 1:
            raise OSError("No space left on device")

    def close(self, status):
        self.closed = status


def test_a_logger_failing_mid_run_is_dropped_with_one_warning(capsys):
    broken = _Breaks()
    loggers = Loggers([broken], log_every=1)
    for step in range(1, 5):
        loggers.log_step(step, {"loss": 1.0})
    assert broken.calls == 2 and loggers.backends == [] and broken.closed == "failed"
    err = capsys.readouterr().err
    assert err.count("breaks logging stopped") == 1 and "No space left on device" in err


def test_log_step_keeps_one_point_per_log_every_steps():
    class Keep(_Breaks):
        def __init__(self):
            super().__init__()
            self.steps = []

        def scalars(self, step, values):
            self.steps.append((step, values))

    keep = Keep()
    loggers = Loggers([keep], log_every=10)
    for step in range(1, 31):
        loggers.log_step(step, {"loss": 0.5, "lr": float("nan")})
    assert [s for s, _ in keep.steps] == [1, 11, 21]
    assert keep.steps[0][1] == {"train/loss": 0.5}  # a NaN placeholder is left out
