"""`rextransfer analyze layers|features`: the commands a user runs.

The layer study's numbers are specified in test_layers_rank.py, its verdict rules in
test_observations.py and the paper's digitised figure in test_figure1.py; here the command prints
and writes what those compute, side by side with the paper.
"""

import csv
import json
import random
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from rextransfer.analyze import features
from rextransfer.analyze import layers as analyze
from rextransfer.analyze.observations import verdicts
from rextransfer.cli.app import app

runner = CliRunner()

# ------------------------------------------------------------------------------------------------
# analyze layers
# ------------------------------------------------------------------------------------------------
QUICK = ["--blocks", "conv1x1,ib_dw", "--activations", "linear,relu,silu", "--ratios", "0.1,0.5,1",
         "--networks", "4", "--d-out-min", "10", "--d-out-max", "16", "--samples", "32"]
QUICK_SETTINGS = dict(blocks=["conv1x1", "ib_dw"], activations=["linear", "relu", "silu"], ratios=[0.1, 0.5, 1.0],
                      networks=4, d_out_min=10, d_out_max=16, samples=32)


def test_layers_prints_ours_beside_the_paper_and_a_verdict_per_observation(tmp_path):
    out = tmp_path / "layers"
    result = runner.invoke(app, ["analyze", "layers", *QUICK, "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = result.stdout
    expected = analyze.layer_rank_sweep(analyze.LayerSettings(**QUICK_SETTINGS))
    ours = analyze.rank_table(expected, "torch")

    # Settings: each unstated one is marked as such, on screen and in settings.json.
    for name in ("input", "init", "bn_order", "bn_mode", "rank_rule", "d_out_min", "samples"):
        line = next(l for l in text.splitlines() if l.strip().startswith(f"* {name} "))
        assert "not stated by the paper" in line, line
    settings = json.loads((out / "settings.json").read_text())
    assert settings["networks"] == 4 and settings["rank_rule"] == "torch" and settings["threads"] == 1
    assert settings["sources"]["bn_order"].startswith("not stated by the paper")
    assert settings["sources"]["networks"].startswith("stated by the paper")
    assert settings["paper_figure"]["figure"] == "Figure 1" and settings["wall_time_s"] > 0

    # Side by side: ours / paper / difference, the paper's ReLU in the 1x1 conv at 0.1 being 0.85.
    relu = ours["conv1x1"]["relu"][0.1]
    assert f"{relu:.3f} / 0.850 / {relu - 0.85:+.3f}" in text
    with open(out / "comparison.csv") as f:
        rows = {(r["block"], r["activation"], r["ratio"]): r for r in csv.DictReader(f)}
    assert float(rows[("conv1x1", "relu", "0.1")]["diff"]) == pytest.approx(relu - 0.85, abs=1e-4)
    assert {b for b, _, _ in rows} == {"conv1x1", "ib_dw"}

    # The curves file holds every point under every rank rule.
    with open(out / "layers.csv") as f:
        curves = list(csv.DictReader(f))
    assert len(curves) == 2 * 3 * 3
    assert {k for k in curves[0] if k.startswith("rank_ratio@")} == {"rank_ratio@torch", "rank_ratio@0.0001",
                                                                      "rank_ratio@0.001", "rank_ratio@0.01"}
    assert float(curves[0]["rank_ratio@torch"]) == pytest.approx(expected[0]["rank_ratio"]["torch"], abs=1e-4)

    # Verdicts: printed with their numbers, worded "under these settings", and the ones computed.
    computed = {v["id"]: v for v in verdicts(ours)}
    for oid, v in computed.items():
        line = next(l for l in text.splitlines() if l.strip().startswith(f"Observation {oid} "))
        assert f"{v['status'].upper()} under these settings" in line and v["evidence"] in line
    saved = json.loads((out / "verdicts.json").read_text())
    assert [v["status"] for v in saved["under_these_settings"]] == [computed[o]["status"] for o in ("1", "2a", "2b", "3")]
    assert set(saved["by_rank_rule"]) == {"torch", "0.0001", "0.001", "0.01"}

    with Image.open(out / "layers.png") as im:
        im.verify()


@pytest.mark.parametrize("args, message", [
    (["--ratios", "a,b"], "--ratios"),
    (["--ratios", "0,0.5"], "--ratios"),
    (["--activations", "relu,gelu"], "gelu"),
    (["--blocks", "conv5x5"], "conv5x5"),
    (["--samples", "10"], "--samples"),
    (["--rank-rule", "2"], "--rank-rule"),
    (["--bn-mode", "frozen"], "--bn-mode"),
    (["--init", "xavier"], "--init"),
    (["--sweep", "--sweep-networks", "0"], "--sweep-networks"),
])
def test_layers_bad_options_are_one_line_usage_errors(tmp_path, args, message):
    result = runner.invoke(app, ["analyze", "layers", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert not any(tmp_path.iterdir())  # nothing computed or written


def test_bad_option_through_the_entry_point_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "rextransfer.cli", "analyze", "layers", "--ratios", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --ratios expects") and len(proc.stderr.strip().splitlines()) == 1


def test_layers_sweep_reports_where_each_observation_holds(tmp_path):
    result = runner.invoke(app, ["analyze", "layers", "--sweep", "--sweep-networks", "1", "--blocks", "conv1x1,ib",
                                 "--activations", "linear,relu,silu", "--d-out-min", "6", "--d-out-max", "8",
                                 "--samples", "12", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 72 * 4  # grid points x rank rules
    for oid in ("1", "2a", "2b", "3"):
        holds = sum(r[f"obs{oid}"] == "holds" for r in rows)
        assert f"Observation {oid} (" in result.stdout
        assert f"holds under {holds} of 288 settings" in result.stdout
    summary = json.loads((tmp_path / "sweep.json").read_text())["summary"]
    assert [s["holds"] for s in summary] == [sum(r[f"obs{o}"] == "holds" for r in rows) for o in ("1", "2a", "2b", "3")]


# ------------------------------------------------------------------------------------------------
# analyze features
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """train/ and test/ folders of 3 classes of 32 px images (blobs of a class colour on noise)."""
    root = tmp_path_factory.mktemp("tiny")
    rng = random.Random(0)
    colours = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 60, 220)}
    for split, n in (("train", 16), ("test", 8)):
        for name, colour in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                im = Image.effect_noise((32, 32), 60).convert("RGB")
                x, y = rng.randint(0, 16), rng.randint(0, 16)
                im.paste(colour, (x, y, x + 14, y + 14))
                im.save(root / split / name / f"{i}.png")
    return root


def _direct(features: torch.Tensor, rtol: float):
    """Rank and max-normalised nuclear norm straight from torch.linalg."""
    m = features.double()
    s_max = torch.linalg.matrix_norm(m, ord=2)
    return int(torch.linalg.matrix_rank(m, rtol=rtol)), float(torch.linalg.matrix_norm(m / s_max, ord="nuc"))


def test_features_of_a_model_match_a_direct_computation(tiny_folder, tmp_path):
    out = tmp_path / "feat"
    result = runner.invoke(app, ["analyze", "features", "--model", "rexnet", "--no-pretrained", "--dataset",
                                 str(tiny_folder), "--img-size", "32", "--device", "cpu", "--save-features",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "features.json").read_text())
    (label, r), = data["results"].items()
    feats = load_file(str(out / "features.safetensors"))["source_0"]
    assert feats.shape == (24, 1280) == (r["images"], r["channels"])  # the test split, rexnet_100's 1280 features
    rank, nuclear = _direct(feats, 1e-4)
    assert r["rank"] == rank and r["nuclear_norm"] == pytest.approx(nuclear, rel=1e-9)
    assert 1 <= r["nuclear_norm"] <= r["rank"] <= 24
    assert label in result.output and str(r["rank"]) in result.output
    assert json.loads((out / "settings.json").read_text())["normalize"] == "max"
    with Image.open(out / "spectrum.png") as im:
        im.verify()

    # The saved matrix is the penultimate layer: the classifier maps it to the model's logits.
    from rextransfer.config.settings import Config
    from rextransfer.data import get_splits
    from rextransfer.models.build import build_backbone
    from rextransfer.data.pipeline import Pipeline

    torch.manual_seed(0)  # the command seeds random init with --seed (default 0)
    backbone = build_backbone(Config(model="rexnet", pretrained=False), num_classes=1000)
    model = backbone.model.eval()
    cfg = Config(dataset=str(tiny_folder), img_size=32, cache=False, workers=0, batch_size=32)
    x, _ = next(iter(Pipeline(cfg, backbone.data_config, torch.device("cpu")).eval_batches(get_splits(cfg).eval)))
    with torch.no_grad():
        assert torch.allclose(model.get_classifier()(feats[: len(x)]), model(x), atol=1e-4)


def test_feature_spectrum_normalisations():
    m = torch.diag(torch.tensor([4.0, 2.0, 1.0, 1e-6], dtype=torch.float64))
    by_max = features.feature_spectrum(m, rtol=1e-4, normalize="max")
    assert by_max["rank"] == 3 and by_max["nuclear_norm"] == pytest.approx(7.000001 / 4)
    assert by_max["singular_values"][:3] == [1.0, 0.5, 0.25]
    assert features.feature_spectrum(m, normalize="fro")["nuclear_norm"] == pytest.approx(7.000001 / 21 ** 0.5)
    centred = features.feature_spectrum(torch.ones(10, 3) + torch.eye(10, 3), center=True)
    assert centred["rank"] == 3 - 0  # centring removes the constant offset but not the 3 spikes
    assert features.feature_spectrum(torch.ones(10, 3))["rank"] == 1


def test_features_needs_a_source(tmp_path):
    result = runner.invoke(app, ["analyze", "features", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--model" in result.stderr, result.output


def test_features_compare_a_finetuned_run_with_its_starting_model(tiny_folder, tmp_path):
    """A run folder and a backbone measured on the same images (the run's own dataset), side by side."""
    from rextransfer.train.run import run_finetune

    flags = {"model": "rexnet", "pretrained": False, "img_size": 32, "batch_size": 16, "workers": 0,
             "steps": 2, "cache": False, "optimizer": "adamw", "lr": 0.003}
    run = run_finetune(str(tiny_folder), flags=flags, name="tiny", runs_dir=str(tmp_path / "runs")).path
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["analyze", "features", str(run), "--model", "rexnet", "--no-pretrained",
                                 "--device", "cpu", "--save-features", "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "features.json").read_text())["results"]
    assert list(results) == ["tiny (best)", "rexnet_100 (random init)"]
    run_result, model_result = results.values()
    assert run_result["run_dir"] == str(run) and model_result["dataset"] == str(tiny_folder)
    assert run_result["images"] == model_result["images"] == 24  # the same test split ...
    assert run_result["img_size"] == model_result["img_size"] == 32  # ... at the run's crop size
    saved = load_file(str(out / "features.safetensors"))
    for key, r in zip(("source_0", "source_1"), results.values()):
        rank, nuclear = _direct(saved[key], 1e-4)
        assert r["rank"] == rank and r["nuclear_norm"] == pytest.approx(nuclear, rel=1e-9)
    assert not torch.allclose(saved["source_0"], saved["source_1"])  # fine-tuning changed the features
