"""Export of a tiny trained run, checked with the real consumers: onnxruntime, torch.jit and timm."""

import csv
import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rextransfer.cli.app import app
from rextransfer.train.inference import load_run_model
from tiny_run import patterns, train_tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = patterns(tmp_path_factory.mktemp("data"))
    return train_tiny(data, tmp_path_factory.mktemp("runs"), "exp")


def eval_batches(run):
    """The run's own eval images, preprocessed exactly as the run evaluated them."""
    from rextransfer.data import get_splits
    from rextransfer.data.pipeline import Pipeline

    model, cfg, classes, data_config = load_run_model(run)
    splits = get_splits(cfg)
    return model, [x for x, _ in Pipeline(cfg, data_config, torch.device("cpu")).eval_batches(splits.eval)]


def test_onnx_matches_pytorch_and_the_runs_predictions(run, tmp_path):
    import onnxruntime

    result = runner.invoke(app, ["export", str(run), "--format", "onnx", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "max abs difference to PyTorch" in result.stdout and "onnxruntime" in result.stdout
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert isinstance(inp.shape[0], str)  # a named, dynamic batch axis
    model, batches = eval_batches(run)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert np.abs(session.run(None, {inp.name: x.numpy()})[0] - model(x).numpy()).max() < 1e-4
    top1 = np.concatenate([session.run(None, {inp.name: b.numpy()})[0].argmax(1) for b in batches])
    with open(run / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    classes = json.loads((run / "env.json").read_text())["classes"]
    assert [classes[i] for i in top1] == [r["pred"] for r in rows]
    meta = {p.key: p.value for p in __import__("onnx").load(str(tmp_path / "model.onnx")).metadata_props}
    assert json.loads(meta["label_names"]) == classes


def test_timm_folder_loads_with_timm_and_reproduces_the_logits(run):
    import timm

    result = runner.invoke(app, ["export", str(run), "--format", "timm"])
    assert result.exit_code == 0, result.output
    folder = run / "export" / "timm"
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    config = json.loads((folder / "config.json").read_text())
    env = json.loads((run / "env.json").read_text())
    assert config["architecture"] == "test_efficientnet" and config["num_classes"] == 4
    assert config["label_names"] == env["classes"]
    pcfg = config["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 32, 32] and pcfg["crop_pct"] == env["preprocessing"]["crop_pct_used"]
    assert pcfg["mean"] == list(env["preprocessing"]["mean"]) and pcfg["std"] == list(env["preprocessing"]["std"])
    loaded = timm.create_model(config["architecture"], pretrained=True, num_classes=config["num_classes"],
                               pretrained_cfg_overlay=dict(pcfg, file=str(folder / "model.safetensors"))).eval()
    model, batches = eval_batches(run)
    with torch.no_grad():
        for x in batches:
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    card = (folder / "README.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert card.startswith("---\nlibrary_name: timm") and run.parent.name in card
    assert f"{summary['final']['top1']:.2f}" in card and "## Training recipe" in card


def test_torchscript_round_trips(run, tmp_path):
    result = runner.invoke(app, ["export", str(run), "--format", "torchscript", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    extra = {"label_names.json": ""}
    traced = torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    model, batches = eval_batches(run)
    with torch.no_grad():
        torch.testing.assert_close(traced(batches[0]), model(batches[0]), rtol=0, atol=1e-5)
    assert json.loads(extra["label_names.json"]) == json.loads((run / "env.json").read_text())["classes"]


def test_a_missing_onnx_extra_is_one_line_with_exit_7(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    result = runner.invoke(app, ["export", str(run), "--format", "onnx", "--out", str(tmp_path)])
    assert result.exit_code == 7
    assert result.stderr.strip().count("\n") == 0
    assert "onnxruntime" in result.stderr and "pip install rextransfer[onnx]" in result.stderr
    assert not list(tmp_path.iterdir())


def test_push_to_hub_offline_fails_in_one_line_and_keeps_the_export(run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["export", str(run), "--format", "timm", "--out", str(tmp_path), "--push-to-hub", "me/tiny"])
    assert result.exit_code == 7
    assert result.stderr.strip().count("\n") == 0 and "hf upload me/tiny" in result.stderr
    assert (tmp_path / "model.safetensors").exists()


def test_bad_choices_are_usage_errors(run):
    assert runner.invoke(app, ["export", str(run), "--format", "tflite"]).exit_code == 2
    assert runner.invoke(app, ["export", str(run), "--format", "onnx", "--push-to-hub", "me/x"]).exit_code == 2
