"""The command line as a user meets it: help, version, dry runs, one-line errors."""

import subprocess
import sys

import pytest

from rextransfer import __version__
from synthetic import make_patterns


def rx(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rextransfer.cli", *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, pattern: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    assert "Traceback" not in result.stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]


def test_help_lists_commands_without_importing_torch():
    probe = ("import sys; from rextransfer.cli.app import app; "
             "heavy = [m for m in ('torch', 'timm', 'torchvision', 'datasets', 'numpy', 'matplotlib') if m in sys.modules]; "
             "print(heavy)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    result = rx("--help")
    assert result.returncode == 0
    for command in ("finetune", "evaluate", "predict", "demo"):
        assert command in result.stdout


def test_version():
    result = rx("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"rextransfer {__version__}"


def test_missing_path_is_one_line(tmp_path):
    assert_one_line_error(rx("finetune", str(tmp_path / "nowhere"), "--no-pretrained"), 3, "neither a dataset name")


def test_empty_folder_is_one_line(tmp_path):
    assert_one_line_error(rx("finetune", str(tmp_path), "--no-pretrained"), 3, "no class folders")


def test_one_class_is_one_line(tmp_path):
    make_patterns(tmp_path, per_class=3, test_per_class=1, classes=("dots",), split_layout=False)
    assert_one_line_error(rx("finetune", str(tmp_path), "--no-pretrained"), 3, "only one class")


def test_unknown_model_is_one_line(tmp_path):
    make_patterns(tmp_path, per_class=3, test_per_class=1, split_layout=False)
    assert_one_line_error(rx("finetune", str(tmp_path), "--model", "rexnot", "--no-pretrained"), 4, "rexnot")


@pytest.mark.parametrize("args,pattern", [
    (["--set", "lr=abc"], "lr"),
    (["--set", "no_such_key=1"], "no_such_key"),
    (["--set", "justakey"], "key=value"),
    (["--epochs", "many"], "epochs|many"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, args, pattern):
    make_patterns(tmp_path, per_class=3, test_per_class=1, split_layout=False)
    result = rx("finetune", str(tmp_path), "--no-pretrained", "--dry-run", *args)
    assert_one_line_error(result, 2, pattern)


def test_dry_run_prints_resolved_config_and_summary(tmp_path):
    make_patterns(tmp_path, per_class=5, test_per_class=2, split_layout=True)
    result = rx("finetune", str(tmp_path), "--no-pretrained", "--dry-run", "--set", "img_size=48", "--epochs", "3")
    assert result.returncode == 0, result.stderr
    assert "img_size: 48" in result.stdout and "epochs: 3" in result.stdout
    assert "classes 4" in result.stdout and "rexnet_100" in result.stdout
    assert not (tmp_path / "runs").exists()
