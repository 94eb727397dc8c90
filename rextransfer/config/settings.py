"""One resolved, typed run configuration, and how it is assembled.

Precedence (later wins): built-in defaults < recipe (recipes/*.yaml) < --config FILE
< explicit CLI flags < --set key=value. Every key is a field of `Config`; unknown keys and values
of the wrong type are one-line errors (exit 2). The resolved config is written to the run folder.

Units are in the field comments: lr is absolute at the configured batch size, schedules count
optimizer steps, sizes are pixels, batch_size is the *global* batch per optimizer step.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import UsageError



@dataclass
class Config:
    # --- what to train -----------------------------------------------------------------------
    dataset: str = "demo"             # registry name/alias (food101, cars, ...) or a folder path
    recipe: str = "default"           # recipe name the run started from (recorded, not a knob)
    data_root: str = ""               # where built-in datasets live; "" = $REXTRANSFER_DATA or ~/.cache/rextransfer/data
    source: str = "auto"              # original | hub | auto (original if present on disk, else hub)
    val_split: float = 0.0            # 0 = standard protocol (eval on test); >0 = stratified share of train held out for selection
    val_fraction: float = 0.2         # folder datasets without val/ or test/: stratified share for eval
    aircraft_banner: bool = True      # crop the 20 px copyright banner of FGVC Aircraft (its README says to)
    cars_bbox: bool = False           # crop Stanford Cars images to their bounding box
    bad_files: str = "skip"           # skip | fail: what the pre-flight scan does with unreadable images
    model: str = "rexnet"             # registry name (rexnet, resnet50, efficientnet_b0) or any timm name
    width: float = 1.0                # ReXNet width multiplier (1.0, 1.3, 1.5, 2.0, 3.0 have weights)
    weights: str = ""                 # weight tag override, e.g. "a1_in1k" for resnet50; "" = registry default
    weights_file: str = ""            # local checkpoint (safetensors or state dict) instead of a download
    pretrained: bool = True           # ImageNet weights (False = random init)
    # --- input -------------------------------------------------------------------------------
    img_size: int = 224               # train/eval crop, px
    crop_pct: float = 0.0             # eval center-crop fraction; 0 = from the weights' pretrained_cfg
    mean: list[float] = field(default_factory=list)  # input normalisation mean (1 or 3 values, 0-1 scale); [] = the weights' pretrained_cfg
    std: list[float] = field(default_factory=list)   # input normalisation std (1 or 3 values, > 0); [] = the weights' pretrained_cfg
    rrc_scale_min: float = 0.08       # RandomResizedCrop lower area bound (Inception/Kornblith default)
    hflip: bool = True                # random horizontal flip
    cache: bool = True                # decode-once pixel cache + augmentation on the device (see data/cache.py)
    workers: int = -1                 # DataLoader workers; -1 = min(8, cpu count)
    # --- optimisation ------------------------------------------------------------------------
    epochs: int = 10                  # training length in epochs (ignored when steps > 0)
    steps: int = 0                    # training length in optimizer steps; >0 overrides epochs
    batch_size: int = 64              # global images per optimizer step (all devices x accumulation)
    grad_accum: int = 1               # micro-batches per optimizer step
    optimizer: str = "sgd"            # sgd (Nesterov) | adamw
    lr: float = 0.01                  # peak learning rate at batch_size (absolute, not per-256); "auto" = an lr-find sweep picks it first
    momentum: float = 0.9             # SGD momentum / AdamW beta1
    nesterov: bool = True             # Nesterov momentum for SGD (Kornblith et al. 2019)
    weight_decay: float = 0.0         # decoupled for AdamW, L2 for SGD; no decay on norms and biases
    schedule: str = "cosine"          # cosine | step
    warmup_steps: int = 0             # linear warmup from 0, optimizer steps
    step_milestones: list[float] = field(default_factory=lambda: [0.4, 0.6, 0.8])  # fractions of training, schedule=step
    step_gamma: float = 0.1           # lr factor at each milestone, schedule=step
    label_smoothing: float = 0.0      # cross-entropy smoothing
    mixup: float = 0.0                # mixup alpha (0 = off), timm Mixup
    cutmix: float = 0.0               # cutmix alpha (0 = off), timm Mixup
    mix_prob: float = 1.0             # probability a batch is mixed when mixup/cutmix > 0
    ema: bool = False                 # keep an EMA of the weights and evaluate it
    ema_decay: float = 0.999          # per optimizer step
    head_init: str = "zero"           # zero (BiT: no random logits at step 0) | random (timm's init) | ncm (the classes' mean frozen features: step 0 = nearest class mean, train/head.py)
    head_lr_mult: float = 1.0         # lr multiplier of the new classifier head
    layer_decay: float = 0.0          # layer-wise lr decay (0 = off); timm param groups
    probe_epochs: int = 0             # head-only (linear probe) epochs before unfreezing
    bn_momentum: str = "default"      # default | auto (Kornblith: max(1-10/steps_per_epoch, 0.9)) | a number in [0, 1); 0 = running stats kept
    clip_grad: float = 0.0            # max grad norm (0 = off)
    early_stop: int = 0               # stop after this many evals without headline improvement (0 = off)
    # --- run mechanics -----------------------------------------------------------------------
    eval_every: int = 1               # evaluate every N epochs (and always at the end)
    amp: str = "auto"                 # auto (bf16 on CUDA) | bf16 | off
    channels_last: str = "auto"       # auto (on CUDA) | on | off
    compile: bool = False             # torch.compile the model
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    seed: int = 0                     # seeds data order, augmentation, head init
    runs_dir: str = "runs"            # parent of run folders
    log_every: int = 10               # progress-bar refresh and experiment-logger scalars, optimizer steps
    loggers: str = "auto"             # experiment loggers: auto (tensorboard if installed) | none | a comma list of tensorboard, mlflow, wandb

    # ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Every setting in its documented range, as one-line UsageErrors; returns self."""
        choices = {
            "source": ("original", "hub", "auto"),
            "bad_files": ("skip", "fail"),
            "optimizer": ("sgd", "adamw"),
            "schedule": ("cosine", "step"),
            "head_init": ("zero", "random", "ncm"),
            "amp": ("auto", "bf16", "off"),
            "channels_last": ("auto", "on", "off"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UsageError(f"{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        for key, kind in FIELD_TYPES.items():  # NaN and inf pass every comparison below: refuse them first
            if key == "lr" and self.lr == "auto":
                continue  # an lr-find sweep picks it before training (train/lr_find.py)
            values = getattr(self, key) if typing.get_origin(kind) is list else [getattr(self, key)]
            if kind is float or typing.get_origin(kind) is list:
                if not all(math.isfinite(v) for v in values):
                    raise UsageError(f"{key} must be a finite number; got {getattr(self, key)}")
        for key, rule in RANGES.items():
            if key == "lr" and self.lr == "auto":
                continue
            values = getattr(self, key) if isinstance(getattr(self, key), list) else [getattr(self, key)]
            for value in values:
                if not rule.holds(value):
                    raise UsageError(f"{key} must be {rule}; got {getattr(self, key)}")
        if self.epochs == 0 and self.steps == 0:
            raise UsageError("set a training length: epochs > 0 or steps > 0")
        names = [n.strip() for n in self.loggers.split(",") if n.strip()]
        if names not in (["auto"], ["none"]) and not (names and set(names) <= set(LOGGERS)):
            raise UsageError(f"loggers must be auto, none or a comma list of {', '.join(LOGGERS)}; got {self.loggers!r}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values and (len(values) not in (1, 3) or (key == "std" and min(values) <= 0)):
                what = "positive numbers" if key == "std" else "numbers"
                raise UsageError(f"{key} must be 1 or 3 {what} (e.g. --set {key}=0.5 or {key}=0.485,0.456,0.406); got {values}")
        if self.bn_momentum not in ("default", "auto"):
            try:
                value = float(self.bn_momentum)
            except ValueError:
                raise UsageError(f"bn_momentum must be default, auto or a number in [0, 1); got {self.bn_momentum!r}") from None
            if not 0 <= value < 1:
                raise UsageError(f"bn_momentum must be in [0, 1) (0 keeps the pretrained running statistics); got {value}")
        self.micro_batch(world=1)
        return self

    def micro_batch(self, world: int) -> int:
        """Images per process per micro-batch: batch_size is global (all processes x accumulation)."""
        if self.batch_size % (world * self.grad_accum):
            split = f"processes x grad_accum ({world} x {self.grad_accum})" if world > 1 else f"grad_accum ({self.grad_accum})"
            raise UsageError(f"batch_size ({self.batch_size}) must be divisible by {split}")
        return self.batch_size // (world * self.grad_accum)


LOGGERS = ("tensorboard", "mlflow", "wandb")  # experiment loggers (train/loggers.py), each an optional extra

_HINTS = typing.get_type_hints(Config)  # once: it compiles every annotation string
FIELD_TYPES: dict[str, Any] = {f.name: _HINTS[f.name] for f in fields(Config)}


@dataclass(frozen=True)
class Range:
    """An interval a setting must lie in; `str()` is how messages state it."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False          # low itself excluded
    high_open: bool = False         # high itself excluded
    off: float | None = None        # a value allowed outside the interval ("off", "default")
    off_means: str = "off"

    def holds(self, value: float) -> bool:
        if self.off is not None and value == self.off:
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        number = lambda x: str(int(x)) if float(x).is_integer() else f"{x:g}"
        if self.high is None:
            if self.low == 0:
                return "positive" if self.low_open else ">= 0"
            return f"> {number(self.low)}" if self.low_open else f">= {number(self.low)}"
        text = f"{'(' if self.low_open else '['}{number(self.low)}, {number(self.high)}{')' if self.high_open else ']'}"
        return f"in {text}" + (f" (or {number(self.off)} for {self.off_means})" if self.off is not None else "")


POSITIVE, NON_NEGATIVE = Range(0, low_open=True), Range(0)
# The range of every numeric setting that has one (floats are also checked for being finite).
RANGES: dict[str, Range] = {
    # sizes: ReXNet, ResNet50 and EfficientNet-B0 downsample 32x, so below 32 px nothing is left;
    # above 1024 px (4.6x the paper's 224, 2x BiT's 480) one image is 3 MB of input and the pixel
    # cache of a dataset runs into terabytes: a typo (100000) must not reach an allocation
    "img_size": Range(32, 1024),
    "batch_size": POSITIVE, "grad_accum": POSITIVE, "eval_every": POSITIVE, "log_every": POSITIVE,
    "epochs": NON_NEGATIVE, "steps": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE,
    "probe_epochs": NON_NEGATIVE, "early_stop": NON_NEGATIVE,
    "workers": Range(-1, 256),        # -1 = auto; more processes than that is a typo, not a machine
    "seed": Range(0, 2**32 - 1),      # numpy's seed range (torch's is wider)
    "width": Range(0, 10, low_open=True),  # ReXNet width multiplier; the paper's widest is 3.0
    "lr": POSITIVE,
    "momentum": Range(0, 1, high_open=True),      # SGD momentum / AdamW beta1: 1 never forgets
    "weight_decay": NON_NEGATIVE,
    "val_split": Range(0, 1, high_open=True), "val_fraction": Range(0, 1, high_open=True),
    "label_smoothing": Range(0, 1, high_open=True),
    "rrc_scale_min": Range(0, 1, low_open=True),
    "crop_pct": Range(0, 1, low_open=True, off=0, off_means="the weights' default"),
    "step_milestones": Range(0, 1, low_open=True, high_open=True),  # fractions of training
    "step_gamma": Range(0, None, low_open=True),  # > 0; usually < 1 (a decay), > 1 raises the lr at the milestones
    "mixup": NON_NEGATIVE, "cutmix": NON_NEGATIVE,  # Beta(alpha, alpha) parameters; 0 = off
    "mix_prob": Range(0, 1),
    "ema_decay": Range(0, 1, low_open=True, high_open=True),  # 1 would never move, 0 is no average
    "head_lr_mult": NON_NEGATIVE,
    "layer_decay": Range(0, 1),       # 0 = off, 1 = no decay across layers
    "clip_grad": NON_NEGATIVE,        # 0 = off
}


def _coerce(key: str, value: Any, origin: str) -> Any:
    """Check/convert one value to the field's type; `origin` names where it came from."""
    if key not in FIELD_TYPES:
        near = [k for k in FIELD_TYPES if k.startswith(key[:3])]
        hint = f" (did you mean {', '.join(near[:3])}?)" if near else ""
        raise UsageError(f"unknown setting {key!r} in {origin}{hint}")
    kind = FIELD_TYPES[key]
    if key == "lr" and isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"  # resolved by an lr-find sweep before training (train/lr_find.py)
    bad = UsageError(f"setting {key!r} in {origin} must be {_type_name(kind)}; got {value!r}")
    if typing.get_origin(kind) is list:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            except yaml.YAMLError:
                raise bad from None
        if not isinstance(value, list):
            raise bad
        try:
            return [float(v) for v in value]
        except (TypeError, ValueError):
            raise bad from None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
            try:  # "2e4" (PyYAML reads exponent notation without a dot as a string)
                number = float(value)
            except ValueError:
                raise bad from None
            if number.is_integer():
                return int(number)
        raise bad
    if kind is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if kind is str:
        if isinstance(value, bool):  # YAML reads `amp: off` / `channels_last: on` as booleans
            return "on" if value else "off"
        if isinstance(value, (dict, list)):
            raise bad
        return "" if value is None else str(value)
    raise bad  # pragma: no cover - every field type is handled above


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is list:
        return "a list of numbers"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML mapping from a file; a missing, unreadable, binary or malformed file is a UsageError."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a folder; give a YAML file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not a text file (not UTF-8); give a YAML file") from None
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UsageError(f"{what} {path} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path} must be a mapping of settings")
    return data


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values parsed as YAML scalars, then type-checked by `resolve`."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects key=value; got {item!r}")
        out[key.strip().replace("-", "_")] = raw.strip()
    return out


def apply(cfg: Config, values: dict[str, Any], origin: str) -> Config:
    """Return a copy of `cfg` with `values` (checked and converted) applied."""
    checked = {key: _coerce(key, value, origin) for key, value in values.items()}
    return dataclasses.replace(cfg, **checked)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def from_dict(data: dict[str, Any], origin: str) -> Config:
    """Rebuild a Config from a run folder's config.yaml (ignores keys unknown to this version)."""
    known = {k: v for k, v in data.items() if k in FIELD_TYPES}
    return apply(Config(), known, origin)

