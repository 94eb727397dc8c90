"""Fault suite, data and caches: messy folders (bad files, symbolic-link loops, odd class names)
train and evaluate as the pre-flight scan left them, on every split and from any working
directory; a cache location that cannot work is one line (exit 7) before any work."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from faultkit import FAST, env_with, in_private_mounts, command, one_line, rx
from synthetic import make_patterns


def dry_run_counts(result) -> tuple[int, int, int]:
    """(classes, train, eval) as `finetune --dry-run` prints them."""
    assert result.returncode == 0, result.stderr
    m = re.search(r"classes (\d+); train (\d+) .*; eval (\d+) on", result.stdout)
    assert m, result.stdout
    return tuple(int(g) for g in m.groups())


def test_a_symlink_loop_in_a_class_folder_counts_each_image_once(tmp_path):
    root = make_patterns(tmp_path / "loopy", per_class=6, test_per_class=0, split_layout=False,
                         classes=("blue", "green", "red"))
    os.symlink("..", root / "red" / "up")                      # back to the dataset: every class again
    os.symlink(".", root / "green" / "self")                   # a loop onto itself
    os.symlink("../blue", root / "green" / "blues")            # another class's folder
    os.symlink("../blue/000.png", root / "red" / "copy.png")   # another class's image
    # 18 images; 20% of each class held out for evaluation: 15 + 3 (the loop made 978 of them)
    assert dry_run_counts(rx("finetune", root, *FAST, "--set", "val_fraction=0.2", "--dry-run", cwd=tmp_path)) == (3, 15, 3)
    # labels and train/val disjointness at the file level: tests/test_folder.py


def test_class_folders_named_with_underscores_are_classes(tmp_path):
    root = make_patterns(tmp_path / "under", per_class=3, test_per_class=1, classes=("__x", "_y", "dots", "vertical"))
    for junk in ("__MACOSX", ".ipynb_checkpoints"):
        make_patterns(root / "train" / junk, per_class=1, test_per_class=0, split_layout=False, classes=("dots",))
    assert dry_run_counts(rx("finetune", root, *FAST, "--dry-run", cwd=tmp_path)) == (4, 12, 4)


def test_a_cache_folder_under_a_regular_file_is_exit_7_before_any_work(tmp_path):
    data = make_patterns(tmp_path / "pat", per_class=3, test_per_class=1)
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a folder")
    result = rx("finetune", data, "--runs-dir", tmp_path / "runs", *FAST, env=env_with(REXTRANSFER_CACHE=str(blocker / "sub")))
    one_line(result, 7, "cache folder .*cache-file/sub cannot be created: .*cache-file is a file.*REXTRANSFER_CACHE")
    assert not (tmp_path / "runs").exists() and blocker.read_text() == "not a folder"


def test_a_disk_too_small_for_the_pixel_cache_says_how_much_in_units_that_are_not_zero(tmp_path):
    data = make_patterns(tmp_path / "pat", per_class=3, test_per_class=1)
    cache = tmp_path / "tiny"
    cache.mkdir()
    result = in_private_mounts([f"mount -t tmpfs -o size=1m tmpfs '{cache}'"],
                               command("finetune", data, "--runs-dir", tmp_path / "runs", "--epochs", "1", *FAST),
                               env=env_with(REXTRANSFER_CACHE=str(cache)))
    line = one_line(result, 7, r"pixel cache of 12 images at 36 px needs \d+(\.\d+)? MiB .* only \d+(\.\d+)? [KM]iB free")
    assert "0.0 GiB" not in line


@pytest.mark.slow  # one training run and four evaluations: ~40 s idle, minutes on a shared machine
def test_evaluate_a_run_on_a_messy_folder_on_every_split_from_any_working_directory(tmp_path):
    typed_in, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = make_patterns(typed_in / "messy", per_class=10, test_per_class=0, split_layout=False)
    (root / "dots" / "zero.png").write_bytes(b"")
    good = (root / "vertical" / "000.png").read_bytes()
    (root / "vertical" / "cut.png").write_bytes(good[: len(good) // 2])
    runs = tmp_path / "runs"
    trained = rx("finetune", "messy", "--runs-dir", runs, "--name", "m", "--epochs", "1", *FAST, cwd=typed_in)
    assert trained.returncode == 0, trained.stderr
    run = runs / "messy" / "m"
    summary = json.loads((run / "summary.json").read_text())
    assert (run / "bad_files.csv").read_text().count("\n") == 3  # header + the two bad files

    results = {}
    for split in ("eval", "train", "val", "train_full"):
        result = rx("evaluate", run, "--split", split, "--json", cwd=elsewhere)
        assert result.returncode == 0, (split, result.stderr)
        assert "Traceback" not in result.stderr
        results[split] = json.loads(result.stdout)
    assert results["eval"]["split"] == "val" and results["eval"]["images"] == summary["eval_size"]
    assert results["eval"]["top1"] == pytest.approx(summary["final"]["top1"])  # what training reported
    assert results["train"]["images"] == summary["train_size"]
    assert results["train"]["images"] + results["val"]["images"] == results["train_full"]["images"] == 40
    assert results["train"]["skipped"] + results["val"]["skipped"] == results["train_full"]["skipped"] == 2
