"""rextransfer.analyze.layer_sweep: the unstated settings over a grid, judged under every rank rule,
and a per-observation summary of where each observation holds."""

import dataclasses

from rextransfer.analyze import layer_sweep as S
from rextransfer.analyze import layers as L
from rextransfer.analyze.observations import verdicts

BASE = L.LayerSettings(blocks=["conv1x1", "ib"], activations=["linear", "relu", "silu"], d_out_min=6, d_out_max=10,
                       samples=16)
GRID = {"input_scale": [0.1, 10.0], "bn": [("before", "batch"), ("before", "eval")]}


def test_the_default_grid_covers_every_unstated_knob_the_issue_names():
    assert set(S.SWEEP_GRID) == {"input", "input_centred", "input_scale", "init", "bn"}
    assert len(S.grid_points()) == 2 * 2 * 3 * 2 * 3
    assert S.SWEEP_RATIOS == [0.1, 0.5, 1.0]  # the ratios read off the paper's figure


def test_each_result_is_the_verdict_of_that_settings_own_measurement():
    results = S.run_sweep(BASE, networks=3, grid=GRID)
    assert len(results) == 4 * len(BASE.rules)
    point = {"input_scale": 10.0, "bn": ("before", "eval")}
    settings = dataclasses.replace(BASE, networks=3, ratios=S.SWEEP_RATIOS, input_scale=10.0, bn_mode="eval")
    rows = L.layer_rank_sweep(settings)
    for rule in BASE.rules:
        (r,) = [r for r in results if r["point"] == {**point, "rank_rule": rule}]
        assert r["status"] == {v["id"]: v["status"] for v in verdicts(L.rank_table(rows, rule))}


def test_the_summary_counts_and_names_the_settings_where_each_observation_holds():
    fake = [{"point": {"init": i, "rank_rule": rule}, "status": {"1": "holds" if rule == "0.01" else "partly",
                                                                "2a": "holds", "2b": "does not hold", "3": "partly"},
             "evidence": {}} for i in ("torch", "normal") for rule in ("torch", "0.01")]
    by_id = {s["id"]: s for s in S.summarise(fake)}
    assert by_id["1"]["holds"] == 2 and by_id["1"]["partly"] == 2
    assert by_id["1"]["shared_by_all_holding"] == {"rank_rule": "0.01"}  # what every holding setting has in common
    assert by_id["1"]["holds_by_value"]["init"] == {"torch": 1, "normal": 1}
    assert by_id["2a"]["holds"] == 4 and by_id["2a"]["shared_by_all_holding"] == {}
    assert by_id["2b"]["holds"] == 0 and by_id["2b"]["holding"] == []
    assert by_id["1"]["holding"] == ["init torch, rule 0.01", "init normal, rule 0.01"]
