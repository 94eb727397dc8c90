"""rextransfer.analyze.layers: the paper's single-layer rank study in its matrix form f(WX).

Runs use few networks (the default 1,000 only in the measured CLI run); each test takes seconds.
"""

import dataclasses

import pytest
import torch

from rextransfer.analyze import layers as L
from rextransfer.core.errors import UsageError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small matrices, like the library's own sweep: on shared cores, 2 threads made single SVDs
    take seconds instead of milliseconds (the threads wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _outputs(kind, ratio, d_out, settings, count=4, seed=0):
    """Block outputs of `count` networks of one size, for every activation."""
    g = torch.Generator().manual_seed(seed)
    d_in = L.in_width(ratio, d_out)
    x = L._inputs(g, (count, d_in, settings.samples), settings)
    w = L._weights(kind, count, d_in, d_out, settings, g)
    return d_in, {a: L.block_output(kind, x, w, a, settings) for a in settings.activations}


# ------------------------------------------------------------------------------------------------
# The rank measure
# ------------------------------------------------------------------------------------------------
def test_numerical_rank_matches_torch_matrix_rank():
    g = torch.Generator().manual_seed(0)
    for true_rank in (1, 5, 17):
        m = torch.randn(200, true_rank, generator=g, dtype=torch.float64) @ torch.randn(true_rank, 40, generator=g, dtype=torch.float64)
        s = torch.linalg.svdvals(m)
        assert L.numerical_rank(s, 1e-4) == true_rank == int(torch.linalg.matrix_rank(m, rtol=1e-4))


@pytest.mark.parametrize("kind", list(L.BLOCKS))
def test_every_rank_rule_counts_what_torch_matrix_rank_counts(kind):
    """The Gram-matrix singular values give torch's own answers: the "torch" rule is
    torch.linalg.matrix_rank's default on the float32 features, an rtol rule is matrix_rank(rtol=)."""
    s = L.LayerSettings()
    for ratio, d_out in ((0.1, 40), (0.5, 23), (1.0, 16)):
        _, outs = _outputs(kind, ratio, d_out, s)
        for act, y in outs.items():
            counts = L.rank_counts(L.batched_singular_values(y), ["torch", "0.001", "0.01"], s.samples)
            assert counts["torch"].tolist() == torch.linalg.matrix_rank(y).tolist(), (act, ratio)
            for rule in ("0.001", "0.01"):
                assert counts[rule].tolist() == torch.linalg.matrix_rank(y.double(), rtol=float(rule)).tolist(), (act, rule)


def test_a_looser_rank_rule_never_counts_a_higher_rank():
    """Per network and on the averages: ordering the rules by their tolerance orders the ranks."""
    s = L.LayerSettings(networks=6, d_out_min=16, d_out_max=40, ratios=[0.1, 0.3, 1.0], rtols=[1e-6, 1e-4, 1e-3, 1e-2, 0.1])
    for kind in L.BLOCKS:
        for ratio in s.ratios:
            _, outs = _outputs(kind, ratio, 32, s)
            for act, y in outs.items():
                counts = L.rank_counts(L.batched_singular_values(y), s.rules, s.samples)
                by_tol = sorted(s.rules, key=lambda r: L.rule_rtol(r, s.samples, 32))
                for tight, loose in zip(by_tol, by_tol[1:]):
                    assert (counts[loose] <= counts[tight]).all(), (kind, act, ratio, tight, loose)
    for row in L.layer_rank_sweep(s):
        d_max = s.d_out_max
        means = [row["rank_ratio"][r] for r in sorted(s.rules, key=lambda r: L.rule_rtol(r, s.samples, d_max))]
        assert all(b <= a + 1e-12 for a, b in zip(means, means[1:])), row


# ------------------------------------------------------------------------------------------------
# The study under its default settings
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def linear_rows():
    """Default settings, 40 networks per point, the linear curve only (activations are paired: the
    linear numbers do not depend on which other activations run)."""
    return L.layer_rank_sweep(dataclasses.replace(L.LayerSettings(), networks=40, activations=["linear"]))


def test_defaults_give_the_linear_layer_y_equals_x_in_all_four_blocks(linear_rows):
    """The paper's linear line is y = x in every panel; in matrix form with the default settings ours
    is too (within 0.01) under the default rank rule and 1e-4."""
    blocks = {r["block"] for r in linear_rows}
    assert blocks == set(L.BLOCKS)
    for row in linear_rows:
        for rule in ("torch", "0.0001"):
            assert row["rank_ratio"][rule] == pytest.approx(row["ratio"], abs=0.01), (row["block"], row["ratio"], rule)
        assert row["networks"] == 40


def test_defaults_follow_the_papers_stated_protocol():
    s = L.LayerSettings()
    assert s.networks == 1000  # Figure 1 caption
    assert s.ratios == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert s.blocks == ["conv1x1", "conv3x3", "ib", "ib_dw"]
    assert [L.ACTIVATIONS[a][0] for a in s.activations] == ["Linear", "ReLU6", "ReLU", "LeakyReLU", "ELU", "SoftPlus", "HSwish", "SiLU"]
    assert s.samples > s.d_out_max > s.d_out_min  # N > d_out > d_in
    draws = L.d_out_draws(dataclasses.replace(s, networks=200))
    assert draws.min() >= s.d_out_min and draws.max() <= s.d_out_max and len(draws.unique()) > 20  # random per network


def test_every_setting_says_whether_the_paper_states_it():
    notes = {p["name"]: p for p in L.provenance(L.LayerSettings())}
    assert set(notes) == {f.name for f in dataclasses.fields(L.LayerSettings)}
    unstated = {k for k, p in notes.items() if not p["stated"]}
    assert {"input", "input_scale", "input_centred", "init", "bn_order", "bn_mode", "rank_rule", "d_out_min",
            "d_out_max", "samples", "expansion"} <= unstated
    assert {"networks", "ratios", "blocks", "activations"}.isdisjoint(unstated)
    assert all(p["note"].startswith("not stated by the paper") for k, p in notes.items() if k in unstated)


def test_the_inverted_bottleneck_rank_is_capped_by_its_expansion_and_shortcut():
    """Output = projection of expansion*d_in channels + the d_in-channel input: rank <= (e+1) d_in."""
    s = L.LayerSettings(expansion=2)
    for kind in ("ib", "ib_dw"):
        d_in, outs = _outputs(kind, 0.1, 60, s, count=2)
        for act, y in outs.items():
            assert (torch.linalg.matrix_rank(y) <= 3 * d_in).all(), (kind, act)


def test_an_uncentred_input_adds_one_dimension_to_the_linear_inverted_bottleneck():
    """Why input_centred is on by default: batch BN subtracts the mean, the shortcut adds the raw
    input back, and the all-ones direction joins the span (rank d_in + 1)."""
    for centred, extra in ((True, 0), (False, 1)):
        s = L.LayerSettings(activations=["linear"], input_centred=centred)
        d_in, outs = _outputs("ib", 0.25, 40, s)
        assert torch.linalg.matrix_rank(outs["linear"]).tolist() == [d_in + extra] * 4


def test_bn_mode_and_order_change_the_block():
    """The unstated knobs are live: each changes the numbers of a nonlinear layer."""
    base = L.LayerSettings(activations=["silu"])
    _, ref = _outputs("conv1x1", 0.5, 20, base)
    for change in ({"bn_order": "after"}, {"bn_mode": "eval"}, {"input": "uniform"}):
        _, other = _outputs("conv1x1", 0.5, 20, dataclasses.replace(base, **change))
        assert not torch.allclose(ref["silu"], other["silu"]), change


@pytest.mark.parametrize("change, message", [
    ({"ratios": [0.0, 0.5]}, "--ratios"),
    ({"ratios": [1.5]}, "--ratios"),
    ({"samples": 64}, "N > d_out"),
    ({"d_out_min": 70}, "--d-out-min"),
    ({"activations": ["gelu"]}, "gelu"),
    ({"blocks": ["conv5x5"]}, "conv5x5"),
    ({"bn_order": "sideways"}, "--bn-order"),
    ({"rank_rule": "exact"}, "--rank-rule"),
    ({"rtols": [2.0]}, "--rtols"),
])
def test_bad_settings_are_usage_errors(change, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        dataclasses.replace(L.LayerSettings(), **change).validate()


def test_rank_rule_spellings_name_one_rule():
    s = L.LayerSettings(rank_rule="1e-2").validate()
    assert s.rank_rule == "0.01" and s.rules == ["0.01", "torch", "0.0001", "0.001"]
