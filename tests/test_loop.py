"""Each training feature, switched on, changes what it should (and nothing else breaks)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rextransfer.config.settings import Config
from rextransfer.data.folder import load_folder
from rextransfer.train.run import run_finetune
from rextransfer.train.optim import apply_bn_momentum, lr_factor, make_optimizer, param_groups
from synthetic import make_patterns

BASE = {"model": "rexnet", "pretrained": False, "img_size": 32, "batch_size": 16, "workers": 0,
        "epochs": 1, "lr": 0.05, "seed": 3, "probe_epochs": 0, "warmup_steps": 0, "schedule": "cosine",
        "label_smoothing": 0.0, "mixup": 0.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_patterns(tmp_path_factory.mktemp("feat"), per_class=8, test_per_class=3)


def train(data, tmp_path, name, **flags):
    run = run_finetune(str(data), flags={**BASE, **flags}, name=name, runs_dir=str(tmp_path / "runs")).path
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    return run, last


def initial_state(**flags):
    """The weights a run starts from: same seed, same registry call."""
    from rextransfer.models import build as models
    from rextransfer.train.distributed import seed_everything

    cfg = Config(**{**BASE, **flags})
    seed_everything(cfg.seed)
    return models.build_backbone(cfg, num_classes=4).model.state_dict()


def test_head_only_epochs_leave_the_backbone_unchanged(data, tmp_path):
    run, last = train(data, tmp_path, "probe", probe_epochs=1, epochs=1)
    start = initial_state()
    head = {k for k in start if k.startswith("head.fc")}
    for key, value in start.items():
        if key in head:
            assert not torch.equal(value, last["model"][key]), f"head {key} did not train"
        else:
            assert torch.equal(value, last["model"][key]), f"backbone {key} changed during the probe"


def test_without_probe_the_backbone_trains(data, tmp_path):
    _, last = train(data, tmp_path, "full")
    start = initial_state()
    assert not torch.equal(start["stem.conv.weight"], last["model"]["stem.conv.weight"])
    assert not torch.equal(start["stem.bn.running_mean"], last["model"]["stem.bn.running_mean"])


def test_ema_is_kept_and_evaluated(data, tmp_path):
    # timm copies the weights on the first updates, then blends; one eval at the end of epoch 2
    run, last = train(data, tmp_path, "ema", ema=True, ema_decay=0.5, epochs=2, eval_every=2)
    assert last["ema"] is not None
    assert not torch.equal(last["ema"]["stem.conv.weight"], last["model"]["stem.conv.weight"])
    best = load_file(str(run / "checkpoints" / "best.safetensors"))  # the only eval: the EMA at the end
    assert torch.equal(best["stem.conv.weight"], last["ema"]["stem.conv.weight"])


def test_gradient_clipping_limits_the_update(data, tmp_path):
    start = initial_state()
    _, free = train(data, tmp_path, "noclip")
    _, clipped = train(data, tmp_path, "clip", clip_grad=1e-6)
    key = "features.5.conv_pwl.conv.weight" if "features.5.conv_pwl.conv.weight" in start else "stem.conv.weight"
    moved_free = (free["model"][key] - start[key]).abs().max()
    moved_clipped = (clipped["model"][key] - start[key]).abs().max()
    assert moved_clipped < moved_free / 10


def test_mixup_and_label_smoothing_change_the_training_loss(data, tmp_path):
    plain, _ = train(data, tmp_path, "plain")
    mixed, _ = train(data, tmp_path, "mixed", mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    loss = lambda run: json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
    assert loss(plain) != loss(mixed)


def test_gradient_accumulation_keeps_steps_and_halves_micro_batches(data, tmp_path):
    from rextransfer.data.pipeline import Pipeline

    run, last = train(data, tmp_path, "accum", grad_accum=2)
    assert last["state"]["step"] == 2  # 32 images / 16 per optimizer step
    cfg = Config(**{**BASE, "grad_accum": 2})
    pipe = Pipeline(cfg, {"mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 0.875, "interpolation": "bilinear"}, torch.device("cpu"))
    sizes = [x.shape[0] for x, _ in pipe.train_batches(load_folder(data).train, 0)]
    assert sizes == [8, 8, 8, 8]


def test_early_stopping_ends_the_run(data, tmp_path):
    # a frozen backbone (probe) and a vanishing lr: the headline cannot improve after epoch 1
    run, last = train(data, tmp_path, "early", epochs=8, probe_epochs=8, lr=1e-12, early_stop=1)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["epochs"] == 2


def test_bf16_autocast_and_channels_last_run_on_cpu(data, tmp_path):
    run, last = train(data, tmp_path, "bf16", amp="bf16", channels_last="on")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["final"]["loss"] == summary["final"]["loss"]


def test_lr_schedules():
    cfg = Config(lr=1.0, warmup_steps=10, schedule="cosine")
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 100, cfg) == pytest.approx(0.5)
    assert lr_factor(99, 100, cfg) < 0.001
    step = Config(schedule="step", step_milestones=[0.5, 0.75], step_gamma=0.1)
    assert [lr_factor(s, 100, step) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_param_groups_head_multiplier_layer_decay_and_no_decay_on_norms():
    import timm

    model = timm.create_model("rexnet_100", num_classes=4)
    head = {n for n, _ in model.named_parameters() if n.startswith("head.fc")}
    groups = param_groups(model, Config(head_lr_mult=10.0, weight_decay=1e-4), head)
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert by_name["head.fc.weight"]["lr_scale"] == 10.0 and by_name["stem.conv.weight"]["lr_scale"] == 1.0
    assert by_name["stem.bn.weight"]["weight_decay"] == 0.0 and by_name["stem.conv.weight"]["weight_decay"] == 1e-4
    layered = {n: g for g in param_groups(model, Config(layer_decay=0.7), head) for n in g["param_names"]}
    assert layered["stem.conv.weight"]["lr_scale"] < layered["features.15.conv_pwl.conv.weight"]["lr_scale"] <= layered["head.fc.weight"]["lr_scale"]
    opt = make_optimizer(model, Config(optimizer="sgd", nesterov=True), head)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] is True
    assert isinstance(make_optimizer(model, Config(optimizer="adamw"), head), torch.optim.AdamW)


def test_bn_momentum_rule():
    import timm

    model = timm.create_model("rexnet_100", num_classes=4)
    assert apply_bn_momentum(model, Config(bn_momentum="auto"), steps_per_epoch=1000) == pytest.approx(0.01)
    assert apply_bn_momentum(model, Config(bn_momentum="auto"), steps_per_epoch=8) == pytest.approx(0.1)
    assert model.stem.bn.momentum == pytest.approx(0.1)
    assert apply_bn_momentum(model, Config(bn_momentum="0.05"), steps_per_epoch=8) == pytest.approx(0.05)
    assert apply_bn_momentum(model, Config(), steps_per_epoch=8) is None
    # 0 (the few-shot tier): a training step normalises by the batch but keeps the running stats
    assert apply_bn_momentum(model, Config(bn_momentum="0"), steps_per_epoch=8) == 0
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()(torch.randn(4, 3, 64, 64) * 3 + 1).sum().backward()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert not torch.equal(model.stem.bn.weight.grad, torch.zeros_like(model.stem.bn.weight))


def test_torch_compile_trains(data, tmp_path):
    # Inductor compiles forward and backward on CPU (about a minute): the flag must really train.
    start = initial_state()
    run, last = train(data, tmp_path, "compiled", compile=True, epochs=1)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and last["state"]["step"] == 2
    assert not any(k.startswith("_orig_mod") for k in last["model"])  # saved from the plain module
    assert not torch.equal(start["stem.bn.running_mean"], last["model"]["stem.bn.running_mean"])


@pytest.mark.slow  # a CLI run of 2 epochs x 8 steps on 2 shared cores: ~40-70 s
def test_non_finite_loss_stops_within_log_every_steps_and_keeps_the_finite_checkpoint(data, tmp_path):
    import re
    import subprocess
    import sys

    # lr x 1e30 from the middle of training (step 9 of 16): the loss diverges early in epoch 2
    settings = ["model=rexnet", "pretrained=false", "img_size=32", "batch_size=4", "workers=0", "epochs=2",
                "optimizer=sgd", "lr=0.05", "seed=3", "schedule=step", "step_milestones=[0.5]", "step_gamma=1e30",
                "log_every=3"]
    result = subprocess.run([sys.executable, "-m", "rextransfer.cli", "finetune", str(data), "--runs-dir",
                             str(tmp_path / "runs"), "--name", "nan", *[a for s in settings for a in ("--set", s)]],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 6, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    found = re.search(r"loss became (nan|inf) at step (\d+) \(checked steps (\d+)-(\d+)\).*last good checkpoint", errors[0])
    assert found, errors[0]
    step, first, last = map(int, found.groups()[1:])
    # losses are read every 3 steps (9, 12, ...): the bad step is named, found by the read after it
    assert (first, last) == (10, 12) and first <= step <= last
    run = tmp_path / "runs" / data.name / "nan"
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["state"]["step"] == 8  # the end of epoch 1: the last step whose loss was read finite
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())
    best = load_file(str(run / "checkpoints" / "best.safetensors"))
    assert all(torch.isfinite(t).all() for t in best.values() if t.is_floating_point())
