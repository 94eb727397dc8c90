"""Which backbone and which weights: the registry, its published figures, and the offline pre-check.

This module imports no heavy library at module level (no torch, no timm, no huggingface_hub), so
`ensure_weights_available` can run before any of them is imported. That ordering matters:
`huggingface_hub` reads HF_HUB_OFFLINE once, when it is imported; without it, an offline machine
makes timm retry the Hub for ~25 s before failing with a long traceback.

Published figures (ImageNet-1k top-1 at the weights' own eval preprocessing, parameters at 1000
classes, GMACs at 224 px) are from timm's model cards on the Hugging Face Hub (timm/<tag>) and
timm's results-imagenet.csv. `rextransfer models --computed` and tests/test_models.py recompute params and
GMACs from the architectures and check them against these numbers.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ModelError
from ..core.reach import endpoint, go_offline, hub_offline, hub_url, reachable


@dataclass(frozen=True)
class Weight:
    """One set of published ImageNet weights of a built-in backbone."""

    model: str        # CLI name: rexnet | resnet50 | efficientnet_b0
    width: float      # ReXNet width multiplier (1.0 for the others)
    tag: str          # timm "arch.tag", pinned so results do not change when timm's default does
    top1: float       # ImageNet-1k top-1, %
    params_m: float   # parameters, millions, with the 1000-class head
    gmacs: float      # multiply-adds at 224x224, billions
    weight_decay: float  # the decay these weights were pretrained with: fine-tuning keeps it (see finetune_defaults)
    default: bool = True  # the tag used when the `weights` setting is empty

    @property
    def timm_name(self) -> str:
        return self.tag.split(".", 1)[0]

    @property
    def cli(self) -> str:
        if self.model == "rexnet":
            return f"rexnet -w {self.width:.1f}"
        # the weight tag is the `weights` setting (`--weights` on the command line takes a file)
        return self.model if self.default else f"{self.model} --set weights={self.tag.split('.', 1)[1]}"


# Weight decay of the pretraining recipes: ReXNet 1e-5 (clovaai/rexnet README: --weight-decay 1e-5);
# torchvision ResNet50 1e-4 (torchvision's ImageNet reference recipe); timm efficientnet_b0.ra_in1k
# 1e-5 (its RandAugment recipe); resnet50.a1_in1k was trained with LAMB at decoupled wd 0.01 (timm
# "ResNet strikes back"), which as SGD's L2 term we keep at torchvision's 1e-4.
WEIGHTS: tuple[Weight, ...] = (
    Weight("rexnet", 1.0, "rexnet_100.nav_in1k", 77.86, 4.80, 0.40, 1e-5),
    Weight("rexnet", 1.3, "rexnet_130.nav_in1k", 79.49, 7.56, 0.68, 1e-5),
    Weight("rexnet", 1.5, "rexnet_150.nav_in1k", 80.32, 9.73, 0.90, 1e-5),
    Weight("rexnet", 2.0, "rexnet_200.nav_in1k", 81.64, 16.37, 1.56, 1e-5),
    Weight("rexnet", 3.0, "rexnet_300.nav_in1k", 82.78, 34.71, 3.44, 1e-5),
    # torchvision's original weights: the ResNet50 of the paper's era (and of Kornblith et al.).
    Weight("resnet50", 1.0, "resnet50.tv_in1k", 76.13, 25.56, 4.11, 1e-4),
    # timm's own default since 2021: stronger recipe, different eval crop (0.95).
    Weight("resnet50", 1.0, "resnet50.a1_in1k", 80.38, 25.56, 4.11, 1e-4, default=False),
    Weight("efficientnet_b0", 1.0, "efficientnet_b0.ra_in1k", 77.70, 5.29, 0.40, 1e-5),
)
# Any other timm model: ReXNet's value, the decay of most mobile-network ImageNet recipes.
FALLBACK_WEIGHT_DECAY = 1e-5

BUILTIN = ("rexnet", "resnet50", "efficientnet_b0")
REXNET_WIDTHS = tuple(w.width for w in WEIGHTS if w.model == "rexnet")
# Any other ReXNet width is this architecture with timm's `width_mult` argument (random init only).
REXNET_ANY_WIDTH = "rexnet_100"


def _same_width(a: float, b: float) -> bool:
    return abs(a - b) < 1e-6


def published(model: str, width: float = 1.0, tag: str | None = None) -> Weight | None:
    """The registry entry for a built-in backbone (its default weights unless `tag` is given)."""
    for w in WEIGHTS:
        if w.model == model and _same_width(w.width, width) and (w.tag == tag if tag else w.default):
            return w
    return None


def finetune_defaults(model: str) -> dict:
    """Settings a backbone brings to every recipe (below the recipe's own settings): its pinned
    weight tag and the weight decay those ImageNet weights were trained with. Each backbone keeps
    its own decay, so one recipe serves all three (a depthwise/SE net is over-regularised by
    ResNet's 1e-4)."""
    arch, _, tag = model.strip().lower().partition(".")
    entry = next((w for w in WEIGHTS if w.default and (w.model == arch or w.timm_name == arch)), None)
    if entry is None:
        return {"weight_decay": FALLBACK_WEIGHT_DECAY}
    defaults: dict = {"weight_decay": entry.weight_decay}
    if not tag:  # the pinned tag, recorded in the run's config ("arch.tag" names keep their own)
        defaults["weights"] = entry.tag.split(".", 1)[1]
    return defaults


def create_kwargs(model: str, width: float) -> dict:
    """Extra timm.create_model arguments: a ReXNet width without published weights is rexnet_100
    built with `width_mult` (any width builds; only published widths have weights)."""
    if model.strip().lower() == "rexnet" and published("rexnet", width) is None:
        return {"width_mult": width}
    return {}


def _widths_text() -> str:
    return ", ".join(f"{w:.1f}" for w in REXNET_WIDTHS)


# ------------------------------------------------------------------------------------------------
# Resolving a (model, width, weights) request to a timm architecture and weight tag
# ------------------------------------------------------------------------------------------------
def resolve_spec(model: str, width: float, weights: str = "", pretrained: bool = True) -> tuple[str, str | None]:
    """(timm architecture, weight tag or None) for a request; one-line ModelError if impossible.

    `weights` overrides the tag: "a1_in1k" or the full "resnet50.a1_in1k". For a ReXNet width
    without published weights the architecture is `rexnet_100`, built with `width_mult=width`.
    Imports timm only for names and tags outside the built-in table.
    """
    spec = _resolve(model, width, weights, pretrained, timm_ok=True)
    assert spec is not None
    return spec


def _resolve(model: str, width: float, weights: str, pretrained: bool, timm_ok: bool) -> tuple[str, str | None] | None:
    """resolve_spec; with timm_ok=False returns None where answering would need timm."""
    name = model.strip().lower()
    if name == "rexnet":
        if not (math.isfinite(width) and width > 0):  # timm would build 0-channel layers (or divide by zero)
            raise ModelError(f"ReXNet width must be a positive number, e.g. 1.0; got {width:g}")
        entry = published("rexnet", width)
        if entry is None:
            if pretrained:
                raise ModelError(
                    f"ReXNet width {width:g} has no pretrained weights (widths with weights: {_widths_text()}); "
                    f"pick one of those, or add --no-pretrained to train width {width:g} from scratch"
                )
            return REXNET_ANY_WIDTH, None
        arch = entry.timm_name
    else:
        # built-in resnet50 / efficientnet_b0, or any timm name, optionally "arch.tag"
        arch, _, tag_in_name = name.partition(".")
        arch = arch.replace("-", "_")  # timm names never contain "-": forgive "efficientnet-b0"
        if not _same_width(width, 1.0):
            what = "comes in one width" if name in BUILTIN else "picks its size by name"
            raise ModelError(f"--width applies to rexnet only; {arch} {what} (drop --width {width:g})")
        weights = weights or tag_in_name
        if name not in BUILTIN:
            if not timm_ok and not any(w.timm_name == arch for w in WEIGHTS):
                return None  # only timm knows this name and its default weights
            if timm_ok:
                _check_timm_name(arch)
    if not pretrained:
        return arch, None

    tag = weights.strip()
    if "." in tag:
        given_arch, tag = tag.split(".", 1)
        if given_arch != arch:
            raise ModelError(f"weights {weights!r} are for {given_arch}, not {arch}; pass a weight tag of {arch}")
    if not tag:
        entry = next((w for w in WEIGHTS if w.timm_name == arch and w.default), None)
        if entry is not None:
            return arch, entry.tag
        return (arch, _default_tag(arch)) if timm_ok else None
    full = f"{arch}.{tag}"
    if not any(w.tag == full for w in WEIGHTS):
        if not timm_ok:
            return None
        _check_timm_tag(arch, full)
    return arch, full


def _check_timm_name(arch: str) -> None:
    import difflib

    import timm

    if timm.is_model(arch):
        return
    names = list(dict.fromkeys([*BUILTIN, *timm.list_models()]))
    near = difflib.get_close_matches(arch, names, n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    raise ModelError(
        f"unknown model {arch!r}: {hint}(built-in: {', '.join(BUILTIN)}; any timm model name works, "
        f"see timm.list_models())"
    )


def _default_tag(arch: str) -> str:
    from timm.models import get_pretrained_cfg, is_model_pretrained

    cfg = get_pretrained_cfg(arch) if is_model_pretrained(arch) else None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ModelError(f"timm has no pretrained weights for {arch}; use --no-pretrained, or --weights FILE")
    return f"{arch}.{cfg.tag}" if cfg.tag else arch


def _check_timm_tag(arch: str, full: str) -> None:
    from timm.models import get_arch_pretrained_cfgs

    tags = [t.split(".", 1)[1] for t in get_arch_pretrained_cfgs(arch)]
    if full.split(".", 1)[1] not in tags:
        listed = ", ".join(tags[:8]) + (" ..." if len(tags) > 8 else "")
        raise ModelError(f"{arch} has no weights tagged {full.split('.', 1)[1]!r}; available: {listed or 'none'}")


# ------------------------------------------------------------------------------------------------
# Where weights come from: local file, Hugging Face cache, network
# ------------------------------------------------------------------------------------------------
def hf_cache_dir() -> Path:
    """The Hub cache directory, resolved the way huggingface_hub does (without importing it)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(os.path.expanduser(explicit)))
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def cached_weight_file(repo_id: str, filenames: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")) -> Path | None:
    """A complete cached copy of a Hub file, or None. Snapshot entries are links to finished blobs
    (partial downloads stay `blobs/*.incomplete`), so an existing snapshot file is a usable one."""
    repo_dir = hf_cache_dir() / ("models--" + repo_id.split("@")[0].replace("/", "--"))
    for name in filenames:
        for path in sorted(repo_dir.glob(f"snapshots/*/{name}")):
            if path.exists():
                return path
    return None


def network_reachable(timeout: float = 2.0) -> bool:
    """Does the Hub endpoint (or the HTTPS proxy in front of it) answer within `timeout`?"""
    return reachable(hub_url(), timeout)


def _hub_file(tag: str) -> tuple[str, tuple[str, ...]]:
    """(Hub repo id, candidate file names) for a weight tag; timm's own weights live in timm/<tag>."""
    entry = next((w for w in WEIGHTS if w.tag == tag), None)
    if entry is not None or "timm" not in sys.modules:
        return f"timm/{tag}", ("model.safetensors", "pytorch_model.bin")
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(tag)
    repo = (cfg.hf_hub_id if cfg and cfg.hf_hub_id else f"timm/{tag}")
    if cfg is not None and cfg.hf_hub_filename:
        name = cfg.hf_hub_filename
        return repo, ((name[:-4] + ".safetensors", name) if name.endswith(".bin") else (name,))
    return repo, ("model.safetensors", "pytorch_model.bin")


def ensure_weights_available(cfg) -> str:
    """Fast pre-check (< 5 s) that the requested weights can be had; call before importing timm.

    Returns "none" (random init), "file" (--weights FILE), "cache" (in the local Hugging Face
    cache) or "network" (will be downloaded). When the weights are cached but the Hub is not
    reachable, switches the Hub libraries to offline mode so they load from the cache at once
    instead of retrying. Otherwise a missing network is a one-line ModelError saying how to fix it.
    """
    if not cfg.pretrained:
        if cfg.weights_file:
            raise ModelError("--weights FILE loads pretrained weights and --no-pretrained asks for none: drop one of them")
        return "none"
    if cfg.weights_file:
        path = Path(cfg.weights_file).expanduser()
        if path.is_dir():
            raise ModelError(f"--weights {path} is a directory, not a weights file; pass the .safetensors or .pt/.pth file itself")
        if not path.is_file():
            raise ModelError(f"weights file not found: {path} (pass a .safetensors file or a PyTorch state dict)")
        return "file"

    user_offline = hub_offline()
    unreachable: bool | None = None  # probed at most once, only when it matters
    spec = _resolve(cfg.model, cfg.width, cfg.weights, True, timm_ok="timm" in sys.modules)
    if spec is None:
        # A name or tag only timm knows. Decide about the network first, so that huggingface_hub
        # (imported by timm) starts in the right mode.
        if not user_offline:
            unreachable = not network_reachable()
            if not unreachable:
                return "network"
        go_offline()
        spec = resolve_spec(cfg.model, cfg.width, cfg.weights, True)
    tag = spec[1]
    assert tag is not None
    repo, names = _hub_file(tag)
    if cached_weight_file(repo, names) is not None:
        if not user_offline and (unreachable if unreachable is not None else not network_reachable()):
            go_offline()
        return "cache"
    fixes = (
        f"pass --weights FILE (a .safetensors or state dict of {spec[0]}); or warm the cache on a connected "
        f"machine (`hf download {repo}`) and copy it to {hf_cache_dir()} (HF_HUB_OFFLINE=1 runs then use it); "
        f"or use --no-pretrained to start from random init"
    )
    where = f"pretrained weights {tag} are not in the Hugging Face cache ({hf_cache_dir()})"
    if user_offline:
        raise ModelError(f"{where} and HF_HUB_OFFLINE=1 forbids downloading: unset HF_HUB_OFFLINE on a connected machine; or {fixes}")
    if unreachable if unreachable is not None else not network_reachable():
        host, port, _ = endpoint(hub_url())
        raise ModelError(f"{where} and {host}:{port} is unreachable: connect to the internet and rerun; or {fixes}")
    return "network"
