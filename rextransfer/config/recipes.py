"""Recipes: named, commented starting points for a run (recipes/*.yaml), and the full resolution
of a run's settings from them.

A recipe file is

    description: one line
    settings:          # Config field -> value; every value carries a comment with its source
      lr: 0.0125       # ...
    models:            # per-backbone overrides, merged over settings
      resnet50:
        weight_decay: 1.0e-4
    hyperrule: true    # optional: fill the schedule from the training-set size (see `hyperrule`)

Each built-in dataset has a recipe of its own name (cars.yaml for `cars`), image folders get
`folder`, and any recipe can be chosen with `--recipe NAME` (or `--recipe path/to/file.yaml`).

Precedence, later wins (`resolve_run_config`):
    defaults < backbone registry (its pretraining weight decay) < recipe settings < hyperrule(n_train)
    < recipe models[<backbone>] < model hint < --config FILE < command-line flags < --set key=value
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .settings import Config, apply, parse_set, read_yaml
from ..core.errors import UsageError

RECIPE_KEYS = ("description", "settings", "models", "hyperrule")
FOLDER = "folder"  # the recipe for image folders (and registered datasets without their own)


@dataclass
class Recipe:
    name: str
    path: Path
    description: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    hyperrule: bool = False


# ------------------------------------------------------------------------------------------------
# Finding and reading recipes
# ------------------------------------------------------------------------------------------------
PACKAGE = Path(__file__).resolve().parent.parent
SHIPPED = PACKAGE / "recipe_files"        # an installed wheel: recipes/ mapped in as package data
CHECKOUT = PACKAGE.parent / "recipes"     # a source checkout or editable install


def recipes_dir() -> Path:
    """$REXTRANSFER_RECIPES, else the recipes this installation ships."""
    env = os.environ.get("REXTRANSFER_RECIPES")
    if env:
        return Path(env).expanduser()
    return SHIPPED if SHIPPED.is_dir() else CHECKOUT


def _names() -> list[str]:
    folder = recipes_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _path_of(name: str) -> Path:
    """A recipe name, or a path to a recipe file."""
    if name.endswith((".yaml", ".yml")) and Path(name).expanduser().is_file():
        return Path(name).expanduser()
    path = recipes_dir() / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(_names()) or f"none in {recipes_dir()}"
        raise UsageError(f"unknown recipe {name!r}; available: {names} (see `rextransfer recipes`)")
    return path


def load_recipe(name: str) -> Recipe:
    """Read a recipe and check it: its structure, and every value (known key, right type, valid)."""
    path = _path_of(name)
    data = read_yaml(path, "recipe")
    where = f"recipe {name} ({path})"
    unknown = [k for k in data if k not in RECIPE_KEYS]
    if unknown:
        raise UsageError(f"{where}: unknown top-level key {unknown[0]!r} (expected {', '.join(RECIPE_KEYS)})")
    settings = data.get("settings") or {}
    models = data.get("models") or {}
    if not isinstance(settings, dict):
        raise UsageError(f"{where}: 'settings' must be a mapping of setting: value")
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        raise UsageError(f"{where}: 'models' must map a backbone name to a mapping of setting: value")
    hyper = data.get("hyperrule", False)
    if not isinstance(hyper, bool):
        raise UsageError(f"{where}: 'hyperrule' must be true or false; got {hyper!r}")
    recipe = Recipe(name=name, path=path, description=str(data.get("description") or "").strip(),
                    settings=settings, models={str(k).lower(): v for k, v in models.items()}, hyperrule=hyper)
    # Values: every key known and of the right type, and valid together, for every backbone block.
    base = apply(Config(), settings, where)
    for key, block in [("", {}), *recipe.models.items()]:
        try:
            apply(base, block, f"{where} models.{key}").validate()
        except UsageError as e:
            raise UsageError(str(e) if str(e).startswith(f"recipe {name}") or where in str(e) else f"{where}: {e}") from None
    return recipe


def uses_hyperrule(name: str) -> bool:
    return load_recipe(name).hyperrule


def recipe_names() -> list[str]:
    return _names()


def list_recipes() -> list[dict]:
    """Every recipe: name, description, path, hyperrule (which datasets use it: data.recipe_defaults)."""
    rows = []
    for name in _names():
        recipe = load_recipe(name)
        rows.append({"name": name, "description": recipe.description, "path": str(recipe.path),
                     "hyperrule": recipe.hyperrule})
    return rows


# ------------------------------------------------------------------------------------------------
# Values of a recipe for a backbone
# ------------------------------------------------------------------------------------------------
def model_key(model: str) -> str:
    """The `models:` key a model name matches: rexnet for any ReXNet (rexnet_150, rexnet_100.nav_in1k),
    the architecture for a timm "arch.tag" name (resnet50.a1_in1k -> resnet50)."""
    name = model.strip().lower().split(".", 1)[0]
    return "rexnet" if name.startswith("rexnet") else name


def _layers(recipe: Recipe, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return recipe.settings, recipe.models.get(model_key(model), {})


# ------------------------------------------------------------------------------------------------
# The training-set-size rule (folder.yaml)
# ------------------------------------------------------------------------------------------------
HYPERRULE_BATCH = 64      # the batch the step counts below are for (BiT: 512)
HYPERRULE_MAX_EPOCHS = 100
# Few-shot: below this many training images the pretrained features are worth more than what SGD on
# a handful of augmented crops can teach them. Measured on 63 real dog photos (21 breeds, 3 each;
# MobileNetV2, 128 px, 30 steps; bench/transfer.py): with lr ~ 0, train-mode BN running stats alone
# drift the score from 87.5 to 52.3 % (eval-mode BN keeps 87.5, but collapsed at lr 0.002-0.00625);
# with the stats moving 1 %/step the lr decides (0.00625: 66 %, 0.002: 72 %, 0.001: 83 %, 0.0005: 86 %),
# and even at 1 %/step the val loss rises every epoch after the second (0.834 -> 0.909) and the
# other split of the same photos (the last 3 per breed) loses up to 6 points in the last epochs.
# So the running stats stay the pretrained ones (momentum 0; the forward still normalises by batch
# statistics): val loss falls every epoch on both splits (0.866 -> 0.804, 0.795 -> 0.751), mean
# per-class over seeds 0-3 85.6-87.3 % (was 84.4-87.7) and 93.0-94.0 % (was 87.4-92.3). Folders far
# from ImageNet's photos may want the stats to adapt: on 5-class 128-px flower thumbnails (10 per
# class) 1 %/step scored 44.8/47.2 % against 44.0/44.8 % (--set bn_momentum=0.01).
# And the head learns at a tenth of that lr: the class-mean head's weights are small (~ 1/|x|^2 of
# the features' scale) and the shared lr rewrote it within a few steps (head-only, 3 steps: -5
# points on one split). Those two splits were the ones the values above were chosen on; on 10 random
# 3-shot splits of the same photos (bench/transfer.py --splits 10) the head at the full lr scored
# 85.2 % mean per-class (top-1 86.6) against nearest class mean's 88.3 (87.8), 4 wins in 10; at a
# tenth 88.3 (88.4), the val loss 0.60 instead of 0.58 (the faster head buys calibration, not hits).
# And the gradient's norm is clipped at 10: on 10 fresh random splits (seeds 10-19, not looked at
# before) the tier scored 85.0 % against NCM's 87.0, and the runs that lost most (-7, -10 points)
# had lost it within a step: MobileNetV2's steps measure 7-11 there, a few batches 35-59, and one
# such step at the peak lr undid the class-mean start (val loss 0.61 -> 0.80 in an epoch). Clipped
# at 10 (only those steps; EfficientNet-Lite0's measure ~4, untouched): 87.4 % on those splits
# (85.4 and 92.4 where it had scored 75.4 and 79.4), val loss 0.617 -> 0.583; at 5 (every step
# clipped a little) 86.7. Over 30 splits (bench/transfer.py --splits 30): 87.6 % against NCM's 87.3
# (top-1 88.0 against 87.3); 86.8 without the clipping.
FEW_SHOT = 1_000
FEW_SHOT_LR_FACTOR = 0.1    # x the recipe's lr
FEW_SHOT_SETTINGS = {       # the tier's settings besides the lr (hyperrule() sets them, the run's log names them)
    "bn_momentum": "0",     # BN running stats stay the pretrained ones (PyTorch's default moves them 10 %/step)
    "head_lr_mult": 0.1,    # the head's lr, x the backbone's: keep the class-mean start
    "clip_grad": 10.0,      # max global grad norm: cuts the rare spiking step (measured above), not the others
}


def few_shot(n_train: int, pretrained: bool) -> bool:
    """Whether the few-shot tier applies: pretrained features to keep, fewer than FEW_SHOT images."""
    return pretrained and n_train < FEW_SHOT


def few_shot_note(cfg: Config, n_train: int) -> str | None:
    """The run log's line when a size-dependent recipe put the run in the few-shot tier (else None):
    the values it resolved to, and where to read why."""
    if not (uses_hyperrule(cfg.recipe) and few_shot(n_train, cfg.pretrained)):
        return None
    return (f"{cfg.recipe} recipe, {n_train:,} training images (< {FEW_SHOT:,}): few-shot tier, lr {cfg.lr:g}, "
            + "".join(f"{key} {_plain(getattr(cfg, key))}, " for key in FEW_SHOT_SETTINGS)
            + f"head_init {cfg.head_init}, probe_epochs {cfg.probe_epochs} "
            f"(the measurements: README, Transfer on real photos; --set overrides any of them)")


def _plain(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# (size below which the tier applies, BiT steps at batch 512, BiT warmup, BiT decay points, mixup)
_BIT_TIERS = (
    (5_000, 100, 10, (20, 50, 80), 0.0),
    (20_000, 500, 100, (200, 300, 400), 0.0),
    (500_000, 10_000, 500, (3_000, 6_000, 9_000), 0.1),
    (math.inf, 20_000, 500, (6_000, 12_000, 18_000), 0.1),
)


def hyperrule(n_train: int, pretrained: bool = True) -> dict:
    """Schedule settings from the training-set size, after BiT's HyperRule (bit_hyperrule.py).

    BiT fine-tunes at batch 512 for a fixed number of images per size tier, warms up linearly,
    then divides the lr by 10 at three points. Kept here: the tiers (thresholds 5k / 20k / 500k
    images), the images-seen budget of each tier, the warmup and decay points as fractions of the
    run, and MixUp alpha 0.1 from 20k images. Adapted: steps are counted at our batch of 64 (BiT's
    steps x 8), and the run is capped at 100 epochs — BiT's budget would be 256 epochs for a
    20k-image folder, far more than our fine-tunes need. Added: a head-only first epoch
    (Kumar et al. 2022 LP-FT) below 20k images from a head set to the classes' mean features
    (head_init=ncm), ~10 evaluations per run, and a few-shot tier below 1,000 images (FEW_SHOT:
    lr x 0.1, BN running stats kept, head lr x 0.1, grad norm clipped at 10, no head-only epoch;
    measured, see FEW_SHOT).

        n_train        steps @ 64 (cap 100 ep)   warmup   lr x0.1 at      mixup  head  probe  images seen
        < 1,000        800 (few-shot: see above) 10 %     20/50/80 %      0      ncm   0      51k  (BiT 100 x 512)
        1k - 5k        800                       10 %     20/50/80 %      0      ncm   1      51k  (BiT 100 x 512)
        5k - 20k       4,000                     20 %     40/60/80 %      0      ncm   1      256k (BiT 500 x 512)
        20k - 500k     80,000                    5 %      30/60/90 %      0.1    zero  0      5.1M (BiT 10k x 512)
        >= 500k        160,000                   2.5 %    30/60/90 %      0.1    zero  0      10M  (BiT 20k x 512)

    e.g. 1,000 images -> 800 steps (53 epochs); 10,000 -> 4,000 steps (26 epochs); 30,000 ->
    46,800 steps (100 epochs, capped); 100,000 -> 80,000 steps (51 epochs). Resolution stays at
    the backbones' 224 px (BiT's resolution rule keys on image size, for its own 480-px models).
    `resolve_run_config` applies these below every explicit setting. From scratch
    (`pretrained=False`) there are no features to keep: a zero head and none of the few-shot tier.
    """
    if n_train <= 0:
        raise UsageError(f"the training set is empty (n_train={n_train})")
    _, bit_steps, bit_warmup, bit_decays, mixup = next(t for t in _BIT_TIERS if n_train < t[0])
    tiny = few_shot(n_train, pretrained)
    budget_steps = bit_steps * 512 // HYPERRULE_BATCH
    steps_per_epoch = max(1, n_train // HYPERRULE_BATCH)
    steps = min(budget_steps, HYPERRULE_MAX_EPOCHS * steps_per_epoch)
    epochs = steps / steps_per_epoch
    return {
        "batch_size": HYPERRULE_BATCH,
        "steps": steps,
        "warmup_steps": round(steps * bit_warmup / bit_steps),
        "schedule": "step",
        "step_milestones": [d / bit_steps for d in bit_decays],
        "step_gamma": 0.1,
        "mixup": mixup,
        "img_size": 224,
        # LP-FT (Kumar et al. 2022) below 20k images: the head starts at the classes' mean features
        # (train/head.py: step 0 = nearest class mean), then a head-only epoch, then everything.
        "head_init": "ncm" if n_train < 20_000 and pretrained else "zero",
        "probe_epochs": 0 if tiny else 1 if n_train < 20_000 else 0,
        "eval_every": max(1, round(epochs / 10)),
        **(FEW_SHOT_SETTINGS if tiny else {}),
    }


# ------------------------------------------------------------------------------------------------
# The whole resolution
# ------------------------------------------------------------------------------------------------
LENGTH = ("epochs", "steps")


def resolve_run_config(dataset: str, *, recipe: str, model_hint: str | None, config_file: Any,
                       flags: dict | None, sets: list[str] | None, n_train: int | None = None,
                       count_train: Callable[[Config], int] | None = None,
                       backbone_defaults: Callable[[str], dict] | None = None) -> Config:
    """The run's Config: defaults < backbone_defaults(model) < recipe (settings, hyperrule,
    models[backbone]) < model_hint < --config FILE < flags < --set, validated.

    - `backbone_defaults(model)` is what the backbone registry says every recipe should use for
      that backbone (its pretraining weight decay: models/registry.py finetune_defaults).

    - The backbone whose overrides apply is the final one (a --config/--model/--set may change it).
    - Training length is one setting written two ways: the highest layer that names epochs or
      steps decides, so `--epochs 5` over a recipe with `steps: 20000` trains 5 epochs.
    - With a hyperrule recipe and `n_train`, the rule fills only what no layer above it sets; its
      step count is an images budget, so it scales with an explicit batch size, and its warmup
      and evaluation cadence follow a user-chosen length.
    - `count_train(cfg)`, when given and the recipe needs it, is called once with the settings
      below the rule (the rule never touches data settings) to count the training set.
    """
    name = recipe
    doc = load_recipe(name)
    where = f"recipe {doc.name} ({doc.path})"
    upper: list[tuple[dict[str, Any], str]] = [({"model": model_hint} if model_hint else {}, "--model")]
    if config_file:
        upper.append((read_yaml(Path(config_file), "config file"), f"config file {config_file}"))
    upper.append(({k: v for k, v in (flags or {}).items() if v is not None}, "command-line flags"))
    upper.append((parse_set(sets or []), "--set"))

    # The backbone whose overrides apply is the one the run will use: find it before merging.
    model = str(next((values["model"] for values, _ in reversed(upper) if values.get("model")),
                     doc.settings.get("model") or Config.model))
    settings, override = _layers(doc, model)
    backbone = [(backbone_defaults(model), f"backbone registry ({model_key(model)})")] if backbone_defaults else []
    lower = [*backbone, (settings, where)]
    above_rule = [(override, f"{where} models.{model_key(model)}"), *upper]
    rule = None
    if doc.hyperrule and (n_train or count_train is not None):
        # every layer but the rule: the data to count, and whether the run is pretrained
        below_rule = Config()
        for values, origin in lower + above_rule:
            below_rule = apply(below_rule, values, origin)
        if not n_train:
            n_train = count_train(apply(below_rule, {"dataset": dataset}, "the command line"))
        if n_train:
            rule = hyperrule(n_train, pretrained=below_rule.pretrained)
            lower.append((rule, f"{where} hyperrule(n_train={n_train})"))
    layers = lower + above_rule

    cfg = Config()
    for values, origin in layers:
        cfg = apply(cfg, values, origin)

    # Training length is one setting written two ways: the highest layer that names it decides.
    for values, _ in reversed(layers):
        if any(k in values for k in LENGTH):
            if "steps" not in values:
                cfg = apply(cfg, {"steps": 0}, "training length")
            break

    if rule is not None:
        cfg = _follow_rule(cfg, rule, {key for values, _ in above_rule for key in values}, n_train)
    cfg = apply(cfg, {"dataset": dataset, "recipe": name}, "the command line")
    return cfg.validate()


def _follow_rule(cfg: Config, rule: dict, set_above: set[str], n_train: int) -> Config:
    """Keep the hyperrule's intent when a layer above it changed the batch or the length."""
    changes: dict[str, Any] = {}
    if not set_above & set(LENGTH) and cfg.batch_size != rule["batch_size"]:
        # same number of images as the rule intended, at the batch actually used
        changes["steps"] = max(1, math.ceil(rule["steps"] * rule["batch_size"] / cfg.batch_size))
    steps_per_epoch = max(1, n_train // cfg.batch_size)
    total = changes.get("steps", cfg.steps) or cfg.epochs * steps_per_epoch
    if "warmup_steps" not in set_above:
        changes["warmup_steps"] = round(total * rule["warmup_steps"] / rule["steps"])
    if "eval_every" not in set_above:
        changes["eval_every"] = max(1, round(total / steps_per_epoch / 10))
    if few_shot(n_train, cfg.pretrained) and "lr" not in set_above and cfg.lr != "auto":
        changes["lr"] = float(f"{cfg.lr * FEW_SHOT_LR_FACTOR:.6g}")
    return apply(cfg, changes, "hyperrule") if changes else cfg
