"""The lr sweep: weights left bit-identical, a suggestion inside the swept range by fastai's
valley rule, lr_find.png, and `finetune --lr auto` training exactly as with that lr given."""

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from rextransfer.cli.app import app
from rextransfer.config.settings import Config
from rextransfer.train.lr_find import sweep_lr, valley
from tiny_run import TINY, patterns, train_tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return patterns(tmp_path_factory.mktemp("data"))


def test_valley_picks_a_point_inside_the_longest_fall():
    # flat for 10 points, falling for 20, then climbing: fastai's rule lands in the fall's middle third
    lrs = [10 ** (-7 + 8 * i / 49) for i in range(50)]
    losses = [2.0] * 10 + [2.0 - 0.05 * k for k in range(1, 21)] + [1.0 + 0.2 * k for k in range(1, 21)]
    pick = lrs.index(valley(lrs, losses))
    assert 10 + 20 / 3 <= pick + 1 <= 10 + 2 * 20 / 3 + 1
    assert valley(lrs[:3], [3.0, 2.0, 1.0]) in lrs[:3]  # too short to trim: still a swept lr


def test_sweep_leaves_weights_and_rngs_bit_identical_and_suggests_a_swept_lr(data):
    from rextransfer.data.folder import load_folder
    from rextransfer.data.pipeline import Pipeline
    from rextransfer.models.build import build_backbone, head_parameter_names

    cfg = Config(**{**TINY, "dataset": str(data)}).validate()
    backbone = build_backbone(cfg, num_classes=4)
    model = backbone.model
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    splits = load_folder(data)
    pipeline = Pipeline(cfg, backbone.data_config, torch.device("cpu"))
    sweep = sweep_lr(cfg, model, head_parameter_names(model), pipeline, splits.train, torch.device("cpu"), steps=24)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included
    assert torch.equal(rng, torch.get_rng_state())
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert 2 <= len(sweep.lrs) <= 24 and sweep.lrs[0] == pytest.approx(1e-7)
    assert sweep.lrs[0] <= sweep.suggestion <= sweep.lrs[-1] and sweep.suggestion in sweep.lrs
    assert all(b > a for a, b in zip(sweep.lrs, sweep.lrs[1:]))  # exponential: strictly increasing


def test_lr_find_command_prints_a_suggestion_and_writes_the_plot(data, tmp_path):
    plot = tmp_path / "lr.png"
    result = runner.invoke(app, ["lr-find", str(data), "--model", "test_efficientnet", "--no-pretrained",
                                 "--img-size", "32", "-b", "16", "--workers", "0", "--sweep-steps", "30",
                                 "--start-lr", "1e-5", "--end-lr", "1", "--out", str(plot)])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.stdout.splitlines() if l.startswith("suggested lr: "))
    lr = float(line.split()[2])
    assert 1e-5 <= lr <= 1
    assert f"--lr {lr:.3g}" in result.stdout
    from PIL import Image

    with Image.open(plot) as im:
        assert im.size[0] >= 600


@pytest.mark.parametrize("head", ["zero", "ncm"])  # ncm: the sweep starts from the run's class-mean head
def test_finetune_lr_auto_trains_as_with_the_suggested_lr_given(data, tmp_path, monkeypatch, head):
    from rextransfer.train import lr_find

    monkeypatch.setattr(lr_find, "SWEEP_STEPS", 30)  # a shorter sweep, same code path
    auto = train_tiny(data, tmp_path, "auto", lr="auto", head_init=head)
    stored = yaml.safe_load((auto / "config.yaml").read_text())
    found = json.loads((auto / "env.json").read_text())["lr_find"]
    assert stored["lr"] == found["suggested_lr"] and math.isfinite(stored["lr"])
    assert found["rule"] == "valley" and found["steps"] <= found["planned_steps"] == 30
    assert (auto / "lr_find.png").exists()
    given = train_tiny(data, tmp_path, "given", lr=stored["lr"], head_init=head)
    a, b = load_file(str(auto / "checkpoints" / "best.safetensors")), load_file(str(given / "checkpoints" / "best.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lr_must_be_a_number_or_auto(data, tmp_path):
    result = runner.invoke(app, ["finetune", str(data), "--lr", "fast", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "number or auto" in result.stderr
