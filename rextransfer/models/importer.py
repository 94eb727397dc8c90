"""Import a checkpoint from another repository onto timm's parameter names (same architecture).

Checkpoints of one network published by different code bases (the official clovaai/rexnet
`rexnetv1_*.pth`, torchvision files, ports such as lukemelas' EfficientNet-PyTorch or tonylins'
MobileNetV2) hold the same tensors under other names. The rule used here is generic and checked
tensor by tensor, so a wrong mapping is refused instead of fine-tuning a scrambled network:

  * order and shape: the file's tensors, in the order they were saved (a state dict keeps the
    order in which the modules were registered), pair one to one with timm's state dict; every
    pair must have the same shape and the same role (the last name part: weight, bias,
    running_mean, running_var; TF-style gamma/beta/moving_mean/moving_variance read as those);
  * every tensor of the file is used exactly once and every tensor of the model is filled, except:
  * BN step counters (num_batches_tracked) are bookkeeping: they are left out of the pairing and
    follow their BN layer (taken from the file when it has them, else 0);
  * the classifier: a file without one (a backbone), or with one of another size (fine-tuned on
    other classes), maps onto timm's backbone and the head is left out — the only explicit rule.

The first pair that breaks the rule is named in a one-line ModelError. A successful import
records the source file's sha256 and the whole (file key -> timm key) mapping (`provenance`).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..core.errors import ModelError
from .build import file_sha256, head_parameter_names, read_state_dict, sniff
from .registry import create_kwargs, resolve_spec

BOOKKEEPING = "num_batches_tracked"
ROLE_ALIASES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                "moving_variance": "running_var"}
RULE = "order-and-shape"


@dataclass
class Imported:
    """A foreign state dict mapped onto a timm architecture."""

    arch: str                          # timm architecture, e.g. "mobilenetv2_100"
    state: dict[str, torch.Tensor]     # timm key -> tensor, in timm's order
    mapping: list[tuple[str, str]]     # (file key, timm key) for every tensor used, in order
    head: str                          # "included" | "none" (backbone only) | "dropped"
    head_note: str = ""                # why the head is absent/dropped, for the log and the record
    unused: list[str] = field(default_factory=list)  # file keys not used (BN counters of unmatched layers only)
    source: str = ""
    source_sha256: str = ""

    @property
    def num_classes(self) -> int:
        """Classes of the imported classifier (0: backbone only)."""
        return self.state[self._head_keys[0]].shape[0] if self.head == "included" and self._head_keys else 0

    _head_keys: list[str] = field(default_factory=list, repr=False)


def role(key: str) -> str:
    last = key.rsplit(".", 1)[-1]
    return ROLE_ALIASES.get(last, last)


def _prefix(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def _first_mismatch(src: list[tuple[str, torch.Size]], dst: list[tuple[str, torch.Size]],
                    skip: set[int] = frozenset()) -> tuple[int, str] | None:
    """(index, reason) of the first pair that breaks order-and-shape, or None if all pairs fit.
    Indices in `skip` are allowed to differ in shape (a classifier of another size)."""
    for i, ((sk, ss), (dk, ds)) in enumerate(zip(src, dst)):
        if role(sk) != role(dk):
            return i, f"a {role(sk)} meets a {role(dk)}"
        if tuple(ss) != tuple(ds) and i not in skip:
            return i, "different shapes"
    if len(src) != len(dst):
        return min(len(src), len(dst)), "count"
    return None


def map_onto(source: dict[str, torch.Tensor], model: torch.nn.Module, origin: str = "the file") -> Imported:
    """Map `source` (foreign key names) onto `model`'s state dict by order and shape (module doc).

    `model` may live on the meta device: only its keys, shapes and dtypes are read.
    """
    arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    target = model.state_dict()
    head = head_parameter_names(model)
    src = [(k, v.shape) for k, v in source.items() if role(k) != BOOKKEEPING]
    full = [(k, v.shape) for k, v in target.items() if role(k) != BOOKKEEPING]
    body = [(k, s) for k, s in full if k not in head]
    head_at = {i for i, (k, _) in enumerate(full) if k in head}

    # Candidate pairings: the whole model; its backbone (a file without classifier); the whole
    # model with the classifier's shape free (a classifier of another size, then left out).
    tries = [("included", full, set()), ("none", body, set()), ("dropped", full, head_at)]
    results = [(name, dst, skip, _first_mismatch(src, dst, skip)) for name, dst, skip in tries]
    fitting = [(name, dst, skip) for name, dst, skip, bad in results if bad is None]
    if not fitting:
        # Report the pairing that got furthest before breaking (ties: the whole model).
        name, dst, skip, (i, reason) = max(results, key=lambda r: r[3][0])
        raise ModelError(_mismatch_message(origin, arch, src, dst, i, reason, len(full), len(body)))
    kind, dst, skip = fitting[0]
    pairs = [(sk, dk) for i, ((sk, _), (dk, _)) in enumerate(zip(src, dst)) if i not in skip]

    state: dict[str, torch.Tensor] = {}
    for sk, dk in pairs:
        state[dk] = _as(source[sk], target[dk])
    mapping = list(pairs)
    # BN step counters follow their layer: prefix of the file's layer -> prefix of timm's layer.
    layer_of = {_prefix(dk): _prefix(sk) for sk, dk in pairs if role(dk) == "running_mean"}
    used_counters = set()
    for dk, value in target.items():
        if role(dk) != BOOKKEEPING or (kind != "included" and dk in head):
            continue
        sk = f"{layer_of[_prefix(dk)]}.{BOOKKEEPING}" if _prefix(dk) in layer_of else None
        if sk is not None and sk in source and source[sk].numel() == 1:
            state[dk] = source[sk].detach().reshape(value.shape).to(torch.long).clone()
            used_counters.add(sk)
            mapping.append((sk, dk))
        else:
            state[dk] = torch.zeros(value.shape, dtype=torch.long)
    state = {k: state[k] for k in target if k in state}  # timm's order
    unused = [k for k in source if role(k) == BOOKKEEPING and k not in used_counters]

    head_keys = [k for k, _ in full if k in head]
    note = ""
    if kind == "none":
        note = "the file has no classifier: backbone only"
    elif kind == "dropped":
        i = min(head_at)
        note = (f"the file's classifier {src[i][0]} {tuple(src[i][1])} is not {arch}'s {tuple(full[i][1])}: "
                f"left out (fine-tuning adds a new head)")
    return Imported(arch=arch, state=state, mapping=mapping, head=kind, head_note=note, unused=unused,
                    source=origin, _head_keys=head_keys if kind == "included" else [])


def _as(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The file's tensor in the model's dtype (a float16 export becomes float32), detached, on CPU."""
    out = value.detach().to("cpu")
    if out.is_floating_point() and like.is_floating_point() and out.dtype != like.dtype:
        out = out.to(like.dtype)
    return out.contiguous()


def _mismatch_message(origin: str, arch: str, src: list, dst: list, i: int, reason: str,
                      n_full: int, n_body: int) -> str:
    counts = (f"the file has {len(src)} tensors (not counting BN step counters), {arch} has {n_full} "
              f"({n_body} without its classifier)")
    if reason == "count":
        if i == len(src):
            where = f"the file ends after tensor #{i}, where {arch} continues with {dst[i][0]} {tuple(dst[i][1])}"
        else:
            where = f"the file goes on after {arch}'s last tensor, with {src[i][0]} {tuple(src[i][1])}"
    else:
        where = (f"tensor #{i + 1} of the file, {src[i][0]} {tuple(src[i][1])}, meets {arch}'s {dst[i][0]} "
                 f"{tuple(dst[i][1])} ({reason})")
    return (f"{origin} does not map onto {arch} by order and shape: {where}; {counts}. "
            f"Is it a checkpoint of {arch}? (--model names the architecture)")


# ------------------------------------------------------------------------------------------------
# Files: read a foreign checkpoint, write timm-layout safetensors and a provenance record
# ------------------------------------------------------------------------------------------------
def require_saved_order(path: Path) -> None:
    """Order-and-shape needs the order the tensors were saved in. A PyTorch file keeps it (a pickled
    OrderedDict); safetensors does not (its header lists tensors sorted by name), so a foreign
    .safetensors file cannot be verified and is refused."""
    with open(path, "rb") as f:
        head = f.read(16)
    if sniff(head) == "safetensors":
        raise ModelError(
            f"{path} is safetensors with foreign key names: safetensors keeps tensors sorted by name, not in "
            f"the order the model saved them, so an order-and-shape mapping cannot be verified; import the "
            f"original PyTorch checkpoint (.pth/.pt) instead")


def import_checkpoint(path: Path, model: str, width: float = 1.0) -> Imported:
    """Read `path` (weights_only) and map it onto timm's `model` (a registry or timm name)."""
    import timm

    path = Path(path).expanduser()
    state = read_state_dict(path)
    require_saved_order(path)
    arch, _ = resolve_spec(model, width, pretrained=False)
    with torch.device("meta"):  # keys, shapes and dtypes only: no memory, no init
        reference = timm.create_model(arch, pretrained=False, **create_kwargs(model, width))
    imported = map_onto(state, reference, origin=str(path))
    imported.source = str(path.resolve())
    imported.source_sha256 = file_sha256(path)
    return imported


def default_output(source: Path, arch: str) -> Path:
    """<folder of source>/<stem>.<arch>.safetensors"""
    source = Path(source)
    return source.with_name(f"{source.stem}.{arch}.safetensors")


def provenance_path(out: Path) -> Path:
    """The record beside the weights: x.safetensors -> x.provenance.json"""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".provenance.json")


def provenance(imported: Imported, out: Path, out_sha256: str) -> dict:
    import timm

    from .. import __version__

    return {
        "what": f"{imported.arch} weights imported from a foreign checkpoint by rextransfer",
        "source": imported.source, "source_sha256": imported.source_sha256,
        "output": str(Path(out).resolve()), "output_sha256": out_sha256,
        "architecture": imported.arch, "rule": RULE,
        "rule_text": "file tensors in saved order paired 1:1 with timm's state dict; same shape and role per "
                     "pair; each tensor used once; BN step counters follow their layer",
        "head": imported.head, "head_note": imported.head_note, "num_classes": imported.num_classes,
        "tensors": len(imported.state), "unused_source_keys": imported.unused,
        "mapping": [{"source": s, "timm": t} for s, t in imported.mapping],
        "rextransfer": __version__, "torch": torch.__version__, "timm": timm.__version__,
        "python": platform.python_version(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_import(imported: Imported, out: Path) -> tuple[Path, Path, dict]:
    """Write timm-layout safetensors (with the source's sha256 in its metadata) and the
    provenance record beside it, each atomically; returns (weights, record path, record)."""
    from safetensors.torch import save_file

    from ..core.files import write_json, write_with

    out = Path(out).expanduser()
    if out.is_dir():
        raise ModelError(f"--out {out} is a directory; give a file name ending in .safetensors")
    if out.suffix != ".safetensors":
        raise ModelError(f"--out {out} must end in .safetensors (the imported weights are written as safetensors)")
    if imported.source and out.resolve() == Path(imported.source).resolve():
        raise ModelError(f"--out {out} is the source file; choose another name")
    metadata = {"format": "pt", "architecture": imported.arch, "imported_by": "rextransfer weights import",
                "rule": RULE, "source_sha256": imported.source_sha256, "head": imported.head}
    tensors = {k: v.contiguous() for k, v in imported.state.items()}
    try:
        write_with(out, lambda p: save_file(tensors, str(p), metadata=metadata))
    except OSError as e:
        raise ModelError(f"cannot write {out}: {e.strerror or e}") from None
    record = provenance(imported, out, file_sha256(out))
    record_path = provenance_path(out)
    write_json(record_path, record)
    return out, record_path, record
