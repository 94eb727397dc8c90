"""Every shipped recipe resolves, validates and trains 2 steps on tiny generated data."""

import json

import pytest

from rextransfer.config import recipes
from rextransfer.train.run import run_finetune
from synthetic import make_patterns

NAMES = [r["name"] for r in recipes.list_recipes()]


def test_all_expected_recipes_ship():
    assert {"food101", "cars", "aircraft", "flowers102", "folder", "paper", "demo"} <= set(NAMES)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_patterns(tmp_path_factory.mktemp("rec"), per_class=4, test_per_class=2, size=24)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_runs_two_steps(name, data, tmp_path):
    # Only the size knobs are overridden; every other value (optimizer, schedule, smoothing,
    # mixup, probe epochs, BN rule, EMA...) is the recipe's own.
    flags = {"pretrained": False, "img_size": 32, "batch_size": 8, "steps": 2, "workers": 0}
    run = run_finetune(str(data), recipe=name, flags=flags, name=name, runs_dir=str(tmp_path)).path
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 2 and summary["recipe"] == name
