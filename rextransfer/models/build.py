"""Build a backbone for fine-tuning: a timm model with ImageNet weights and a new head; its costs.

The registry (names, widths, pinned weight tags, published figures) and the offline pre-check live
in registry.py, which imports nothing heavy; this module imports torch at the top and timm only
inside functions, so `ensure_weights_available` still runs before huggingface_hub is imported.

Preprocessing (input size, interpolation, mean/std, crop) always comes from the weights' timm
pretrained_cfg, never from constants here.
"""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.console import log
from ..core.errors import ModelError
from .registry import create_kwargs, ensure_weights_available, resolve_spec

DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct")


@dataclass
class Backbone:
    model: torch.nn.Module    # classifier head sized num_classes (new, random)
    timm_name: str            # timm architecture, e.g. "rexnet_100"
    weight_tag: str | None    # weights the tensors / preprocessing come from, e.g. "rexnet_100.nav_in1k"; None for random init
    pretrained_source: str    # "hub" | "hf-cache" | "file:<path>" | "none"
    data_config: dict         # input_size (3,H,W), interpolation, mean, std, crop_pct: from the weights' pretrained_cfg
    preprocessing_from: str = ""        # whose pretrained_cfg gave data_config, and which values settings overrode
    weights_file: str | None = None     # --weights FILE, absolute
    weights_sha256: str | None = None   # of that file: what the weights really were
    weights_layout: str | None = None   # "timm" (timm's key names) | "imported" (foreign names, mapped on the fly)


def build_backbone(cfg, num_classes: int, keep_head: bool = False) -> Backbone:
    """The model for cfg.model / cfg.width / cfg.weights / cfg.weights_file / cfg.pretrained, with a
    new `num_classes` head. One-line ModelError for unknown names, unpublished widths with
    pretrained, missing network, or a weights file that does not fit.

    `keep_head` (weights files only) keeps the file's classifier when it has `num_classes` outputs:
    ImageNet weights evaluated on ImageNet classes. A file's weight_tag is "file:<sha256 prefix>"
    (the tensors are the file's, not timm's tag's); its preprocessing is still the architecture's
    pretrained_cfg, and cfg.mean / cfg.std override mean and std for any weights."""
    availability = ensure_weights_available(cfg)  # first: may switch the Hub to offline mode
    import timm

    timm_name, _ = resolve_spec(cfg.model, cfg.width, cfg.weights, pretrained=False)
    tag = _weights_tag(cfg)  # also when not loading them: their pretrained_cfg gives the preprocessing
    extra = create_kwargs(cfg.model, cfg.width)
    create_name = tag or timm_name

    if availability in ("cache", "network"):
        if availability == "network":
            log(f"downloading {tag} from the Hugging Face Hub (cached for later runs)")
        try:
            # num_classes != the checkpoint's: timm drops the 1000-class head and loads the rest.
            model = timm.create_model(create_name, pretrained=True, num_classes=num_classes, **extra)
        except Exception as e:  # noqa: BLE001 - only download/cache failures are turned into ModelError
            if not _is_fetch_error(e):
                raise
            raise ModelError(
                f"could not get pretrained weights {tag} ({type(e).__name__}: {_first_line(e)}); "
                f"check the network, or pass --weights FILE, or use --no-pretrained"
            ) from None
        if num_classes == model.pretrained_cfg.get("num_classes"):
            model.reset_classifier(num_classes)  # same size as ImageNet's: timm kept that head; we promise a new one
        source = "hf-cache" if availability == "cache" else "hub"
    else:
        model = timm.create_model(create_name, pretrained=False, num_classes=num_classes, **extra)
        source = "none"
        if availability == "file":
            path = Path(cfg.weights_file).expanduser().resolve()
            loaded = load_weights_file(model, path, keep_head=keep_head)
            source = f"file:{path}"
            file_info = {"weights_file": str(path), "weights_sha256": file_sha256(path),
                         "weights_layout": loaded["layout"]}

    from timm.data import resolve_data_config

    resolved = resolve_data_config(model=model)
    data_config = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in resolved.items() if k in DATA_CONFIG_KEYS}
    preprocessing_from = f"timm pretrained_cfg of {create_name}"
    overridden = [key for key in ("mean", "std") if getattr(cfg, key, None)]
    for key in overridden:
        values = [float(v) for v in getattr(cfg, key)]
        data_config[key] = tuple(values * 3 if len(values) == 1 else values)
    if overridden:
        preprocessing_from += f"; {' and '.join(overridden)} from the settings"
    if source.startswith("file:"):
        weight_tag = f"file:{file_info['weights_sha256'][:12]}"
    else:
        weight_tag, file_info = (tag if source != "none" else None), {}
    return Backbone(model=model, timm_name=timm_name, weight_tag=weight_tag, pretrained_source=source,
                    data_config=data_config, preprocessing_from=preprocessing_from, **file_info)


def _weights_tag(cfg) -> str | None:
    """The weight tag of this request, whether or not it is loaded (None if it has none)."""
    try:
        return resolve_spec(cfg.model, cfg.width, cfg.weights, pretrained=True)[1]
    except ModelError:
        if cfg.pretrained and not cfg.weights_file:
            raise
        return None  # a width or model without published weights: fine for random init or a file


def _is_fetch_error(e: Exception) -> bool:
    """Download and cache failures (huggingface_hub raises OSError subclasses; httpx its own)."""
    if isinstance(e, OSError):
        return True
    try:
        import httpx
    except ImportError:  # pragma: no cover - huggingface_hub >= 1.0 depends on httpx
        return False
    return isinstance(e, httpx.HTTPError)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:200]


# ------------------------------------------------------------------------------------------------
# Local weights files
# ------------------------------------------------------------------------------------------------
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")     # {"state_dict": {...}, "epoch": 90} and alike
WRAPPER_PREFIXES = ("module.", "_orig_mod.")                   # DataParallel/DDP and torch.compile
_FIX = "pass a .safetensors file or a PyTorch state dict saved with torch.save(model.state_dict(), path)"


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sniff(head: bytes) -> str:
    """The file's format from its first bytes: safetensors | zip (torch.save) | pickle (legacy
    torch.save, plain pickle) | empty | unknown."""
    if not head:
        return "empty"
    if len(head) >= 9 and head[8:9] == b"{":  # 8-byte little-endian header length, then a JSON header
        return "safetensors"
    if head[:2] == b"PK":
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return "pickle"
    return "unknown"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a PyTorch file, unwrapped from {"state_dict": ...} /
    {"model": ...} and from DataParallel/compile prefixes.

    PyTorch files are read with weights_only=True: a pickle that would build any other Python
    object (and so could run code) is refused, never executed. Every failure is one ModelError
    line in our own words: neither torch's advice to switch that safety off nor its warnings reach
    the user.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path} is a directory, not a weights file; {_FIX}")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise ModelError(f"cannot read weights file {path}: {e.strerror or e}") from None
    kind = sniff(head)
    if kind in ("empty", "unknown"):
        what = "is empty" if kind == "empty" else (
            "is not a weights file (neither safetensors nor a PyTorch checkpoint"
            + ("; it looks like text)" if _looks_like_text(head) else ")"))
        if kind == "unknown" and path.suffix == ".safetensors":
            what = "is not a valid safetensors file (its header is unreadable: damaged, or not safetensors)"
        raise ModelError(f"weights file {path} {what}; {_FIX}")
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():  # torch warns about pickle protocols, mmap, ...: not the user's business
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise ModelError(f"weights file {path} is too large to load into memory") from None
    except Exception as e:  # noqa: BLE001 - every loader failure is a property of the file
        raise ModelError(f"cannot load weights file {path}: {_load_failure(kind, e)}; {_FIX}") from None
    return unwrap_state_dict(state, path)


def _looks_like_text(head: bytes) -> bool:
    return all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _load_failure(kind: str, e: Exception) -> str:
    """Why a file of this format did not load, said without quoting torch's advice."""
    text = str(e)
    if kind == "safetensors":
        return "the safetensors file is truncated or damaged"
    if "Weights only load failed" in text or isinstance(e, pickle.UnpicklingError):
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found or "global" in text.lower():
            what = f" ({found.group(1)})" if found else ""
            return (f"it holds Python objects other than tensors{what}, which rextransfer refuses to unpickle "
                    f"because unpickling them can run code")
        if kind == "zip":
            return "the PyTorch file is truncated or damaged"
        return "it is not a PyTorch state dict (an unsupported or damaged pickle)"
    if kind == "zip" or isinstance(e, (RuntimeError, EOFError)):
        return "the PyTorch file is truncated or damaged"
    return f"unreadable PyTorch file ({type(e).__name__})"


def unwrap_state_dict(state: Any, path: Path | str) -> dict[str, torch.Tensor]:
    """{name: tensor} from a checkpoint's common wrappers (WRAPPER_KEYS, WRAPPER_PREFIXES)."""
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"weights file {path} holds no state dict (a mapping of parameter names to tensors)")
    for prefix in WRAPPER_PREFIXES:
        if all(str(k).startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return {str(k): v for k, v in state.items()}


def load_weights_file(model: torch.nn.Module, path: Path, keep_head: bool = False) -> dict:
    """Load every backbone tensor of `model` from a weights file; keep the new head.

    A file in timm's key format must match exactly (its own classifier, of any size or none, is
    ignored): a missing or extra key or a different shape is a one-line ModelError, since a
    partial load would silently fine-tune a half-random network. A file with foreign key names
    (most of its keys are not the model's) is imported on the fly by models/importer.py, whose
    order-and-shape rule is as strict. `keep_head` also loads the file's classifier when it has
    the model's size (evaluating ImageNet weights on ImageNet classes).

    Returns what was loaded: {"layout": "timm" | "imported", "sha256", "mapping" (imported only)}.
    """
    state = read_state_dict(path)
    head = head_parameter_names(model)
    expected = model.state_dict()
    info: dict = {"layout": "timm"}
    if sum(k in expected for k in state) * 2 < len(state):
        from .importer import map_onto, require_saved_order

        require_saved_order(path)
        imported = map_onto(state, model, origin=str(path))
        log(f"{path}: foreign key names, imported onto {imported.arch} by order and shape "
            f"({len(imported.mapping)} tensors{'; ' + imported.head_note if imported.head_note else ''})")
        state = imported.state
        info = {"layout": "imported", "mapping": imported.mapping}
    keep = {k for k in head if keep_head and k in state and state[k].shape == expected[k].shape}
    backbone = {k: v for k, v in state.items() if k not in head or k in keep}
    expected = {k: v for k, v in expected.items() if k not in head or k in keep}
    # BN step counters are bookkeeping, not weights; exporters often drop them.
    missing = [k for k in expected if k not in backbone and not k.endswith("num_batches_tracked")]
    extra = [k for k in backbone if k not in expected]
    shapes = [k for k in expected if k in backbone and backbone[k].shape != expected[k].shape]
    if missing or extra or shapes:
        if shapes:
            k = shapes[0]
            example = f"{k} is {tuple(backbone[k].shape)} in the file but {tuple(expected[k].shape)} in the model"
        elif missing:
            example = f"{missing[0]} is missing from the file"
        else:
            example = f"{extra[0]} is not in the model"
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise ModelError(
            f"weights file {path} does not fit {arch}: {len(missing) + len(extra) + len(shapes)} of "
            f"{len(expected)} backbone keys mismatch (e.g. {example}); pass a checkpoint of the same "
            f"model and width, in timm's key format"
        )
    model.load_state_dict(backbone, strict=False)
    info["head_loaded"] = bool(keep)
    return info


def head_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of the classifier's parameters (timm's get_classifier), e.g. {"head.fc.weight", "head.fc.bias"}."""
    heads = model.get_classifier()
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    ids = {id(p) for h in heads for p in h.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def zero_head(model: torch.nn.Module) -> None:
    """Zero the new classifier (BiT's choice): the first steps then start from uniform predictions
    instead of large random logits, which a random 1280-d head gives and which destabilise training."""
    heads = model.get_classifier()
    with torch.no_grad():
        for head in heads if isinstance(heads, (tuple, list)) else (heads,):
            for p in head.parameters():
                p.zero_()


# ------------------------------------------------------------------------------------------------
# Costs
# ------------------------------------------------------------------------------------------------
def _per_input_element(input_shape, *args, **kwargs) -> int:
    """2 FLOPs (one multiply-add) per input element."""
    n = 1
    for d in input_shape:
        n *= d
    return 2 * n


def _cost_formulas() -> dict:
    """FlopCounterMode counts convolutions and matmuls. Add one multiply-add per element for batch
    norm at inference (a scale and a shift) and for average pooling (a sum): with these, the counts
    match timm's published GMACs within 2% for every built-in backbone (EfficientNet-B0 is 3.5%
    under without them). Activations and residual additions are not counted, as in those tables."""
    aten = torch.ops.aten
    names = ("_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm",
             "cudnn_batch_norm", "miopen_batch_norm", "_batch_norm_no_update", "_batch_norm_with_update",
             "mean", "_adaptive_avg_pool2d", "adaptive_avg_pool2d")
    formulas = {}
    for name in names:
        try:
            formulas[getattr(aten, name)] = _per_input_element
        except (AttributeError, RuntimeError):  # op absent in this torch version
            continue
    return formulas


def model_costs(model: torch.nn.Module, img_size: int) -> dict:
    """{"params_m", "gmacs"} of one forward pass at img_size x img_size, batch 1, counted by
    torch.utils.flop_counter (FLOPs / 2). Works on a meta-device model (no memory, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    first = next(model.parameters())
    x = torch.zeros(1, 3, img_size, img_size, device=first.device, dtype=first.dtype)
    was_training = model.training
    model.eval()  # inference costs; BN in train mode is a different op
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_cost_formulas()) as counter:
            model(x)
    finally:
        model.train(was_training)
    return {"params_m": params / 1e6, "gmacs": counter.get_total_flops() / 2e9}


def costs_of(model_name: str, width: float = 1.0, img_size: int = 224, num_classes: int = 1000) -> dict:
    """model_costs of an architecture built on the meta device: instant, allocates nothing."""
    import timm

    timm_name, _ = resolve_spec(model_name, width, pretrained=False)
    extra = create_kwargs(model_name, width)
    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **extra)
    return model_costs(model, img_size)
