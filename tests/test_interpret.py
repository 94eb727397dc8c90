"""Interpretation in every finished run folder: most-confused pairs (summary.json and the
finetune output), per-image predictions and the top-losses grid."""

import csv
import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from rextransfer.cli.app import app
from rextransfer.train.interpret import most_confused
from tiny_run import patterns

runner = CliRunner()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny run through the CLI, so its printed output can be checked too."""
    data = patterns(tmp_path_factory.mktemp("data"))
    runs = tmp_path_factory.mktemp("runs")
    result = runner.invoke(app, ["finetune", str(data), "--model", "test_efficientnet", "--no-pretrained",
                                 "--img-size", "32", "-b", "16", "--workers", "0", "--epochs", "1",
                                 "--runs-dir", str(runs), "--name", "interp", "--log", "none"])
    assert result.exit_code == 0, result.output
    return runs / data.name / "interp", result


def test_most_confused_orders_off_diagonal_pairs_by_count():
    confusion = torch.tensor([[5, 2, 0], [4, 1, 1], [0, 2, 7]])
    assert most_confused(confusion, ["a", "b", "c"]) == [
        {"true": "b", "pred": "a", "count": 4}, {"true": "a", "pred": "b", "count": 2},
        {"true": "c", "pred": "b", "count": 2}, {"true": "b", "pred": "c", "count": 1}]
    assert most_confused(confusion, ["a", "b", "c"], top=1, min_count=3) == [{"true": "b", "pred": "a", "count": 4}]
    assert most_confused(torch.eye(3, dtype=torch.int64) * 4, ["a", "b", "c"]) == []


def test_summary_holds_the_most_confused_pairs_of_the_confusion_matrix(finished):
    run, result = finished
    with open(run / "confusion.csv") as f:
        rows = list(csv.reader(f))
    classes = rows[0][1:]
    matrix = [[int(v) for v in r[1:]] for r in rows[1:]]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["most_confused"] == most_confused(matrix, classes)
    if summary["most_confused"]:
        first = summary["most_confused"][0]
        assert f"{first['true']} → {first['pred']} {first['count']}" in result.stdout


def test_predictions_csv_has_every_eval_image_and_agrees_with_the_confusion_matrix(finished):
    run, _ = finished
    with open(run / "predictions.csv") as f:
        preds = list(csv.DictReader(f))
    summary = json.loads((run / "summary.json").read_text())
    assert len(preds) == summary["eval_size"] == 12
    with open(run / "confusion.csv") as f:
        rows = list(csv.reader(f))
    classes = rows[0][1:]
    counts = {(classes[i], classes[j]): int(v) for i, r in enumerate(rows[1:]) for j, v in enumerate(r[1:])}
    for (t, p), n in counts.items():
        assert sum(1 for r in preds if r["true"] == t and r["pred"] == p) == n
    for r in preds:
        assert 0 < float(r["prob_true"]) <= 1 and float(r["prob_pred"]) >= float(r["prob_true"]) - 1e-6
        assert float(r["loss"]) == pytest.approx(-__import__("math").log(float(r["prob_true"])), rel=1e-4, abs=1e-5)
    top1 = 100 * sum(r["true"] == r["pred"] for r in preds) / len(preds)
    assert top1 == pytest.approx(summary["final"]["top1"])


def test_top_losses_png_is_a_grid_of_the_worst_images(finished):
    run, _ = finished
    with Image.open(run / "top_losses.png") as im:
        im.verify()
    with Image.open(run / "top_losses.png") as im:
        width, height = im.size
    assert width == 4 * 180 and height > 3 * 180  # 12 eval images: 4 columns, 3 rows of thumbnails
