"""Recipes: every shipped recipe is valid for every backbone and documents each value; settings
resolve in the documented precedence; the size rule (folder) changes with the training-set size;
bad recipes and bad settings are one-line usage errors (exit 2), also through the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rextransfer.config import recipes
from rextransfer.data import default_recipe_for, recipe_defaults
from rextransfer.cli.app import app
from rextransfer.config.settings import FIELD_TYPES, Config, apply
from rextransfer.models.registry import BUILTIN, finetune_defaults, resolve_spec
from rextransfer.core.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
DATASETS = ("food101", "cars", "aircraft", "flowers102")


@pytest.fixture
def recipe_dir(tmp_path, monkeypatch):
    """An empty recipes folder used instead of the shipped one; returns a writer."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    monkeypatch.setenv("REXTRANSFER_RECIPES", str(folder))

    def write(name: str, text: str) -> Path:
        path = folder / f"{name}.yaml"
        path.write_text(text)
        return path

    return write


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rextransfer.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=120)


def resolve(dataset="demo", recipe=None, model_hint=None, config_file=None, flags=None, sets=None, n_train=None):
    return recipes.resolve_run_config(dataset, recipe=recipe or default_recipe_for(dataset), model_hint=model_hint, config_file=config_file,
                                      flags=flags or {}, sets=sets or [], n_train=n_train, backbone_defaults=finetune_defaults)


def recipe_values(name: str, model: str) -> dict:
    """A recipe's own settings (with its block for `model`), converted to the Config field types."""
    recipe = recipes.load_recipe(name)
    own = {**recipe.settings, **recipe.models.get(recipes.model_key(model), {})}
    cfg = apply(Config(), own, name)
    return {key: getattr(cfg, key) for key in own}


# ------------------------------------------------------------------------------------------------
# The shipped recipes
# ------------------------------------------------------------------------------------------------
def test_the_promised_recipes_ship():
    assert set(SHIPPED) >= {*DATASETS, "folder", "demo", "paper"}
    assert recipes.recipes_dir() == REPO / "recipes"


@pytest.mark.parametrize("model", BUILTIN)
@pytest.mark.parametrize("name", SHIPPED)
def test_every_recipe_loads_and_validates_for_every_backbone(name, model):
    values = recipe_values(name, model)
    assert values and set(values) <= set(FIELD_TYPES)
    for key, value in values.items():  # converted to the field's type
        assert isinstance(value, type(getattr(Config(), key))), (name, key, value)
    cfg = resolve(dataset="cars", recipe=name, model_hint=model, n_train=5_000)
    assert cfg.recipe == name and cfg.model == model
    for key, value in values.items():  # the recipe's own values arrive in the run's config
        if not (recipes.uses_hyperrule(name) and key in recipes.hyperrule(5_000)):
            assert getattr(cfg, key) == value, (name, model, key)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_recipe_value_carries_a_comment(name):
    """Each setting says where it comes from (a source or 'our choice because ...')."""
    lines = (REPO / "recipes" / f"{name}.yaml").read_text().splitlines()
    data = yaml.safe_load("\n".join(lines))
    assert data["description"].strip()
    keyed = [line for line in lines if re.match(r"^\s+[a-z_0-9]+:\s*\S", line)]  # indented key: value
    assert len(keyed) >= len(data["settings"])
    for line in keyed:
        assert re.search(r"#\s*\S.{8,}", line), f"{name}.yaml: value without a source comment: {line.strip()}"
    assert set(data.get("models") or {}) <= set(BUILTIN)


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_recipes_are_gpu_runs_at_the_papers_resolution_with_backbone_overrides(name):
    rexnet, resnet, effnet = (resolve(dataset=name, recipe=name, model_hint=m) for m in BUILTIN)
    assert rexnet.img_size == 224 and rexnet.optimizer == "sgd" and rexnet.nesterov
    # each backbone keeps the weight decay it was pretrained with; ResNet50 uses the paper-era weights
    assert resnet.weight_decay == 1e-4 and resolve_spec(resnet.model, resnet.width, resnet.weights)[1] == "resnet50.tv_in1k"
    assert effnet.weight_decay == rexnet.weight_decay == 1e-5


def test_paper_profile_follows_the_documented_protocol():
    cfg = resolve(dataset="aircraft", recipe="paper")
    assert (cfg.optimizer, cfg.momentum, cfg.nesterov) == ("sgd", 0.9, True)
    assert (cfg.batch_size, cfg.steps, cfg.img_size, cfg.crop_pct) == (256, 20_000, 224, 0.875)
    assert (cfg.label_smoothing, cfg.mixup, cfg.cutmix, cfg.probe_epochs) == (0, 0, 0, 0)
    assert cfg.bn_momentum == "auto" and cfg.hflip
    assert 1e-4 <= cfg.lr <= 0.1  # a point of the protocol's grid
    assert cfg.dataset == "aircraft"


def test_demo_recipe_is_a_small_cpu_run():
    cfg = resolve(dataset="demo")
    assert cfg.recipe == "demo" and cfg.img_size <= 64
    assert cfg.epochs * (1_200 // cfg.batch_size) * cfg.batch_size <= 20_000  # images: minutes at ~140 img/s


# ------------------------------------------------------------------------------------------------
# Which recipe by default
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset, expected", [
    ("cars", "cars"), ("stanford_cars", "cars"), ("Food", "food101"), ("flowers", "flowers102"),
    ("fgvc-aircraft", "aircraft"), ("demo", "demo"), ("./no/such/folder", "folder"),
])
def test_default_recipe_for(dataset, expected):
    assert default_recipe_for(dataset) == expected


def test_an_image_folder_gets_the_folder_recipe(tmp_path):
    assert default_recipe_for(str(tmp_path)) == "folder"
    assert resolve(dataset=str(tmp_path)).recipe == "folder"


def test_list_recipes_says_what_each_is_the_default_for():
    rows = {row["name"]: row for row in recipes.list_recipes()}
    defaults = recipe_defaults()
    assert set(rows) == set(SHIPPED)
    for name in DATASETS + ("demo",):
        assert defaults[name] == [name]
    assert rows["folder"]["hyperrule"] and defaults["folder"] == ["image folders"]
    assert defaults["paper"] == []
    assert all(row["description"] and Path(row["path"]).is_file() for row in rows.values())


# ------------------------------------------------------------------------------------------------
# Precedence: defaults < recipe (+ per-model override) < --config < flags < --set
# ------------------------------------------------------------------------------------------------
PRECEDENCE_RECIPE = """
description: test
settings:
  lr: 0.02           # recipe
  momentum: 0.8      # recipe only
  label_smoothing: 0.2
models:
  resnet50:
    label_smoothing: 0.3
"""


@pytest.mark.parametrize("layers, expected_lr", [
    (0, 0.01),   # Config default
    (1, 0.02),   # recipe
    (2, 0.03),   # --config FILE
    (3, 0.04),   # flags
    (4, 0.05),   # --set
])
def test_each_layer_overrides_the_one_below(recipe_dir, tmp_path, layers, expected_lr):
    assert Config().lr == 0.01
    recipe_dir("prec", PRECEDENCE_RECIPE if layers >= 1 else "description: empty\n")
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text("lr: 0.03\n")
    cfg = resolve(recipe="prec", config_file=config_file if layers >= 2 else None,
                  flags={"lr": 0.04, "seed": None} if layers >= 3 else {}, sets=["lr=0.05"] if layers >= 4 else [])
    assert cfg.lr == expected_lr
    assert cfg.momentum == (0.8 if layers >= 1 else 0.9)  # lower layers survive where nothing overrides them
    assert cfg.seed == 0  # a flag left at None means "not given"


def test_per_model_override_sits_between_recipe_settings_and_config_file(recipe_dir, tmp_path):
    recipe_dir("prec", PRECEDENCE_RECIPE)
    assert resolve(recipe="prec").label_smoothing == 0.2
    assert resolve(recipe="prec", model_hint="resnet50").label_smoothing == 0.3
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text("label_smoothing: 0.05\n")
    assert resolve(recipe="prec", model_hint="resnet50", config_file=config_file).label_smoothing == 0.05


@pytest.mark.parametrize("how", ["hint", "config", "flags", "set", "timm-name"])
def test_overrides_follow_the_final_model(recipe_dir, tmp_path, how):
    recipe_dir("prec", PRECEDENCE_RECIPE)
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text("model: resnet50\n")
    kwargs = {
        "hint": dict(model_hint="resnet50"),
        "config": dict(config_file=config_file),
        "flags": dict(model_hint="efficientnet_b0", flags={"model": "resnet50"}),
        "set": dict(config_file=config_file, flags={"model": "rexnet"}, sets=["model=resnet50"]),
        "timm-name": dict(flags={"model": "resnet50.a1_in1k"}),
    }[how]
    cfg = resolve(recipe="prec", **kwargs)
    assert recipes.model_key(cfg.model) == "resnet50" and cfg.label_smoothing == 0.3


def test_a_config_file_model_beats_the_model_hint(recipe_dir, tmp_path):
    recipe_dir("prec", PRECEDENCE_RECIPE)
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text("model: efficientnet_b0\n")
    cfg = resolve(recipe="prec", model_hint="resnet50", config_file=config_file)
    assert cfg.model == "efficientnet_b0" and cfg.label_smoothing == 0.2


@pytest.mark.parametrize("model, key", [("rexnet_150", "rexnet"), ("rexnet_100.nav_in1k", "rexnet"),
                                        ("ResNet50.tv_in1k", "resnet50"), ("efficientnet_b0", "efficientnet_b0"),
                                        ("convnext_tiny.fb_in1k", "convnext_tiny")])
def test_model_key(model, key):
    assert recipes.model_key(model) == key


def test_the_highest_layer_naming_a_training_length_decides_it(tmp_path):
    paper = resolve(recipe="paper")
    assert paper.steps == 20_000
    shorter = resolve(recipe="paper", flags={"epochs": 5})  # flags name epochs: the recipe's steps give way
    assert (shorter.steps, shorter.epochs) == (0, 5)
    assert resolve(recipe="paper", flags={"epochs": 5}, sets=["steps=300"]).steps == 300
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text("steps: 1000\n")
    assert resolve(recipe="cars", config_file=config_file).steps == 1000
    assert resolve(recipe="cars", config_file=config_file, flags={"epochs": 3}).steps == 0


def test_dataset_and_recipe_are_recorded():
    cfg = resolve(dataset="stanford_cars", sets=["dataset=food101", "recipe=x"])
    assert (cfg.dataset, cfg.recipe) == ("stanford_cars", "cars")


def test_a_recipe_file_path_works_as_recipe(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("description: mine\nsettings:\n  lr: 0.123  # mine\n")
    cfg = resolve(recipe=str(path))
    assert cfg.lr == 0.123 and cfg.recipe == str(path)
    assert not recipes.uses_hyperrule(str(path))


# ------------------------------------------------------------------------------------------------
# The size rule (folder.yaml)
# ------------------------------------------------------------------------------------------------
def test_hyperrule_changes_at_each_size_threshold():
    below = {n: recipes.hyperrule(n) for n in (4_999, 19_999, 499_999)}
    above = {n: recipes.hyperrule(n) for n in (5_000, 20_000, 500_000)}
    for (n_lo, lo), (n_hi, hi) in zip(below.items(), above.items()):
        assert lo["steps"] < hi["steps"], (n_lo, n_hi)
        assert lo["step_milestones"] != hi["step_milestones"] or lo["warmup_steps"] * hi["steps"] != hi["warmup_steps"] * lo["steps"]
    assert below[19_999]["mixup"] == 0 and above[20_000]["mixup"] == 0.1  # BiT: MixUp from 20k images
    assert below[19_999]["probe_epochs"] == 1 and above[20_000]["probe_epochs"] == 0


def test_below_1000_images_the_rule_keeps_the_pretrained_features_but_not_for_a_scratch_run():
    few, more, scratch = recipes.hyperrule(999), recipes.hyperrule(1_000), recipes.hyperrule(999, pretrained=False)
    assert (few["head_init"], few["probe_epochs"], few["bn_momentum"], few["head_lr_mult"], few["clip_grad"]) == ("ncm", 0, "0", 0.1, 10.0)
    for other in (more, scratch):  # none of the tier's settings above it, nor from scratch
        assert not {"bn_momentum", "head_lr_mult", "clip_grad"} & set(other), other
    assert (more["head_init"], more["probe_epochs"], scratch["head_init"], scratch["probe_epochs"]) == ("ncm", 1, "zero", 1)
    assert recipes.hyperrule(20_000)["head_init"] == "zero"
    # The lr: a tenth of the recipe's, unless set explicitly or from scratch.
    folder_lr = recipes.load_recipe("folder").settings["lr"]
    assert resolve(dataset="./photos", recipe="folder", n_train=63).lr == pytest.approx(folder_lr / 10)
    assert resolve(dataset="./photos", recipe="folder", n_train=1_000).lr == folder_lr
    assert resolve(dataset="./photos", recipe="folder", n_train=63, flags={"lr": 0.01}).lr == 0.01
    cold = resolve(dataset="./photos", recipe="folder", n_train=63, flags={"pretrained": False})
    assert (cold.lr, cold.head_init, cold.bn_momentum, cold.head_lr_mult, cold.clip_grad) == (folder_lr, "zero", "default", 1.0, 0.0)
    # The head's lr multiplier: the tier's, unless set explicitly.
    assert resolve(dataset="./photos", recipe="folder", n_train=63).head_lr_mult == 0.1
    assert resolve(dataset="./photos", recipe="folder", n_train=63, sets=["head_lr_mult=1"]).head_lr_mult == 1.0
    # The gradient clipping: the tier's, unless set explicitly (0 = off); none at 1,000 images.
    assert resolve(dataset="./photos", recipe="folder", n_train=63).clip_grad == 10.0
    assert resolve(dataset="./photos", recipe="folder", n_train=63, sets=["clip_grad=0"]).clip_grad == 0.0
    assert resolve(dataset="./photos", recipe="folder", n_train=1_000).clip_grad == 0.0


def test_a_few_shot_run_names_its_tier_and_the_values_it_resolved_to():
    folder_lr = recipes.load_recipe("folder").settings["lr"]
    note = recipes.few_shot_note(resolve(dataset="./photos", recipe="folder", n_train=63), 63)
    assert note.startswith("folder recipe, 63 training images (< 1,000): few-shot tier")
    assert f"lr {folder_lr / 10:g}," in note and "bn_momentum 0," in note and "head_lr_mult 0.1," in note and "clip_grad 10," in note
    assert "probe_epochs 0" in note
    assert "lr 0.01," in recipes.few_shot_note(resolve(dataset="./photos", recipe="folder", n_train=63, flags={"lr": 0.01}), 63)
    # no line outside the tier: enough images, a scratch run, a recipe without the size rule
    assert recipes.few_shot_note(resolve(dataset="./photos", recipe="folder", n_train=1_000), 1_000) is None
    assert recipes.few_shot_note(resolve(dataset="./photos", recipe="folder", n_train=63, flags={"pretrained": False}), 63) is None
    assert recipes.few_shot_note(resolve(dataset="cars", recipe="cars"), 63) is None


@pytest.mark.parametrize("n_train, steps, epochs_at_most", [
    (1_000, 800, 100), (10_000, 4_000, 100), (30_000, 46_800, 100), (100_000, 80_000, 100), (1_000_000, 160_000, 100),
])
def test_hyperrule_table(n_train, steps, epochs_at_most):
    rule = recipes.hyperrule(n_train)
    assert rule["steps"] == steps and rule["batch_size"] == 64 and rule["schedule"] == "step"
    assert rule["steps"] / (n_train // 64) <= epochs_at_most
    assert 0 < rule["warmup_steps"] < rule["steps"] and all(0 < m < 1 for m in rule["step_milestones"])
    Config(**{**Config().to_dict(), **rule}).validate()


def test_hyperrule_rejects_an_empty_training_set():
    with pytest.raises(UsageError, match="empty"):
        recipes.hyperrule(0)


def test_folder_recipe_uses_the_rule_only_when_the_size_is_known():
    fallback = resolve(dataset="./photos", recipe="folder")
    assert (fallback.schedule, fallback.steps, fallback.epochs) == ("cosine", 0, 30)
    sized = resolve(dataset="./photos", recipe="folder", n_train=100_000)
    assert (sized.schedule, sized.steps, sized.mixup) == ("step", 80_000, 0.1)
    assert sized.eval_every == 5  # ~10 evaluations over 51 epochs


def test_hyperrule_fills_only_what_nothing_above_it_sets(tmp_path):
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text("mixup: 0.3\n")
    cfg = resolve(dataset="./photos", recipe="folder", n_train=100_000, config_file=config_file,
                  flags={"steps": 1_234}, sets=["warmup_steps=7", "schedule=cosine"])
    assert (cfg.mixup, cfg.steps, cfg.warmup_steps, cfg.schedule) == (0.3, 1_234, 7, "cosine")
    assert cfg.step_milestones == [0.3, 0.6, 0.9]  # still the rule's where nothing else set it


def test_hyperrule_budget_follows_the_batch_size_and_a_chosen_length():
    base = resolve(dataset="./photos", recipe="folder", n_train=10_000)
    assert (base.batch_size, base.steps, base.warmup_steps) == (64, 4_000, 800)
    bigger = resolve(dataset="./photos", recipe="folder", n_train=10_000, flags={"batch_size": 128})
    assert (bigger.steps, bigger.warmup_steps) == (2_000, 400)  # same images, same warmup share
    short = resolve(dataset="./photos", recipe="folder", n_train=10_000, flags={"epochs": 2})
    assert (short.steps, short.epochs) == (0, 2)  # the user's length wins
    assert short.warmup_steps == round(2 * (10_000 // 64) * 0.2) and short.eval_every == 1


def test_hyperrule_recipe_keeps_its_per_model_overrides():
    cfg = resolve(dataset="./photos", recipe="folder", model_hint="resnet50", n_train=1_000)
    assert cfg.weight_decay == 1e-4 and cfg.steps == 800


# ------------------------------------------------------------------------------------------------
# Validation: one-line usage errors naming the problem
# ------------------------------------------------------------------------------------------------
def test_unknown_recipe_lists_the_available_ones():
    with pytest.raises(UsageError) as e:
        recipes.load_recipe("nope")
    assert "unknown recipe 'nope'" in str(e.value) and "cars" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text, words", [
    ("settings:\n  lrr: 0.1\n", ["'lrr'", "bad.yaml"]),
    ("settings:\n  lr: fast\n", ["'lr'", "number", "'fast'"]),
    ("settings:\n  epochs: 2.5\n", ["'epochs'", "integer"]),
    ("settings:\n  hflip: maybe\n", ["'hflip'", "true/false"]),
    ("settings:\n  optimizer: adam\n", ["optimizer", "sgd, adamw"]),
    ("models:\n  resnet50:\n    momentun: 0.9\n", ["'momentun'", "models.resnet50"]),
    ("setings:\n  lr: 0.1\n", ["'setings'", "top-level"]),
    ("settings: [1, 2]\n", ["'settings'", "mapping"]),
    ("models:\n  resnet50: 3\n", ["'models'"]),
    ("hyperrule: sometimes\n", ["'hyperrule'"]),
    ("settings:\n  lr: [0.1\n", ["not valid YAML", "line"]),
])
def test_bad_recipes_are_one_line_errors_naming_the_problem(recipe_dir, text, words):
    recipe_dir("bad", text)
    with pytest.raises(UsageError) as e:
        recipes.load_recipe("bad")
    message = str(e.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("sets, words", [
    (["lr=abc"], ["'lr'", "--set", "number"]),
    (["nosuch=1"], ["'nosuch'", "--set"]),
    (["epochs=1.5"], ["'epochs'", "integer"]),
    (["lr"], ["key=value"]),
])
def test_bad_settings_are_usage_errors(sets, words):
    with pytest.raises(UsageError) as e:
        resolve(dataset="cars", sets=sets)
    assert all(word in str(e.value) for word in words) and "\n" not in str(e.value)


def test_bad_config_file_and_flags_name_their_origin(tmp_path):
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text("weight_decy: 0.1\n")
    with pytest.raises(UsageError, match=r"'weight_decy' in config file .*cfg\.yaml"):
        resolve(dataset="cars", config_file=config_file)
    with pytest.raises(UsageError, match="config file not found"):
        resolve(dataset="cars", config_file=tmp_path / "missing.yaml")
    with pytest.raises(UsageError, match="'batch_size' in command-line flags"):
        resolve(dataset="cars", flags={"batch_size": "many"})


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def test_cli_lists_the_recipes():
    result = CliRunner().invoke(app, ["recipes"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in SHIPPED:
        assert name in result.output
    assert "image folders" in result.output


@pytest.mark.parametrize("args, expected", [
    (["cars"], {"recipe": "cars", "dataset": "cars", "model": "rexnet", "weight_decay": 1e-5, "batch_size": 64}),
    (["cars", "--model", "resnet50"], {"model": "resnet50", "weight_decay": 1e-4, "weights": "tv_in1k"}),
    (["paper", "-m", "efficientnet_b0"], {"steps": 20_000, "batch_size": 256, "dataset": "<dataset>"}),
    (["folder", "--n-train", "100000"], {"steps": 80_000, "mixup": 0.1, "schedule": "step"}),
    (["rexnet_demo_missing_is_error"], None),
])
def test_cli_show_prints_the_full_resolved_yaml(args, expected):
    result = CliRunner().invoke(app, ["recipes", "show", *args])
    if expected is None:
        assert result.exit_code == UsageError.exit_code and result.stderr.startswith("error:"), result.output
        return
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.output)
    assert set(data) == set(FIELD_TYPES)  # the whole Config, loadable as a --config file
    for key, value in expected.items():
        assert data[key] == value, key


def test_cli_errors_are_one_line_with_exit_2(tmp_path):
    result = cli("recipes", "show", "nope")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown recipe 'nope'" in result.stderr
    (tmp_path / "broken.yaml").write_text("settings:\n  lr: fast\n")
    result = cli("recipes", "show", "broken", env={"REXTRANSFER_RECIPES": str(tmp_path)})
    assert result.returncode == 2 and result.stderr.startswith("error:")
    assert result.stderr.strip().count("\n") == 0 and "'lr'" in result.stderr


@pytest.mark.parametrize("bad", ["lr=abc", "nosuch=1"])
def test_finetune_rejects_a_bad_set_before_any_work(bad):
    result = cli("finetune", "demo", "--set", bad, "--dry-run")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error:") and result.stderr.strip().count("\n") == 0
    assert bad.split("=")[0] in result.stderr
