"""A run's model in the formats it ships in, each checked against PyTorch before it is kept.

    onnx         model.onnx via torch.onnx.export (the torch.export-based exporter), dynamic batch
                 axis; class names and preprocessing in its metadata; checked with onnxruntime on
                 batches of another size than the one exported ([onnx] extra)
    torchscript  model.pt via torch.jit.trace, class names and preprocessing as extra files
                 (PyTorch deprecates TorchScript; ONNX is the lasting choice)
    timm         a timm / Hugging Face model folder: config.json (architecture, num_classes, label
                 names, model args, pretrained_cfg with the run's mean/std/size/crop),
                 model.safetensors (timm's own save_for_hf) and a model card README.md; checked by
                 loading it back with timm; `push_to_hub` uploads it with huggingface_hub

Without --out the export goes to <run folder>/export/<format>/ (written by RunDir, whole or not
at all). Nothing here prints: `cli/export.py` reports the returned `Exported`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import EnvironmentProblem, ModelError, UsageError
from .extras import require
from .rundir import RunDir

FORMATS = ("onnx", "torchscript", "timm")
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")  # the exporter needs the first two, the check the third
TOLERANCE = 1e-3   # max |logit difference| accepted (float32 reorderings give ~1e-6)
EXPORT_BATCH, CHECK_BATCHES = 2, (3, 1)  # checked at other sizes than exported: the batch axis is dynamic


@dataclass
class Exported:
    format: str
    folder: Path
    files: list[Path] = field(default_factory=list)
    max_abs_diff: float = float("nan")   # against the PyTorch model, over CHECK_BATCHES
    checked_with: str = ""               # onnxruntime x.y | torch.jit.load | timm x.y
    checkpoint: str = "best"
    pushed_to: str | None = None         # the Hub repo URL after --push-to-hub
    notes: list[str] = field(default_factory=list)


def export_run(run_dir: Path, fmt: str, *, out: Path | None = None, checkpoint: str = "best",
               push_to_hub: str | None = None, private: bool = False) -> Exported:
    from .inference import load_run_model

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if push_to_hub and fmt != "timm":
        raise UsageError("--push-to-hub uploads a timm model folder: use it with --format timm")
    if fmt == "onnx":
        require("onnx", ONNX_MODULES, "ONNX export")
    run = RunDir(Path(run_dir))
    model, cfg, classes, data_config = load_run_model(run.path, checkpoint, "cpu")
    prep = {"input_size": (3, cfg.img_size, cfg.img_size), "interpolation": data_config.get("interpolation") or "bilinear",
            "mean": tuple(data_config["mean"]), "std": tuple(data_config["std"]),
            "crop_pct": cfg.crop_pct or float(data_config.get("crop_pct") or 0.875), "crop_mode": "center"}
    result = Exported(fmt, Path(out) if out else run.export_dir(fmt), checkpoint=checkpoint)

    def write(folder: Path) -> None:
        WRITERS[fmt](folder, model, classes, prep, run, result)
        result.files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())

    if out:  # into a temp folder beside it first: a failed check leaves nothing behind
        import shutil
        import tempfile

        target = Path(out)
        target.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{fmt}.", suffix=".tmp", dir=target))
        try:
            write(tmp)
            for name in result.files:
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp / name, target / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        run.write_export(fmt, write)
    if push_to_hub:
        result.pushed_to = push_folder(result.folder, push_to_hub, private=private, message=f"rextransfer export of {run.path.name}")
    return result


def _batches(size: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, 3, size, size, generator=g) for n in (EXPORT_BATCH, *CHECK_BATCHES)]


def _compare(result: Exported, reference, candidate, batches) -> None:
    """max |reference(x) - candidate(x)| over the check batches; a larger one than TOLERANCE fails."""
    import numpy as np
    import torch

    worst = 0.0
    with torch.no_grad():
        for x in batches:
            want = reference(x).float().numpy()
            got = np.asarray(candidate(x), dtype=np.float32)
            if got.shape != want.shape:
                raise ModelError(f"{result.format} export gives shape {got.shape} for a batch of {x.shape[0]}, PyTorch {want.shape}")
            worst = max(worst, float(np.abs(got - want).max()))
    result.max_abs_diff = worst
    if not worst <= TOLERANCE:
        raise ModelError(f"{result.format} export differs from PyTorch by {worst:.3g} (> {TOLERANCE:g}); not written")


def _metadata(classes: list[str], prep: dict) -> dict[str, str]:
    return {"label_names": json.dumps(classes), "preprocessing": json.dumps(prep)}


# ------------------------------------------------------------------------------------------------
# Writers: write into `folder`, check, fill `result`
# ------------------------------------------------------------------------------------------------
def _onnx(folder: Path, model, classes, prep, run, result: Exported) -> None:
    import onnx
    import onnxruntime
    import torch

    batches = _batches(prep["input_size"][-1])
    path = folder / "model.onnx"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter; the check below is what counts
        torch.onnx.export(model, (batches[0],), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False,
                          verbose=False)
    proto = onnx.load(str(path))
    for key, value in _metadata(classes, prep).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    _compare(result, model, lambda x: session.run(None, {name: x.numpy()})[0], batches[1:])
    result.checked_with = f"onnxruntime {onnxruntime.__version__}"


def _torchscript(folder: Path, model, classes, prep, run, result: Exported) -> None:
    import torch

    batches = _batches(prep["input_size"][-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice: said once, in result.notes
        traced = torch.jit.trace(model, batches[0])
        extra = {k + ".json": v for k, v in _metadata(classes, prep).items()}
        torch.jit.save(traced, str(folder / "model.pt"), _extra_files=extra)
        loaded = torch.jit.load(str(folder / "model.pt"), map_location="cpu")
    _compare(result, model, lambda x: loaded(x).numpy(), batches[1:])
    result.checked_with = "torch.jit.load"
    result.notes.append("PyTorch deprecates TorchScript; --format onnx is the lasting choice")


def _timm(folder: Path, model, classes, prep, run, result: Exported) -> None:
    import timm
    from timm.models import save_for_hf

    save_for_hf(model, str(folder), model_config={"label_names": list(classes)}, safe_serialization=True,
                data_config={k: prep[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")})
    config = json.loads((folder / "config.json").read_text())
    (folder / "README.md").write_text(model_card(run, classes, prep, config, result.checkpoint))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    if list(loaded.pretrained_cfg.get("label_names") or []) != list(classes):
        raise ModelError("timm export: label names did not survive the round trip")
    _compare(result, model, lambda x: loaded(x).numpy(), _batches(prep["input_size"][-1])[1:])
    result.checked_with = f"timm {timm.__version__} (local-dir:)"


WRITERS = {"onnx": _onnx, "torchscript": _torchscript, "timm": _timm}


# ------------------------------------------------------------------------------------------------
# Model card and the Hub
# ------------------------------------------------------------------------------------------------
def model_card(run: RunDir, classes: list[str], prep: dict, config: dict, checkpoint: str = "best") -> str:
    """README.md of a timm folder: Hub metadata, results, recipe, preprocessing, usage."""
    from .. import __version__

    summary, stored = run.summary() or {}, run.stored_config()
    arch, tag = config["architecture"], summary.get("weight_tag")
    dataset, split = summary.get("dataset") or run.path.parent.name, summary.get("eval_split", "eval")
    front = ["---", "library_name: timm", "pipeline_tag: image-classification",
             "tags:", "- image-classification", "- timm", "- rextransfer", "- fine-grained"]
    if tag and summary.get("pretrained", True):
        front.append(f"base_model: timm/{tag}")
    front.append("---")
    how = f"fine-tuned from `{tag}`" if tag else "trained from scratch (no pretrained weights)"
    lines = [*front, f"# {arch} on {dataset}", "",
             f"`{arch}` {how} on **{dataset}** ({len(classes)} classes) with "
             f"[rextransfer](https://pypi.org/project/rextransfer/) {__version__}; run `{run.path.name}`.", ""]
    final, best = summary.get("final") or {}, summary.get("best") or {}
    if final:
        lines += [f"## Results ({split} split, {summary.get('eval_size', '?')} images)", "",
                  f"| metric | final (epoch {summary.get('epochs', '?')}) | best (epoch {best.get('epoch', '?')}) |",
                  "| --- | --- | --- |"]
        for key, label in (("top1", "top-1 %"), ("top5", "top-5 %"), ("mean_class_acc", "mean class accuracy %"), ("loss", "loss")):
            f, b = final.get(key), best.get(key)
            lines.append(f"| {label} | {_num(f)} | {_num(b)} |")
        which = (f"the best evaluation (epoch {best.get('epoch', '?')})" if checkpoint == "best"
                 else f"the last weights (epoch {summary.get('epochs', '?')})")
        lines += ["", f"Headline metric: {summary.get('headline_metric', 'top1')}. These weights are {which}.", ""]
    keys = ("recipe", "epochs", "steps", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "warmup_steps",
            "label_smoothing", "mixup", "cutmix", "ema", "head_init", "probe_epochs", "bn_momentum", "layer_decay", "head_lr_mult",
            "img_size", "seed")
    lines += ["## Training recipe", "", *[f"- {k}: {stored[k]}" for k in keys if k in stored], ""]
    size = prep["input_size"][-1]
    lines += ["## Preprocessing", "",
              f"Resize the shorter side to {int(size / prep['crop_pct'])} px ({prep['interpolation']}), center-crop "
              f"{size} x {size} (crop_pct {prep['crop_pct']:g}), normalise with mean {list(prep['mean'])} and std "
              f"{list(prep['std'])}. All of it is in config.json's `pretrained_cfg`, so timm's own transforms reproduce it.", ""]
    lines += ["## Usage", "", "```python", "import timm, torch", "from PIL import Image", "",
              'model = timm.create_model("hf-hub:<user>/<repo>", pretrained=True).eval()  # or "local-dir:<this folder>"',
              "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))",
              'probs = model(transform(Image.open("image.jpg").convert("RGB"))[None]).softmax(-1)',
              'names = model.pretrained_cfg["label_names"]', "print(names[probs.argmax()])", "```", ""]
    shown = ", ".join(classes[:60]) + (f", ... ({len(classes)} in all)" if len(classes) > 60 else "")
    lines += ["## Classes", "", shown, "",
              "Licence: that of the base weights and of the dataset's images; check both before reuse.", ""]
    return "\n".join(lines)


def _num(v) -> str:
    return "–" if v is None else f"{v:.2f}" if abs(v) >= 1 else f"{v:.4f}"


def push_folder(folder: Path, repo: str, *, private: bool = False, message: str = "rextransfer export") -> str:
    """Upload `folder` as the Hugging Face model repo `repo` (created if needed); returns its URL."""
    from ..core.reach import hub_offline, hub_url, reachable

    later = f"the export is in {folder}; push it later with `hf upload {repo} {folder}`"
    if hub_offline():
        raise EnvironmentProblem(f"cannot push to {repo}: Hugging Face offline mode is on (HF_HUB_OFFLINE); {later}")
    if not reachable(hub_url()):
        raise EnvironmentProblem(f"cannot reach {hub_url()} to push {repo} (offline?); {later}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        url = api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, repo_type="model", folder_path=str(folder), commit_message=message)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise EnvironmentProblem(f"not allowed to push to {repo} (HTTP {status}): log in with `hf auth login` "
                                     f"or set HF_TOKEN; {later}") from None
        raise EnvironmentProblem(f"push to {repo} failed ({_first_line(e)}); {later}") from None
    except (OSError, ValueError) as e:  # connection errors, a malformed repo id, no token
        raise EnvironmentProblem(f"push to {repo} failed ({type(e).__name__}: {_first_line(e)}); {later}") from None
    return str(url)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
