"""Backbones: registry figures, computed costs, weights files, offline behaviour, CLI listing.

Everything runs offline: random-init models, checkpoint files and a fake Hugging Face cache
written by the tests themselves. Cost counting uses meta-device models (no memory, no compute).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from rextransfer.cli.app import app
from rextransfer.config.settings import Config
from rextransfer.core.errors import ModelError
from rextransfer.models.build import build_backbone, costs_of, head_parameter_names, model_costs
from rextransfer.models.registry import resolve_spec
from rextransfer.models.registry import WEIGHTS

REPO = Path(__file__).resolve().parent.parent

# Published figures (params in M at 1000 classes, GMACs at 224 px): timm's model cards (timm/<tag> on the Hub).
SPEC = [
    ("rexnet", 1.0, 4.80, 0.40),
    ("rexnet", 1.5, 9.73, None),
    ("rexnet", 2.0, 16.37, None),
    ("efficientnet_b0", 1.0, 5.29, 0.40),
    ("resnet50", 1.0, 25.56, 4.11),
]


def near(a: float, b: float, rel: float = 0.02) -> bool:
    return abs(a - b) <= rel * b


@pytest.mark.parametrize("model,width,params_m,gmacs", SPEC)
def test_computed_costs_match_published_figures(model, width, params_m, gmacs):
    costs = costs_of(model, width, img_size=224, num_classes=1000)
    assert near(costs["params_m"], params_m), costs
    if gmacs is not None:
        assert near(costs["gmacs"], gmacs), costs


def test_every_registry_row_agrees_with_its_architecture():
    for w in WEIGHTS:
        costs = costs_of(w.model, w.width)
        assert near(costs["params_m"], w.params_m) and near(costs["gmacs"], w.gmacs), (w.tag, costs)


def test_costs_of_a_real_model_equal_the_meta_count_and_keep_train_mode():
    torch.manual_seed(0)
    model = timm.create_model("rexnet_100", num_classes=1000).train()
    costs = model_costs(model, 224)
    assert model.training
    assert costs == pytest.approx(costs_of("rexnet", 1.0, img_size=224), rel=1e-9)
    # cost grows with resolution: ~ (448/224)^2 for a conv net
    assert costs_of("rexnet", 1.0, img_size=448)["gmacs"] == pytest.approx(4 * costs["gmacs"], rel=0.02)


def test_head_parameter_names_are_the_classifier():
    expected = {
        "rexnet_100": {"head.fc.weight", "head.fc.bias"},
        "resnet50": {"fc.weight", "fc.bias"},
        "efficientnet_b0": {"classifier.weight", "classifier.bias"},
    }
    for name, heads in expected.items():
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=37)
        assert head_parameter_names(model) == heads


# ------------------------------------------------------------------------------------------------
# resolving names, widths and weight tags
# ------------------------------------------------------------------------------------------------
def test_resolve_spec_pins_weight_tags():
    assert resolve_spec("rexnet", 1.0) == ("rexnet_100", "rexnet_100.nav_in1k")
    assert resolve_spec("rexnet", 3.0) == ("rexnet_300", "rexnet_300.nav_in1k")
    assert resolve_spec("resnet50", 1.0) == ("resnet50", "resnet50.tv_in1k")
    assert resolve_spec("resnet50", 1.0, "a1_in1k") == ("resnet50", "resnet50.a1_in1k")
    assert resolve_spec("efficientnet_b0", 1.0) == ("efficientnet_b0", "efficientnet_b0.ra_in1k")
    assert resolve_spec("rexnet", 1.2, pretrained=False) == ("rexnet_100", None)
    assert resolve_spec("convnext_tiny.fb_in1k", 1.0) == ("convnext_tiny", "convnext_tiny.fb_in1k")


@pytest.mark.parametrize("args,words", [
    (("rexnt", 1.0), ["unknown model", "rexnet"]),
    (("rexnet", 1.2), ["1.2", "1.0, 1.3, 1.5, 2.0, 3.0", "--no-pretrained"]),
    (("resnet50", 1.5), ["--width"]),
    (("resnet50", 1.0, "nope_in1k"), ["nope_in1k", "a1_in1k"]),
])
def test_bad_requests_are_one_line_model_errors(args, words):
    with pytest.raises(ModelError) as e:
        resolve_spec(*args)
    message = str(e.value)
    assert "\n" not in message and e.value.exit_code == 4
    for word in words:
        assert word in message


def test_unpublished_width_builds_from_scratch():
    backbone = build_backbone(Config(model="rexnet", width=1.2, pretrained=False), num_classes=37)
    assert backbone.weight_tag is None and backbone.pretrained_source == "none"
    assert backbone.model.get_classifier().out_features == 37
    # wider than x1.0 (params at 37 classes: x1.0 has 3.56 M)
    assert sum(p.numel() for p in backbone.model.parameters()) > 4.5e6


def test_data_config_comes_from_the_weights_cfg():
    with torch.device("meta"):  # architecture only: nothing allocated
        tv = build_backbone(Config(model="resnet50", pretrained=False), num_classes=10).data_config
        a1 = build_backbone(Config(model="resnet50", weights="a1_in1k", pretrained=False), num_classes=10).data_config
    assert tv["interpolation"] == "bilinear" and tv["crop_pct"] == 0.875
    assert a1["interpolation"] == "bicubic" and a1["crop_pct"] == 0.95
    assert tv["input_size"] == (3, 224, 224) and len(tv["mean"]) == 3 and len(tv["std"]) == 3


# ------------------------------------------------------------------------------------------------
# --weights FILE
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imagenet_like():
    """A random-init 1000-class rexnet_100 state dict, standing in for downloaded weights."""
    torch.manual_seed(123)
    return {k: v.clone() for k, v in timm.create_model("rexnet_100", num_classes=1000).state_dict().items()}


@pytest.mark.parametrize("kind", ["safetensors", "pth-nested", "pth-no-head"])
def test_weights_file_loads_backbone_and_keeps_a_new_head(tmp_path, imagenet_like, kind):
    state = dict(imagenet_like)
    if kind == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    elif kind == "pth-nested":
        path = tmp_path / "w.pth"
        torch.save({"state_dict": state, "epoch": 90}, path)
    else:
        path = tmp_path / "w.pth"
        torch.save({k: v for k, v in state.items() if not k.startswith("head.fc.")}, path)

    backbone = build_backbone(Config(model="rexnet", width=1.0, weights_file=str(path)), num_classes=37)
    model = backbone.model
    assert backbone.pretrained_source == f"file:{path.resolve()}"
    # the file's tensors, not the hub tag its preprocessing comes from
    assert backbone.weight_tag.startswith("file:") and backbone.weights_sha256.startswith(backbone.weight_tag[5:])
    head = head_parameter_names(model)
    assert head == {"head.fc.weight", "head.fc.bias"}
    loaded = model.state_dict()
    for key, value in state.items():
        if key not in head:
            assert torch.equal(loaded[key], value), key
    assert loaded["head.fc.weight"].shape == (37, 1280)
    assert not torch.equal(loaded["head.fc.weight"], state["head.fc.weight"][:37])


def test_weights_file_of_another_width_is_a_one_line_error(tmp_path, imagenet_like):
    path = tmp_path / "x1.safetensors"
    save_file(imagenet_like, str(path))
    with pytest.raises(ModelError) as e:
        build_backbone(Config(model="rexnet", width=1.3, weights_file=str(path)), num_classes=5)
    message = str(e.value)
    assert "\n" not in message and "mismatch" in message and "rexnet_130" in message and "e.g." in message


def test_weights_file_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "notes.pth"
    torch.save({"epoch": 3, "note": "no tensors"}, path)
    with pytest.raises(ModelError, match="no state dict"):
        build_backbone(Config(weights_file=str(path)), num_classes=5)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="is not a weights file") as e:
        build_backbone(Config(weights_file=str(junk)), num_classes=5)
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)
    with pytest.raises(ModelError, match="not found"):
        build_backbone(Config(weights_file=str(tmp_path / "missing.safetensors")), num_classes=5)


# ------------------------------------------------------------------------------------------------
# offline behaviour (subprocesses: huggingface_hub must not be imported before the check)
# ------------------------------------------------------------------------------------------------
def offline_env(hf_home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")
           and "proxy" not in k.lower()}
    env.update(HF_HOME=str(hf_home), PYTHONPATH=str(REPO),
               HF_ENDPOINT="http://127.0.0.1:1")  # nothing listens on port 1: a network that is down
    return env


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_no_network_no_cache_fails_fast_with_how_to_fix(tmp_path):
    code = """
        import json, sys, time
        start = time.monotonic()
        from rextransfer.config.settings import Config
        from rextransfer.core.errors import ModelError
        from rextransfer.models.registry import ensure_weights_available
        try:
            ensure_weights_available(Config(model="rexnet", width=1.0))
            message = None
        except ModelError as e:
            message = str(e)
        seconds = time.monotonic() - start
        print(json.dumps({"message": message, "seconds": seconds,
                          "hub_imported": "huggingface_hub" in sys.modules,
                          "random_init": ensure_weights_available(Config(pretrained=False))}))
    """
    result = run_python(code, offline_env(tmp_path / "empty-hf"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    message = report["message"]
    assert message and "\n" not in message
    for fix in ("rexnet_100.nav_in1k", "unreachable", "--weights FILE", "HF_HUB_OFFLINE", "--no-pretrained"):
        assert fix in message
    assert report["seconds"] < 5, report
    assert not report["hub_imported"]
    assert report["random_init"] == "none"


def test_finetune_without_network_or_cache_fails_in_one_line_before_any_work(tmp_path):
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "rextransfer.cli", "finetune", "demo", "--runs-dir", str(tmp_path / "runs"), "--epochs", "1"],
        env=offline_env(tmp_path / "empty-hf"), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - start
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--no-pretrained" in lines[0], result.stderr
    assert wall < 20  # interpreter + torch start-up; what this guards against is ~25 s of Hub retries
    assert not (tmp_path / "runs").exists()


def test_cached_weights_load_offline_without_retrying(tmp_path, imagenet_like):
    # A Hugging Face cache laid out as hf_hub_download leaves it.
    repo = tmp_path / "hf" / "hub" / "models--timm--rexnet_100.nav_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(imagenet_like, str(repo / "snapshots" / commit / "model.safetensors"))
    code = f"""
        import json, os, time, torch
        from safetensors.torch import load_file
        from rextransfer.config.settings import Config
        from rextransfer.models.build import build_backbone
        start = time.monotonic()
        b37 = build_backbone(Config(model="rexnet", width=1.0), num_classes=37)
        seconds = time.monotonic() - start
        b1000 = build_backbone(Config(model="rexnet", width=1.0), num_classes=1000)
        file = load_file({str(repo / "snapshots" / commit / "model.safetensors")!r})
        same = all(torch.equal(v, file[k]) for k, v in b37.model.state_dict().items() if not k.startswith("head."))
        print(json.dumps({{"source": b37.pretrained_source, "tag": b37.weight_tag, "same": same,
                          "head": list(b37.model.get_classifier().weight.shape),
                          "head1000_new": not torch.equal(b1000.model.get_classifier().weight, file["head.fc.weight"]),
                          "offline": os.environ.get("HF_HUB_OFFLINE"), "seconds": seconds}}))
    """
    result = run_python(code, offline_env(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["source"] == "hf-cache" and report["tag"] == "rexnet_100.nav_in1k"
    assert report["same"] and report["head"] == [37, 1280] and report["head1000_new"]
    assert report["offline"] == "1"
    assert report["seconds"] < 20, report  # no ~25 s of Hub retries


# ------------------------------------------------------------------------------------------------
# rextransfer models
# ------------------------------------------------------------------------------------------------
def test_models_command_lists_every_backbone_with_figures_and_preprocessing():
    result = CliRunner().invoke(app, ["models", "--computed"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for w in WEIGHTS:
        assert w.tag in result.output and f"{w.top1:.2f}" in result.output and f"{w.params_m:.2f}" in result.output
    assert "bilinear" in result.output and "0.95" in result.output  # resnet50 tv vs a1 preprocessing
    assert "0.407" in result.output  # rexnet x1.0 GMACs, computed
