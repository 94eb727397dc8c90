"""Dataset registry and the one entry point the trainer uses: `get_splits(cfg)`.

Built-in datasets register themselves in `fgvc.py` (Food-101, Stanford Cars, FGVC Aircraft,
Flowers-102) and `demo.py`; anything that is not a registered name is treated as a folder path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError
from .base import DataSplits, DatasetInfo, SampleSet, data_root, lookup, registry  # noqa: F401
from . import demo as _demo  # noqa: F401  (registers "demo")
from . import fgvc as _fgvc  # noqa: F401  (registers the four fine-grained datasets)

if TYPE_CHECKING:
    from ..config import Config


def dataset_label(name: str) -> str:
    """Short name used in run folders: the registry name, or the folder's base name."""
    info = lookup(name)
    return info.name if info else (Path(name).expanduser().resolve().name or "folder")


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
