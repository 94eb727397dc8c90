"""An installed wheel is a working rextransfer: the recipes at the top of the repository travel
inside it as package data, and the CLI finds them without the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment holding only the built wheel; the test environment's packages
    (torch, typer, ...) are reachable through a .pth line, never the source tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist"), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp / "dist").glob("rextransfer-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return venv, site, tmp


def run_installed(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REXTRANSFER_RECIPES")}
    return subprocess.run([str(venv / "bin" / "rextransfer"), *args], capture_output=True, text=True,
                          cwd=cwd, env={**env, "COLUMNS": "200"}, timeout=120)


def test_the_wheel_lists_every_shipped_recipe_without_the_source_tree(installed):
    venv, site, tmp = installed
    located = subprocess.run([str(venv / "bin" / "python"), "-c", "import rextransfer; print(rextransfer.__file__)"],
                             capture_output=True, text=True, cwd=tmp, check=True).stdout.strip()
    assert Path(located).is_relative_to(site), located  # the installed copy, not the checkout
    assert sorted(p.stem for p in (site / "rextransfer" / "recipe_files").glob("*.yaml")) == SHIPPED
    result = run_installed(venv, tmp, "recipes")
    assert result.returncode == 0, result.stderr
    for name in SHIPPED:
        assert f" {name} " in result.stdout, (name, result.stdout)
    assert str(REPO / "recipes") not in result.stdout


def test_the_wheel_resolves_a_dataset_recipe(installed):
    venv, _, tmp = installed
    result = run_installed(venv, tmp, "recipes", "show", "cars")
    assert result.returncode == 0, result.stderr
    assert "recipe cars" in result.stdout and "lr: 0.0125" in result.stdout
