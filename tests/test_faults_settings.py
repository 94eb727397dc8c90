"""Fault suite, settings and command line: every bad value is exit 2 (or 3/4 where it is data or a
model) in one line, before anything is created; none reaches an allocation or a NaN run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from faultkit import FAST, one_line, rx
from synthetic import make_patterns


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_patterns(tmp_path_factory.mktemp("settings") / "pat", per_class=4, test_per_class=1)


def nothing_created(cwd: Path) -> None:
    assert not (cwd / "runs").exists(), list((cwd / "runs").rglob("*"))


@pytest.mark.parametrize("setting, words", [
    ("weight_decay=nan", r"weight_decay must be a finite number; got nan"),
    ("momentum=nan", r"momentum must be a finite number"),
    ("momentum=1", r"momentum must be in \[0, 1\)"),
    ("lr=inf", r"lr must be a finite number"),
    ("mixup=-1", r"mixup must be >= 0"),
    ("cutmix=-0.5", r"cutmix must be >= 0"),
    ("ema_decay=5", r"ema_decay must be in \(0, 1\)"),
    ("clip_grad=-1", r"clip_grad must be >= 0"),
    ("workers=-7", r"workers must be in \[-1, 256\]"),
    ("seed=-1", r"seed must be in \[0, 4294967295\]"),
    ("img_size=100000", r"img_size must be in \[32, 1024\]"),
    ("width=0", r"width must be in \(0, 10\]"),
    ("step_milestones=[0.5, .inf]", r"step_milestones must be a finite number"),
    ("layer_decay=2", r"layer_decay must be in \[0, 1\]"),
])
def test_every_numeric_setting_is_checked_for_range_and_finiteness(data, tmp_path, setting, words):
    one_line(rx("finetune", data, *FAST, "--set", setting, "--dry-run", cwd=tmp_path), 2, words)
    nothing_created(tmp_path)


def test_an_absurd_image_size_is_refused_before_any_allocation_in_a_real_run(data, tmp_path):
    one_line(rx("finetune", data, *FAST, "--set", "img_size=100000", cwd=tmp_path), 2, "img_size")
    nothing_created(tmp_path)


@pytest.mark.parametrize("width, words", [("0", r"\(0, 10\]; got 0"), ("-1", r"\(0, 10\]; got -1"),
                                          ("nan", "finite number; got nan")])
def test_width_flag_must_be_positive_and_finite(data, tmp_path, width, words):
    one_line(rx("finetune", data, "--width", width, *FAST, cwd=tmp_path), 2, f"width must be .*{words}")
    nothing_created(tmp_path)


def test_a_rexnet_width_of_zero_never_builds_wherever_it_comes_from(tmp_path):
    # bench builds models from specs, not from a Config: the registry refuses the width itself
    one_line(rx("bench", "--models", "rexnet@0", "--device", "cpu", "--img-size", "32", "--steps", "1",
                "--warmup", "0", "--out", tmp_path / "b.json"), 4, "ReXNet width must be a positive number")
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("make", ["binary", "folder", "latin1"])
def test_config_pointing_at_a_binary_file_or_a_folder(data, tmp_path, make):
    target = tmp_path / "cfg.yaml"
    if make == "binary":
        target.write_bytes(bytes(range(256)) * 4)
    elif make == "latin1":
        target.write_bytes("lr: 0.1  # caf\xe9\n".encode("latin-1"))
    else:
        target.mkdir()
    words = {"binary": "not a text file|not valid YAML", "latin1": "not a text file", "folder": "is a folder"}[make]
    one_line(rx("finetune", data, "--config", target, *FAST, "--dry-run", cwd=tmp_path), 2, words)


@pytest.mark.parametrize("name", [".", "..", "../x", "/tmp/abs", ".hidden", "a/b"])
def test_name_must_be_a_plain_folder_name(data, tmp_path, name):
    one_line(rx("finetune", data, "--name", name, *FAST, cwd=tmp_path), 2, "--name must be a plain folder name")
    nothing_created(tmp_path)
    assert not (tmp_path.parent / "x").exists()


def test_bare_finetune_shows_its_help_and_no_empty_error_line(tmp_path):
    result = rx("finetune", cwd=tmp_path)
    assert result.returncode == 2
    assert "--resume" in result.stdout and "Usage" in result.stdout
    assert "error:" not in result.stderr and "Traceback" not in result.stderr


def test_bench_batch_size_zero_is_an_error_not_the_default(tmp_path):
    one_line(rx("bench", "--batch-size", "0", "--device", "cpu", "--out", tmp_path / "b.json"), 2, "--batch-size >= 1")
    assert not (tmp_path / "b.json").exists()


def test_compare_on_a_missing_or_file_runs_folder(tmp_path):
    one_line(rx("compare", "--runs", tmp_path / "nope"), 3, "--runs .*nope: no such folder")
    (tmp_path / "afile").write_text("x")
    one_line(rx("compare", "--runs", tmp_path / "afile"), 3, "not a folder")


def test_settings_ranges_cover_every_float_setting():
    """Every float setting has its range in the one table, and NaN is refused for each of them."""
    from rextransfer.config.settings import FIELD_TYPES, RANGES, Config
    from rextransfer.core.errors import UsageError

    floats = {k for k, kind in FIELD_TYPES.items() if kind is float}
    assert floats - set(RANGES) == set(), floats - set(RANGES)
    Config().validate()  # the defaults are inside every range
    for key in floats:
        with pytest.raises(UsageError, match=f"{key} must be a finite number"):
            Config(**{key: math.nan}).validate()
