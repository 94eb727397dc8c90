"""The paper's Figure 1 as data (figure1.yaml: values read off the published figure, with source
and reading error), and our measurements side by side with it."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml

Table = dict[str, dict[str, dict[float, float]]]  # {block: {activation: {dimension ratio: rank ratio}}}


@lru_cache(maxsize=1)
def _load() -> dict:
    return yaml.safe_load(resources.files("rextransfer.analyze").joinpath("figure1.yaml").read_text())


def paper() -> dict:
    """The whole file: source, reading_error, ratios, curves."""
    return _load()


def paper_table() -> Table:
    """The digitised curves as a Table."""
    data = _load()
    return {block: {act: dict(zip(data["ratios"], values)) for act, values in acts.items()}
            for block, acts in data["curves"].items()}


def reading_error() -> float:
    return float(_load()["reading_error"])


def _at(curve: dict[float, float], ratio: float) -> float | None:
    """The value at a dimension ratio (matched to 1e-9), or None when not measured there."""
    return next((v for r, v in curve.items() if abs(r - ratio) < 1e-9), None)


def side_by_side(ours: Table, blocks: list[str] | None = None) -> list[dict]:
    """One row per (block, activation, paper ratio) the paper gives: ours, paper, diff = ours - paper,
    within (|diff| <= the reading error). ours/diff are None where we did not measure that point."""
    err, rows = reading_error(), []
    for block, acts in paper_table().items():
        if blocks is not None and block not in blocks:
            continue
        for act, curve in acts.items():
            for ratio, value in curve.items():
                mine = _at(ours.get(block, {}).get(act, {}), ratio)
                diff = None if mine is None else mine - value
                rows.append({"block": block, "activation": act, "ratio": ratio, "ours": mine, "paper": value,
                             "diff": diff, "within": None if diff is None else abs(diff) <= err + 1e-12})
    return rows
