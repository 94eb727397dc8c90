"""The four fine-grained datasets from their original releases: split sizes, class counts and class
order as published by each dataset's own release (README / devkit / meta files), parsed from trees with the real metadata files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fgvc_trees import (AIRCRAFT_VARIANTS, make_aircraft_tree, make_cars_tree, make_flowers_tree, make_food_tree,
                        need_fixtures, replace_image)
from rextransfer.config.settings import Config
from rextransfer.data import get_splits, lookup
from rextransfer.core.errors import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    need_fixtures()
    root = tmp_path_factory.mktemp("data")
    for make in (make_flowers_tree, make_cars_tree, make_aircraft_tree, make_food_tree):
        make(root)
    return root


def load(name: str, root: Path, **settings):
    return get_splits(Config(dataset=name, data_root=str(root), source="original", **settings))


def test_flowers_standard_protocol_train_val_to_test(root):
    s = load("flowers102", root)
    assert (len(s.train), len(s.eval), len(s.classes)) == (2040, 6149, 102)
    assert (s.eval_split, s.metric, s.source) == ("test", "mean_class_acc", "original")
    assert set(s.train.labels) == set(s.eval.labels) == set(range(102))  # labels 0..101
    assert s.train.class_counts() == [20] * 102  # 10 train + 10 val per class
    assert min(s.eval.class_counts()) >= 20
    assert s.classes[0] == "pink primrose" and s.classes[101] == "blackberry lily"
    # image_00001.jpg has label 77 in imagelabels.mat (1-based): class index 76, whichever split holds it
    everything = {Path(s.train.key(i)).name: y for i, y in enumerate(s.train.labels)}
    everything.update({Path(s.eval.key(i)).name: y for i, y in enumerate(s.eval.labels)})
    assert everything["image_00001.jpg"] == 76 and len(everything) == 8189
    assert s.train.load(0).mode == "RGB"


def test_flowers_val_split_holds_out_a_stratified_share_of_train(root):
    s = load("flowers102", root, val_split=0.2, seed=3)
    assert (s.eval_split, len(s.train) + len(s.eval)) == ("val", 2040)
    assert s.eval.class_counts() == [4] * 102  # 20% of 20 per class
    assert not {s.train.key(i) for i in range(len(s.train))} & {s.eval.key(i) for i in range(len(s.eval))}
    assert len(s.extra["test"]) == 6149 and len(s.extra["train_full"]) == 2040
    again = load("flowers102", root, val_split=0.2, seed=3)
    assert [again.eval.key(i) for i in range(len(again.eval))] == [s.eval.key(i) for i in range(len(s.eval))]


def test_cars_standard_protocol_and_devkit_class_order(root):
    s = load("cars", root)
    assert (len(s.train), len(s.eval), len(s.classes)) == (8144, 8041, 196)
    assert (s.eval_split, s.metric) == ("test", "top1")
    assert s.classes[0] == "AM General Hummer SUV 2000" and s.classes[-1] == "smart fortwo Convertible 2012"
    assert set(s.train.labels) == set(s.eval.labels) == set(range(196))
    assert min(s.train.class_counts()) == 24 and max(s.train.class_counts()) == 68
    # first records: train 00001.jpg is class 14, test 00001.jpg is class 181 (1-based)
    assert (Path(s.train.key(0)).name, s.train.labels[0]) == ("00001.jpg", 13)
    assert (Path(s.eval.key(0)).name, s.eval.labels[0]) == ("00001.jpg", 180)
    assert s.train.load(0).size == (16, 16)  # no bbox crop unless asked


def test_cars_bbox_crop_uses_the_annotation_box(tmp_path):
    root = make_cars_tree(tmp_path, n_per_class=1)
    replace_image(root / "stanford_cars" / "cars_train" / "00001.jpg", (640, 420))
    s = load("cars", root, cars_bbox=True)
    # 00001.jpg: bbox (39, 116, 569, 375), inclusive pixel coordinates
    assert s.train.load(0).size == (569 - 39 + 1, 375 - 116 + 1)
    assert s.notes["bbox_crop"] is True
    assert load("cars", root).train.load(0).size == (640, 420)


def test_cars_without_test_labels_is_a_one_line_error_naming_the_file(tmp_path):
    make_cars_tree(tmp_path, n_per_class=1, with_test_labels=False)
    with pytest.raises(DataError) as e:
        load("cars", tmp_path)
    message = str(e.value)
    assert "cars_test_annos_withlabels.mat" in message and "--source hub" in message and "\n" not in message


def test_a_corrupt_mat_file_is_a_one_line_error(tmp_path):
    # a real failure mode: Stanford's dead URL served a 404 HTML page that people saved as cars_meta.mat
    make_cars_tree(tmp_path, n_per_class=1)
    (tmp_path / "stanford_cars/devkit/cars_meta.mat").write_text("<html><head><title>404 Not Found</title></head></html>")
    with pytest.raises(DataError, match="cars_meta.mat is not a readable .mat file") as e:
        load("cars", tmp_path)
    assert "\n" not in str(e.value)


def test_aircraft_trainval_to_test_at_variant_level(root):
    s = load("aircraft", root)
    assert (len(s.train), len(s.eval), len(s.classes)) == (6667, 3333, 100)
    assert (s.eval_split, s.metric) == ("test", "mean_class_acc")
    assert s.classes == AIRCRAFT_VARIANTS  # variants.txt order
    assert set(s.train.labels) == set(s.eval.labels) == set(range(100))
    # names with spaces and slashes survive the "<id> <variant>" split on the first space
    lines = (root / "fgvc-aircraft-2013b/data/images_variant_test.txt").read_text().splitlines()
    for wanted in ("F/A-18", "Cessna 172", "DHC-1", "Embraer Legacy 600", "F-16A/B"):
        image_id = next(line.split(" ", 1)[0] for line in lines if line.split(" ", 1)[1] == wanted)
        i = next(i for i in range(len(s.eval)) if Path(s.eval.key(i)).stem == image_id)
        assert s.classes[s.eval.labels[i]] == wanted


def test_aircraft_banner_is_cropped_by_default_and_recorded(root):
    s = load("aircraft", root)
    assert s.notes["banner_crop_px"] == 20
    assert s.train.load(0).size == (32, 20)  # the tree's images are 32x40
    off = load("aircraft", root, aircraft_banner=False)
    assert off.notes["banner_crop_px"] == 0 and off.train.load(0).size == (32, 40)


def test_food_standard_protocol_and_classes_txt_order(root):
    s = load("food101", root)
    assert (len(s.train), len(s.eval), len(s.classes)) == (75750, 25250, 101)
    assert (s.eval_split, s.metric) == ("test", "top1")
    assert s.train.class_counts() == [750] * 101 and s.eval.class_counts() == [250] * 101
    # classes.txt order, not sorted(): cheesecake before cheese_plate
    assert (s.classes[16], s.classes[17]) == ("cheesecake", "cheese_plate")
    assert sorted(s.classes)[16] == "cheese_plate"  # the order torchvision would have used
    assert "classes.txt" in s.notes["class_order"]
    i = next(i for i in range(len(s.eval)) if "/cheese_plate/" in s.eval.key(i))
    assert s.eval.labels[i] == 17


@pytest.mark.parametrize("alias,name", [("food", "food101"), ("stanford_cars", "cars"), ("fgvc_aircraft", "aircraft"),
                                        ("flowers", "flowers102"), ("Food-101", "food101")])
def test_aliases_name_the_same_dataset(alias, name):
    assert lookup(alias).name == name


def test_registry_facts_match_the_design_table():
    facts = {n: (lookup(n).num_classes, lookup(n).train_size, lookup(n).test_size, lookup(n).metric)
             for n in ("food101", "cars", "aircraft", "flowers102")}
    assert facts == {"food101": (101, 75750, 25250, "top1"), "cars": (196, 8144, 8041, "top1"),
                     "aircraft": (100, 6667, 3333, "mean_class_acc"), "flowers102": (102, 2040, 6149, "mean_class_acc")}


def test_missing_data_root_is_a_fast_one_line_error(tmp_path):
    missing = tmp_path / "nowhere"
    for source in ("original", "auto"):  # auto falls back to the Hub, which is offline in tests
        start = time.monotonic()
        with pytest.raises(DataError) as e:
            get_splits(Config(dataset="flowers102", data_root=str(missing), source=source))
        assert time.monotonic() - start < 5
        message = str(e.value)
        assert "\n" not in message and str(missing / "flowers-102") in message
        assert "rextransfer download flowers102" in message


def run_cli(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "rextransfer.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)
    return proc, time.monotonic() - start


def test_missing_data_root_from_the_command_line(tmp_path):
    # Wall time is asserted in-process above: this command imports torch (the scanner) before it
    # loads the data, which takes seconds on a busy machine and says nothing about our code.
    proc, _ = run_cli("scan", "flowers102", "--data-root", str(tmp_path / "nowhere"), "--source", "original", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(tmp_path / "nowhere" / "flowers-102") in lines[0]


def test_finetune_with_a_missing_data_root_is_a_one_line_error(tmp_path):
    from rextransfer.cli.app import app

    result = CliRunner().invoke(app, ["finetune", "flowers102", "--data-root", str(tmp_path / "nowhere"),
                                      "--no-pretrained", "--dry-run"])
    assert result.exit_code == DataError.exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "rextransfer download flowers102" in lines[0], result.stderr


def test_finetune_flowers_end_to_end(tmp_path):
    """`rextransfer finetune flowers102 --data-root <tree> --no-pretrained` runs to a complete run folder."""
    import json

    from rextransfer.cli.app import app

    make_flowers_tree(tmp_path / "data", n_per_class=1)  # 1 trn + 1 val per class -> 204 train, 102 test
    result = CliRunner().invoke(app, [
        "finetune", "flowers102", "--data-root", str(tmp_path / "data"), "--no-pretrained", "--img-size", "32",
        "--steps", "2", "--batch-size", "16", "--workers", "0", "--device", "cpu", "--no-cache",
        "--runs-dir", str(tmp_path / "runs"), "--name", "e2e"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "runs" / "flowers102" / "e2e" / "summary.json").read_text())
    assert (summary["dataset"], summary["num_classes"], summary["train_size"], summary["eval_size"]) == ("flowers102", 102, 204, 102)
    assert (summary["eval_split"], summary["headline_metric"], summary["status"]) == ("test", "mean_class_acc", "complete")
