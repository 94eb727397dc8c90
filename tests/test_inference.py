"""`predict` on files, folders and globs: one row per image, CSV/JSON in timm inference.py's
layout, top-k names and probabilities, --tta flip, unreadable images skipped."""

import csv
import json

import pytest
from typer.testing import CliRunner

from rextransfer.cli.app import app
from tiny_run import patterns, train_tiny

runner = CliRunner()
CLASSES = ["diagonal", "dots", "horizontal", "vertical"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = patterns(tmp_path_factory.mktemp("data"))
    return train_tiny(data, tmp_path_factory.mktemp("runs"), "pred"), data


def test_predict_on_a_folder_writes_one_csv_row_per_image(setup, tmp_path):
    run, data = setup
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", str(run), str(data / "test"), "--top-k", "2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    with open(out) as f:
        rows = list(csv.DictReader(f))
    images = sorted((data / "test").rglob("*.png"))
    assert [r["filename"] for r in rows] == [str(p) for p in images]  # 12, in folder order
    assert list(rows[0]) == ["filename", "index_0", "index_1", "label_0", "label_1", "prob_0", "prob_1"]
    for r in rows:
        assert r["label_0"] in CLASSES and CLASSES[int(r["index_0"])] == r["label_0"]
        assert 1 >= float(r["prob_0"]) >= float(r["prob_1"]) >= 0
    assert "wrote 12 predictions" in result.stdout


def test_predict_json_matches_the_csv_and_globs_work(setup, tmp_path):
    run, data = setup
    pattern = str(data / "test" / "*" / "00[01].png")
    result = runner.invoke(app, ["predict", str(run), pattern, "-k", "1", "--output", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    got = json.loads((tmp_path / "p.json").read_text())
    assert len(got) == 8  # 2 files x 4 class folders
    first = next(iter(got.values()))
    assert set(first) == {"index", "label", "prob"} and len(first["label"]) == 1


def test_tta_flip_gives_probabilities_and_can_differ(setup):
    run, data = setup
    image = str(sorted((data / "test" / "diagonal").glob("*.png"))[0])
    plain = json.loads(runner.invoke(app, ["predict", str(run), image, "--json", "-k", "4"]).stdout)
    flip = runner.invoke(app, ["predict", str(run), image, "--json", "-k", "4", "--tta", "flip"])
    assert flip.exit_code == 0, flip.output
    flipped = json.loads(flip.stdout)
    assert sum(t["prob"] for t in flipped[0]["top"]) == pytest.approx(1.0, abs=1e-5)
    # a diagonal pattern mirrors into the other diagonal: the averaged probabilities move
    assert [t["prob"] for t in flipped[0]["top"]] != [t["prob"] for t in plain[0]["top"]]
    assert runner.invoke(app, ["predict", str(run), image, "--tta", "rotate"]).exit_code == 2


def test_unreadable_images_are_skipped_and_nothing_found_is_an_error(setup, tmp_path):
    run, data = setup
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.png").write_bytes((data / "test" / "dots" / "000.png").read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    result = runner.invoke(app, ["predict", str(run), str(folder), "--json"])
    assert result.exit_code == 0, result.output
    assert [d["image"] for d in json.loads(result.stdout)] == [str(folder / "good.png")]
    assert "skipped 1 unreadable" in result.stderr
    assert runner.invoke(app, ["predict", str(run), str(folder / "broken.jpg")]).exit_code == 3
    assert runner.invoke(app, ["predict", str(run), str(tmp_path / "nothing-*.png")]).exit_code == 3
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["predict", str(run), str(tmp_path / "empty")])
    assert empty.exit_code == 3 and "no images under" in empty.stderr
    assert runner.invoke(app, ["predict", str(run), str(folder), "-o", str(tmp_path / "x.txt")]).exit_code == 2
