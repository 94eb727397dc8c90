"""rextransfer.analyze.observations: each verdict is computed from the numbers it is given. Hand-made
curves that show an observation make it hold; changing them so they do not makes it flip."""

import copy

import pytest

from rextransfer.analyze import figure1
from rextransfer.analyze.observations import MARGIN, gap, verdicts

RATIOS = [0.1, 0.5, 1.0]
NONLINEAR = ["relu", "elu", "softplus", "hardswish", "silu"]


def _curve(*values):
    return dict(zip(RATIOS, values))


@pytest.fixture
def shows_all():
    """A table in which all four observations show: nonlinear curves rise with the ratio, sit above
    linear, the complex ones above ReLU, and the gains are larger in the convs than in the IBs."""
    conv = {"linear": _curve(0.1, 0.5, 1.0), "relu": _curve(0.80, 0.95, 0.97),
            **{a: _curve(0.90, 0.99, 1.0) for a in ("elu", "softplus", "hardswish", "silu")}}
    ib = {"linear": _curve(0.1, 0.5, 1.0), "relu": _curve(0.30, 0.80, 1.0),
          **{a: _curve(0.40, 0.88, 1.0) for a in ("elu", "softplus", "hardswish", "silu")}}
    return {"conv1x1": copy.deepcopy(conv), "conv3x3": copy.deepcopy(conv), "ib": copy.deepcopy(ib), "ib_dw": copy.deepcopy(ib)}


def _status(table):
    return {v["id"]: v["status"] for v in verdicts(table)}


def test_all_hold_on_curves_that_show_them(shows_all):
    assert _status(shows_all) == {"1": "holds", "2a": "holds", "2b": "holds", "3": "holds"}


def test_all_hold_on_the_papers_own_digitised_values():
    """The control: the verdict rules read the paper's figure as the paper does."""
    assert _status(figure1.paper_table()) == {"1": "holds", "2a": "holds", "2b": "holds", "3": "holds"}


def test_observation_1_flips_when_curves_stop_rising(shows_all):
    flat = copy.deepcopy(shows_all)
    flat["conv1x1"]["relu"] = _curve(1.0, 1.0, 1.0)  # one curve full rank at every ratio
    assert _status(flat)["1"] == "partly"
    for block in flat:
        for act in NONLINEAR:
            flat[block][act] = _curve(1.0, 1.0, 1.0)
    assert _status(flat)["1"] == "does not hold"
    falling = copy.deepcopy(shows_all)
    falling["ib"]["silu"] = _curve(0.40, 0.95, 0.90)  # rises overall but falls by more than MARGIN
    v = verdicts(falling)[0]
    assert v["status"] == "partly" and "SiLU in IB with conv" in v["evidence"]


def test_observation_2a_flips_when_nonlinear_curves_sit_on_the_linear_one(shows_all):
    table = copy.deepcopy(shows_all)
    for block in table:
        for act in NONLINEAR:
            table[block][act] = dict(table[block]["linear"])
    assert _status(table)["2a"] == "does not hold"
    table["conv1x1"]["relu"] = _curve(0.1 + 2 * MARGIN, 0.5 + 2 * MARGIN, 1.0)
    assert _status(table)["2a"] == "partly"


def test_observation_2b_flips_when_complex_activations_do_not_beat_relu(shows_all):
    table = copy.deepcopy(shows_all)
    for block in table:
        for act in ("elu", "softplus", "hardswish", "silu"):
            table[block][act] = dict(table[block]["relu"])
    assert _status(table)["2b"] == "does not hold"
    table["ib"]["silu"] = _curve(0.30 + 1.5 * MARGIN, 0.80, 1.0)  # mean gain over the open ratios 0.75 MARGIN
    assert _status(table)["2b"] == "does not hold"
    table["ib"]["silu"] = _curve(0.30 + 3 * MARGIN, 0.80 + 3 * MARGIN, 1.0)
    assert _status(table)["2b"] == "partly"


def test_observation_3_flips_when_the_ib_gains_as_much_as_the_conv(shows_all):
    table = copy.deepcopy(shows_all)
    for ib in ("ib", "ib_dw"):
        table[ib] = copy.deepcopy(table["conv1x1"])
    assert _status(table)["3"] == "does not hold"
    table["ib_dw"] = copy.deepcopy(shows_all["ib_dw"])
    assert _status(table)["3"] == "partly"  # the convs beat ib_dw but not ib


def test_verdicts_need_the_curves_they_compare(shows_all):
    no_relu = {b: {a: c for a, c in acts.items() if a != "relu"} for b, acts in shows_all.items()}
    assert _status(no_relu)["2b"] == "not measured"
    convs_only = {b: shows_all[b] for b in ("conv1x1", "conv3x3")}
    assert _status(convs_only)["3"] == "not measured"


def test_gap_compares_only_where_there_is_room():
    assert gap(_curve(0.9, 1.0, 1.0), _curve(0.8, 1.0, 1.0)) == pytest.approx(0.1)  # full-rank points left out
    assert gap(_curve(1.0, 1.0, 1.0), _curve(1.0, 1.0, 1.0)) == 0.0
    assert gap(_curve(0.5, 0.5, 0.5), {0.3: 0.1}) is None


def test_every_verdict_carries_its_numbers(shows_all):
    for v in verdicts(shows_all):
        assert v["cases"] == len(v["details"]) and v["held"] == v["cases"]
        assert "weakest" in v["evidence"] and all(isinstance(d["value"], float) for d in v["details"])
