"""rextransfer.analyze.figure1: the paper's Figure 1 ships as data, with its source and reading
error, and our numbers are compared with it point by point."""

import tomllib
from pathlib import Path

import pytest

from rextransfer.analyze import figure1


def test_the_digitised_figure_carries_its_source_and_reading_error():
    data = figure1.paper()
    src = data["source"]
    assert src["figure"] == "Figure 1" and src["venue"] == "CVPR 2021" and "1,000" in src["caption"]
    assert "Rethinking Channel Dimensions" in src["title"] and src["url"].startswith("https://")
    assert figure1.reading_error() == 0.015 and data["ratios"] == [0.1, 0.5, 1.0]


def test_the_values_are_those_read_off_the_figure():
    t = figure1.paper_table()
    assert set(t) == {"conv1x1", "conv3x3", "ib", "ib_dw"}
    assert list(t["conv1x1"]["relu"].values()) == [0.85, 0.95, 0.96] == list(t["conv1x1"]["relu6"].values())
    assert list(t["conv1x1"]["silu"].values()) == [0.957, 0.995, 1.0]
    assert list(t["ib"]["silu"].values()) == [0.39, 0.955, 1.0]
    assert list(t["ib_dw"]["relu"].values()) == [0.19, 0.69, 1.0]
    for block in t:  # the linear line is y = x in every panel
        assert t[block]["linear"] == {0.1: 0.1, 0.5: 0.5, 1.0: 1.0}
    for act, curve in t["conv1x1"].items():  # 3x3: 0.015 above 1x1 at 0.1, otherwise the same
        if act != "linear":
            assert t["conv3x3"][act][0.1] == pytest.approx(curve[0.1] + 0.015)
            assert t["conv3x3"][act][0.5] == curve[0.5] and t["conv3x3"][act][1.0] == curve[1.0]


def test_side_by_side_gives_ours_minus_paper_and_the_reading_error_check():
    ours = {"conv1x1": {"relu": {0.1: 0.86, 0.3: 0.9, 0.5: 1.0}}}
    rows = {(r["block"], r["activation"], r["ratio"]): r for r in figure1.side_by_side(ours, blocks=["conv1x1"])}
    assert rows[("conv1x1", "relu", 0.1)]["diff"] == pytest.approx(0.01) and rows[("conv1x1", "relu", 0.1)]["within"]
    assert rows[("conv1x1", "relu", 0.5)]["diff"] == pytest.approx(0.05) and not rows[("conv1x1", "relu", 0.5)]["within"]
    assert rows[("conv1x1", "relu", 1.0)]["ours"] is None and rows[("conv1x1", "relu", 1.0)]["diff"] is None
    assert rows[("conv1x1", "silu", 0.1)]["ours"] is None  # the paper's curve is listed even where we did not measure


def test_the_data_file_is_package_data():
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert "figure1.yaml" in pyproject["tool"]["setuptools"]["package-data"]["rextransfer.analyze"]
