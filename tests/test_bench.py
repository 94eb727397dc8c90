"""`rextransfer bench`: measured img/s of the three paper backbones, saved for `compare`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from rextransfer.cli.app import app

runner = CliRunner()
LABELS = ["ReXNet x1.0", "ResNet50", "EfficientNet-B0"]


def table_rows(text: str) -> list[list[str]]:
    """Body rows of the rich table in `text` (cells stripped)."""
    rows, body = [], False
    for line in text.splitlines():
        if line.startswith("┡"):
            body = True
        elif body and line.startswith("│"):
            rows.append([c.strip() for c in line[1:].rstrip()[:-1].split("│")])
    return rows


def test_bench_cpu_prints_and_saves_three_backbones(tmp_path: Path):
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["bench", "--device", "cpu", "--img-size", "32", "--batch-size", "8", "--steps", "1",
                                 "--warmup", "1", "--runs", str(runs)])
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert [r[0] for r in rows] == LABELS
    for r in rows:  # params, train img/s, eval img/s, ratios, ms/step: all positive numbers
        assert all(float(v) > 0 for v in r[2:]), r
    assert [r[5] for r in rows][0] == "1.00"  # ratios are relative to ReXNet x1.0

    saved = json.loads((runs / "bench" / "bench-cpu.json").read_text())
    assert (saved["device"], saved["img_size"], saved["batch_size"], saved["steps"]) == ("cpu", 32, 8, 1)
    res = {r["label"]: r for r in saved["results"]}
    assert list(res) == LABELS
    assert [res[k]["timm_name"] for k in LABELS] == ["rexnet_100", "resnet50", "efficientnet_b0"]
    assert 4.7 < res["ReXNet x1.0"]["params_m"] < 4.9 and 25.4 < res["ResNet50"]["params_m"] < 25.7
    rex = res["ReXNet x1.0"]
    for r in res.values():
        assert r["train_img_per_s"] > 0 and r["eval_img_per_s"] > 0
        assert abs(r["train_vs_rexnet"] - r["train_img_per_s"] / rex["train_img_per_s"]) < 0.01
        assert abs(r["eval_img_per_s"] - 8 / (r["eval_ms_per_batch"] / 1000)) < 0.05 * r["eval_img_per_s"]

    # compare shows the bench numbers for backbones no run measured, marked as such.
    shown = runner.invoke(app, ["compare", "--runs", str(runs), "--format", "json"])
    assert shown.exit_code == 0, shown.output
    rows = {r["backbone"].split(" (")[0]: r for r in json.loads(shown.stdout)["rows"]}
    assert rows["ResNet50"]["throughput_source"] == "bench"
    assert rows["ResNet50"]["train_img_per_s"] == round(res["ResNet50"]["train_img_per_s"], 1)


def test_bench_unknown_model_is_a_one_line_error(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "rextransfer.cli", "bench", "--models", "rexnet,no_such_net",
                           "--device", "cpu", "--out", str(tmp_path / "b.json")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 4, proc.stderr
    assert "unknown model 'no_such_net'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b.json").exists()  # nothing measured, nothing written
