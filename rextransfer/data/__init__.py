"""Dataset registry, which recipe each dataset gets, and the one entry point the trainer uses:
`get_splits(cfg)`.

Built-in datasets register themselves in `fgvc.py` (Food-101, Stanford Cars, FGVC Aircraft,
Flowers-102) and `demo.py`; anything that is not a registered name is treated as a folder path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import DataError
from .base import DataSplits, DatasetInfo, SampleSet, data_root, lookup, registry  # noqa: F401
from . import demo as _demo  # noqa: F401  (registers "demo")
from . import fgvc as _fgvc  # noqa: F401  (registers the four fine-grained datasets)

if TYPE_CHECKING:
    from ..config.settings import Config


def dataset_label(name: str) -> str:
    """Short name used in run folders: the registry name, or the folder's base name."""
    info = lookup(name)
    return info.name if info else (Path(name).expanduser().resolve().name or "folder")


def default_recipe_for(dataset: str) -> str:
    """The recipe a dataset gets without --recipe: a registered dataset's own recipe (aliases
    resolved), so `demo` for the demo; `folder` for an image folder and for a registered dataset
    without a recipe of its own."""
    from ..config.recipes import FOLDER, recipe_names

    info = lookup(dataset)
    return info.name if info is not None and info.name in recipe_names() else FOLDER


def recipe_defaults() -> dict[str, list[str]]:
    """recipe name -> the datasets it is the default for ("image folders" for `folder`)."""
    from ..config.recipes import FOLDER, recipe_names

    defaults: dict[str, list[str]] = {name: [] for name in recipe_names()}
    for name in sorted(registry()):
        defaults.setdefault(default_recipe_for(name), []).append(name)
    defaults.setdefault(FOLDER, []).append("image folders")
    return defaults


def get_splits(cfg: "Config") -> DataSplits:
    info = lookup(cfg.dataset)
    if info is not None:
        return info.load(cfg)
    path = Path(cfg.dataset).expanduser()
    if path.exists():
        from .folder import load_folder

        return load_folder(path, val_fraction=cfg.val_fraction, seed=cfg.seed)
    names = ", ".join(sorted(registry()))
    raise DataError(f"{cfg.dataset!r} is neither a dataset name ({names}) nor an existing folder")
