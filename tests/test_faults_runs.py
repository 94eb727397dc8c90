"""Fault suite, run folders: where a run may be written (checked before any work), one process per
run (a lock), resuming only what can be resumed (refused before anything is rewritten), and what
evaluate/predict read back from a run folder (a damaged one is exit 5 in one line)."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from faultkit import FAST, command, copy_run, env_with, interrupted_run, one_line, read_only, rx, snapshot, start, wait_lines
from synthetic import make_patterns


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_patterns(tmp_path_factory.mktemp("runs") / "pat", per_class=8, test_per_class=3)


@pytest.fixture(scope="module")
def stopped(data, tmp_path_factory):
    """An interrupted run (SIGTERM after epoch 1); tests work on copies of it."""
    return interrupted_run(data, tmp_path_factory.mktemp("stopped"), "s", epochs=4)


@pytest.fixture
def run_copy(stopped, tmp_path):
    return copy_run(stopped, tmp_path / "pat" / "s")


def no_work_done(cache: Path) -> None:
    """Nothing was scanned or cached: the checks came before any work."""
    assert not cache.exists(), list(cache.rglob("*"))


# -- where the run goes -----------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["runs-dir is a file", "runs-dir under a file", "run path is a file"])
def test_a_file_where_the_run_folder_goes_is_exit_5_before_any_work(data, tmp_path, layout):
    blocker = tmp_path / "blocker"
    if layout == "run path is a file":
        runs, name = tmp_path / "runs", "r"
        blocker = runs / data.name / "r"
        blocker.parent.mkdir(parents=True)
        runs_dir = runs
    else:
        runs_dir = blocker if layout == "runs-dir is a file" else blocker / "sub"
        name = "r"
    blocker.write_text("my notes\n")
    cache = tmp_path / "cache"
    result = rx("finetune", data, "--runs-dir", runs_dir, "--name", name, "--epochs", "1", *FAST,
                env=env_with(REXTRANSFER_CACHE=str(cache)))
    one_line(result, 5, "is a file")
    assert blocker.read_text() == "my notes\n"
    no_work_done(cache)


def test_a_read_only_runs_folder_is_exit_7_before_any_work(data, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    cache = tmp_path / "cache"
    result = read_only(runs, ["env", f"REXTRANSFER_CACHE={cache}", *command("finetune", data, "--runs-dir", runs, "--epochs", "1", *FAST)],
                       env=env_with())
    one_line(result, 7, "not writable")
    assert list(runs.iterdir()) == []
    no_work_done(cache)


def test_resume_pointing_at_a_file(tmp_path):
    note = tmp_path / "run.txt"
    note.write_text("not a run")
    one_line(rx("finetune", "--resume", note), 5, "is a file, not a run folder")


# -- one process per run, from any working directory ---------------------------------------------------
@pytest.mark.slow  # two training processes and 5 short epochs in all: ~30 s idle, minutes on a shared machine
def test_a_second_finetune_of_the_same_run_refuses_at_once_and_the_first_resumes_from_elsewhere(data, tmp_path):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    shutil.copytree(data, home / "pat")
    elsewhere.mkdir()
    runs = tmp_path / "runs"
    run = runs / "pat" / "same"
    first = start("finetune", "pat", "--runs-dir", runs, "--name", "same", "--epochs", "5", *FAST, cwd=home)
    wait_lines(run / "config.yaml", 1, first)  # written after the lock is taken
    # Paused while the second one starts, so it cannot finish first on a fast machine (CI did: the
    # second process's own start-up took longer than the first one's 3 epochs).
    first.send_signal(signal.SIGSTOP)
    began = time.monotonic()
    try:
        second = rx("finetune", "pat", "--runs-dir", runs, "--name", "same", "--epochs", "5", *FAST, cwd=home)
    finally:
        first.send_signal(signal.SIGCONT)
    one_line(second, 5, r"in use by another rextransfer process \(pid \d+\)")
    assert time.monotonic() - began < 60 and first.poll() is None  # refused at once, the first one untouched
    wait_lines(run / "metrics.jsonl", 1, first)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 130, stderr
    # the dataset was typed relative to `home`; the run stored its absolute path, so it resumes from anywhere
    assert _yaml(run / "config.yaml")["dataset"] == str(home / "pat")
    done = rx("finetune", "--resume", run, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5]  # every epoch once: the refused process wrote nothing
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


# -- resuming only what can be resumed --------------------------------------------------------------
def test_resume_with_last_checkpoint_gone_is_an_error_not_a_restart(run_copy):
    (run_copy / "checkpoints" / "last.pt").unlink()
    before = snapshot(run_copy)
    one_line(rx("finetune", "--resume", run_copy), 5, r"last.pt is missing but 1 epoch\(s\) were done")
    assert snapshot(run_copy) == before  # metrics.jsonl kept: no silent restart from step 0


def test_resume_of_a_run_with_another_dataset_argument_is_an_error(run_copy, tmp_path):
    other = make_patterns(tmp_path / "other", per_class=3, test_per_class=1)
    before = snapshot(run_copy)
    one_line(rx("finetune", other, "--resume", run_copy), 2, "on its own dataset")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("line", ["lr: -1", "workers: -7", "img_size: 100000", "lr: [1, 2"])
def test_a_bad_value_in_the_run_config_is_the_run_folders_problem(run_copy, line):
    config = run_copy / "config.yaml"
    key = line.split(":")[0]
    config.write_text("".join(f"{line}\n" if old.startswith(f"{key}:") else old
                              for old in config.read_text().splitlines(keepends=True)))
    before = snapshot(run_copy)
    one_line(rx("finetune", "--resume", run_copy), 5, "config.yaml (is damaged|is corrupt)")
    one_line(rx("evaluate", run_copy, "--checkpoint", "last"), 5, "config.yaml (is damaged|is corrupt)")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("env", [[], {"classes": "dots"}, {"classes": ["a", "b"]},
                                 {"classes": ["a", "b"], "preprocessing": {"mean": "red", "std": [1, 1, 1]}}])
def test_env_json_of_the_wrong_shape_is_exit_5(run_copy, env):
    (run_copy / "env.json").write_text(json.dumps(env))
    one_line(rx("evaluate", run_copy, "--checkpoint", "last"), 5, "env.json is damaged")


def test_env_json_of_the_wrong_shape_is_exit_5_for_predict_too(run_copy, data):
    (run_copy / "env.json").write_text(json.dumps({"classes": ["dots"] * 4}))
    one_line(rx("predict", run_copy, data / "train" / "dots" / "000.png", "--checkpoint", "last"), 5, "env.json is damaged")


def test_a_checkpoint_that_does_not_fit_is_one_summary_line(run_copy):
    env = json.loads((run_copy / "env.json").read_text())
    env["classes"].append("zebra")  # the model built for 5 classes, the checkpoint has 4
    (run_copy / "env.json").write_text(json.dumps(env))
    one_line(rx("evaluate", run_copy, "--checkpoint", "last"), 5,
             r"does not fit .* 5 classes .*\d+ with another shape \(e\.g\. head\.fc\.weight: checkpoint \[4, \d+\], model \[5, \d+\]\)")


@pytest.mark.slow  # its own run (the data must change under it), refused, then resumed: ~40 s idle
def test_resume_after_a_class_folder_was_added_is_refused_before_anything_is_rewritten(data, tmp_path):
    mine = shutil.copytree(data, tmp_path / "pat")
    run = interrupted_run(mine, tmp_path / "runs", "grow", epochs=4)
    new_class = mine / "train" / "zigzag"
    shutil.copytree(mine / "train" / "dots", new_class)
    before = snapshot(run)
    one_line(rx("finetune", "--resume", run), 5, r"classes changed since it started \(added 'zigzag'; the checkpoint has 4, the data 5\)")
    assert snapshot(run) == before  # env.json and config.yaml still describe the checkpoint
    shutil.rmtree(new_class)  # the data restored, the run resumes
    assert rx("finetune", "--resume", run).returncode == 0


def test_resume_from_a_checkpoint_of_another_model_is_one_summary_line(run_copy):
    import torch

    last = run_copy / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["model"]["head.fc.weight"] = state["model"]["head.fc.weight"][:3]  # as if trained on 3 classes
    del state["model"]["head.fc.bias"]
    torch.save(state, last)
    before = snapshot(run_copy)
    one_line(rx("finetune", "--resume", run_copy), 5,
             r"checkpoint does not fit the model \(1 with another shape \(e\.g\. head\.fc\.weight: checkpoint \[3, \d+\], "
             r"model \[4, \d+\]\); 1 missing \(e\.g\. head\.fc\.bias\)\)")
    assert snapshot(run_copy) == before
