"""Where the new classifier starts (train/head.py): zero, random, or the nearest class mean."""

import contextlib
import json

import pytest
import torch

from rextransfer.config.settings import Config
from rextransfer.core.errors import UsageError
from rextransfer.data import get_splits
from rextransfer.data.pipeline import Pipeline
from rextransfer.models.build import build_backbone, zero_head
from rextransfer.train.head import frozen_features, init_head
from rextransfer.train.run import run_finetune
from synthetic import make_patterns

SMALL = {"model": "rexnet", "pretrained": False, "img_size": 32, "batch_size": 16, "workers": 0, "cache": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_patterns(tmp_path_factory.mktemp("head"), per_class=8, test_per_class=4)


def test_an_ncm_head_predicts_at_step_0_exactly_what_nearest_class_mean_predicts(data):
    cfg = Config(dataset=str(data), head_init="ncm", label_smoothing=0.1, **SMALL)
    splits = get_splits(cfg)
    torch.manual_seed(0)
    backbone = build_backbone(cfg, len(splits.classes))
    model = backbone.model.eval()
    pipeline = Pipeline(cfg, backbone.data_config, torch.device("cpu"))
    fitted = init_head(cfg, model, pipeline, splits.train, len(splits.classes), contextlib.nullcontext)
    assert fitted["head_init"] == "ncm" and fitted["head_images"] == len(splits.train)
    # The reference, computed here: nearest training-class mean of the same frozen features.
    (xtr, ytr), (xte, _) = frozen_features(model, pipeline, splits.train), frozen_features(model, pipeline, splits.eval)
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(len(splits.classes))])
    nearest = torch.cdist(xte.double(), means.double()).argmin(1)
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in pipeline.eval_batches(splits.eval)])
    assert torch.equal(logits.argmax(1), nearest)
    # The temperature makes the start confident but not saturated: a finite training loss.
    assert 0 < fitted["head_train_loss"] < 1.5 and fitted["head_temperature"] > 0
    # ... fitted leave-one-out: each image scored against its own class's mean without it (as an
    # unseen image would be), here from explicit distances; the chosen temperature is the grid's
    # best (its neighbours on the grid, 10**(1/8) apart, do worse) and its loss is the recorded one.
    x, sq = xtr.double(), torch.cdist(xtr.double(), means.double()).square()
    for i, c in enumerate(ytr.tolist()):
        own = ytr == c
        sq[i, c] = (x[i] - (x[own].sum(0) - x[i]) / (own.sum() - 1)).square().sum()
    def loo_loss(t):  # NCM logits are -|x - mean|^2 up to a per-image constant
        return torch.nn.functional.cross_entropy(-sq * t, ytr, label_smoothing=0.1).item()
    t = fitted["head_temperature"]
    assert loo_loss(t) == pytest.approx(fitted["head_train_loss"], rel=1e-4)
    assert loo_loss(t) < min(loo_loss(t * 10 ** 0.125), loo_loss(t / 10 ** 0.125))


def test_zero_and_random_heads_are_what_the_names_say(data):
    cfg = Config(dataset=str(data), **SMALL)
    torch.manual_seed(0)
    model = build_backbone(cfg, 4).model
    head = model.get_classifier()
    assert head.weight.abs().sum() > 0  # timm's random init
    assert init_head(cfg, model, None, None, 4, contextlib.nullcontext) == {}  # nothing to fit for zero/random
    zero_head(model)
    assert head.weight.abs().sum() == 0 and head.bias.abs().sum() == 0


def test_the_run_records_how_its_head_started_and_refuses_an_unknown_one(data, tmp_path):
    run = run_finetune(str(data), flags={**SMALL, "epochs": 1, "probe_epochs": 0}, sets=["head_init=ncm"],
                       name="ncm", runs_dir=str(tmp_path)).path
    head = json.loads((run / "summary.json").read_text())["head"]
    assert head["head_init"] == "ncm" and head["head_images"] == 32 and head["head_train_top1"] > 25
    with pytest.raises(UsageError, match="head_init must be one of zero, random, ncm"):
        Config(dataset=str(data), head_init="probe").validate()
