"""rextransfer.config: values from YAML files, flags and `--set` strings become typed settings;
anything that cannot is a one-line usage error naming the key and where it came from."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import pytest
import yaml

from rextransfer.config import settings as config
from rextransfer.config import recipes
from rextransfer.config.settings import Config, apply, from_dict, parse_set, read_yaml, to_yaml
from rextransfer.core.errors import UsageError


def resolve(recipe: dict | None = None, recipe_name: str = "default", config_file=None, flags=None, sets=None) -> Config:
    """The one resolution (config/recipes.py) over a recipe holding `recipe` as its settings."""
    folder = Path(tempfile.mkdtemp(prefix="recipes-"))
    (folder / f"{recipe_name}.yaml").write_text(yaml.safe_dump({"description": "test recipe", "settings": recipe or {}}))
    before = os.environ.get("REXTRANSFER_RECIPES")
    os.environ["REXTRANSFER_RECIPES"] = str(folder)
    try:
        return recipes.resolve_run_config("demo", recipe=recipe_name, model_hint=None, config_file=config_file,
                                          flags=flags or {}, sets=sets or [])
    finally:
        if before is None:
            os.environ.pop("REXTRANSFER_RECIPES")
        else:
            os.environ["REXTRANSFER_RECIPES"] = before


def coerce(key, value):
    return config._coerce(key, value, "test")


def bad(key, value) -> str:
    with pytest.raises(UsageError) as e:
        coerce(key, value)
    message = str(e.value)
    assert f"'{key}'" in message and "test" in message and "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------
# Coercion, type by type
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["true", "True", "YES", "on", "1"])
def test_bool_true_strings(text):
    assert coerce("hflip", text) is True


@pytest.mark.parametrize("text", ["false", "FALSE", "no", "Off", "0"])
def test_bool_false_strings(text):
    assert coerce("hflip", text) is False


@pytest.mark.parametrize("value", ["maybe", "", "2", 1, 0, None, 1.0])
def test_bool_rejects_anything_else(value):
    assert "true/false" in bad("hflip", value)


@pytest.mark.parametrize("value, expected", [("1_000", 1000), ("20_000", 20_000), (" 12 ", 12), ("-1", -1),
                                             (3, 3), (3.0, 3), ("007", 7)])
def test_int_accepts_digits_underscores_and_whole_floats(value, expected):
    result = coerce("steps", value)
    assert result == expected and type(result) is int


@pytest.mark.parametrize("value", ["abc", "3.5", 3.5, True, False, None, "", [1]])
def test_int_rejects_fractions_bools_and_none(value):
    assert "an integer" in bad("steps", value)


@pytest.mark.parametrize("value, expected", [("1e-3", 0.001), ("0.5", 0.5), (2, 2.0), ("1_000.5", 1000.5), (" .1 ", 0.1)])
def test_float_accepts_numbers_and_number_strings(value, expected):
    result = coerce("lr", value)
    assert result == expected and type(result) is float


@pytest.mark.parametrize("value", ["abc", "", True, None, [0.1], "0.1,0.2"])
def test_float_rejects_non_numbers(value):
    assert "a number" in bad("lr", value)


@pytest.mark.parametrize("value, expected", [
    ("0.3,0.6", [0.3, 0.6]), ("0.3, 0.6,", [0.3, 0.6]), ("[0.3, 0.6, 0.9]", [0.3, 0.6, 0.9]),
    ("0.5", [0.5]), ([1, "0.5"], [1.0, 0.5]), ("", []), ("[]", []), ((), None),
])
def test_lists_from_strings_and_sequences(value, expected):
    if expected is None:  # a tuple is not a YAML list: rejected, not silently converted
        bad("step_milestones", value)
        return
    assert coerce("step_milestones", value) == expected


@pytest.mark.parametrize("value", [0.5, None, "[a, b]", ["x"], [[0.1]], "{a: 1}"])
def test_lists_reject_scalars_none_and_non_numbers(value):
    assert "a list of numbers" in bad("step_milestones", value)


def test_an_unterminated_list_is_a_usage_error():
    bad("step_milestones", "[0.3, 0.6")


@pytest.mark.parametrize("value, expected", [(None, ""), (123, "123"), (0.01, "0.01"), ("auto", "auto")])
def test_strings_take_scalars_and_none_means_empty(value, expected):
    assert coerce("weights", value) == expected


@pytest.mark.parametrize("value", [["a"], {"a": 1}])
def test_strings_reject_lists_and_mappings(value):
    assert "a string" in bad("model", value)


def test_yaml_on_off_for_string_settings_mean_on_off(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("amp: off\nchannels_last: on\n")
    cfg = resolve(config_file=path)
    assert (cfg.amp, cfg.channels_last) == ("off", "on")


def test_unknown_key_names_key_and_origin_and_suggests():
    with pytest.raises(UsageError) as e:
        apply(Config(), {"warmup": 5}, "config file x.yaml")
    message = str(e.value)
    assert "unknown setting 'warmup' in config file x.yaml" in message and "warmup_steps" in message


def test_apply_returns_a_converted_copy():
    base = Config()
    cfg = apply(base, {"epochs": "3", "hflip": "no", "step_milestones": "0.5"}, "test")
    assert (cfg.epochs, cfg.hflip, cfg.step_milestones) == (3, False, [0.5])
    assert (base.epochs, base.hflip) == (10, True)


# ------------------------------------------------------------------------------------------------
# --set parsing, files, precedence
# ------------------------------------------------------------------------------------------------
def test_parse_set_keeps_raw_strings_and_normalises_keys():
    assert parse_set(["lr=0.1", " label-smoothing = 0.2 ", "weights_file=a=b.pt", "weights="]) == {
        "lr": "0.1", "label_smoothing": "0.2", "weights_file": "a=b.pt", "weights": ""}


@pytest.mark.parametrize("item", ["lr", "=0.1", " =1"])
def test_parse_set_rejects_missing_key_or_equals(item):
    with pytest.raises(UsageError, match="key=value"):
        parse_set([item])


def test_read_yaml_errors(tmp_path):
    with pytest.raises(UsageError, match="config file not found"):
        read_yaml(tmp_path / "none.yaml", "config file")
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: 0.1\n  bad: [\n")
    with pytest.raises(UsageError, match="not valid YAML line"):
        read_yaml(broken, "config file")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(UsageError, match="mapping"):
        read_yaml(listed, "config file")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert read_yaml(empty, "config file") == {}


def test_resolve_precedence_and_none_flags(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 0.3\nepochs: 4\nseed: 9\n")
    cfg = resolve(recipe={"lr": 0.2, "epochs": 3, "momentum": 0.7}, recipe_name="r", config_file=path,
                  flags={"lr": 0.4, "epochs": None}, sets=["seed=5"])
    assert (cfg.lr, cfg.epochs, cfg.momentum, cfg.seed, cfg.recipe) == (0.4, 4, 0.7, 5, "r")


def test_yaml_file_numbers_as_written_by_people(tmp_path):
    """PyYAML reads 1e-3 (no dot) as a string and 20_000 as an int; both must still work."""
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 1.0e-5\nsteps: 20_000\n")
    cfg = resolve(config_file=path)
    assert (cfg.lr, cfg.weight_decay, cfg.steps) == (0.001, 1e-5, 20_000)


# ------------------------------------------------------------------------------------------------
# Validation and round trip
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sets, words", [
    (["optimizer=adam"], "optimizer must be one of"),
    (["epochs=0"], "training length"),
    (["batch_size=0"], "batch_size must be positive"),
    (["batch_size=10", "grad_accum=3"], "divisible"),
    (["lr=0"], "lr must be positive"),
    (["label_smoothing=1"], r"label_smoothing must be in \[0, 1\)"),
    (["rrc_scale_min=0"], "rrc_scale_min"),
    (["crop_pct=1.5"], "crop_pct"),
    (["bn_momentum=fast"], "bn_momentum must be default, auto or a number"),
    (["bn_momentum=1.5"], r"bn_momentum must be in \[0, 1\)"),
    (["warmup_steps=-1"], "warmup_steps must be >= 0"),
])
def test_validate_rejects_bad_values(sets, words):
    with pytest.raises(UsageError, match=words):
        resolve(sets=sets)


def test_validate_accepts_steps_without_epochs_and_numeric_bn_momentum():
    cfg = resolve(sets=["epochs=0", "steps=10", "bn_momentum=0.01"])
    assert (cfg.epochs, cfg.steps, cfg.bn_momentum) == (0, 10, "0.01")


def test_validate_rejects_a_nan_lr():
    with pytest.raises(UsageError, match="lr"):
        resolve(sets=["lr=nan"])


def test_to_yaml_from_dict_round_trip():
    cfg = Config(amp="off", channels_last="on", bn_momentum="0.01", step_milestones=[0.25, 0.5],
                 weights="", dataset="./my photos", lr=1e-5)
    text = to_yaml(cfg)
    assert from_dict(yaml.safe_load(text), "round trip") == cfg
    assert not math.isnan(yaml.safe_load(text)["lr"])


def test_from_dict_ignores_keys_of_other_versions():
    data = {**Config(seed=3).to_dict(), "removed_setting": 1}
    assert from_dict(data, "old run").seed == 3
