"""The paper's observations on its single-layer study (Sec. 3), as verdicts computed from a table of
rank ratios — ours under stated settings, or the paper's own digitised values as a control.

Nothing here knows what the answer should be: each verdict counts the cases in which the measured
numbers show the claimed effect by more than MARGIN, and says "holds" (every case), "partly"
(some), "does not hold" (none) or "not measured" (no case to test).

Comparisons between two curves use the "open" ratios only: those where at least one of the two is
below 1 - MARGIN. Where both are at full rank there is no room for a difference, and averaging such
points in would dilute the others (and make a 10-point curve read differently from the paper's 3).
"""

from __future__ import annotations

from statistics import mean

from .layers import ACTIVATIONS, BLOCKS

MARGIN = 0.01   # a difference counts when larger than this (rank-ratio units; our sampling error
                # at 1,000 networks is ~0.002, the paper's reading error 0.015)
COMPLEX = ["elu", "softplus", "hardswish", "silu"]  # the paper's "complicated" nonlinearities
CONVS, IBS = ["conv1x1", "conv3x3"], ["ib", "ib_dw"]

CLAIMS = {
    "1": "drastic channel expansion harms the rank: with a nonlinearity, the rank ratio falls as d_in/d_out shrinks",
    "2a": "a nonlinearity raises the rank: every nonlinear curve lies above the linear one",
    "2b": "complex nonlinearities (ELU, SoftPlus, HSwish, SiLU) raise the rank more than ReLU",
    "3": "nonlinearities matter more after a conv than in an inverted bottleneck",
}


def _label(block: str, act: str | None = None) -> str:
    return BLOCKS.get(block, block) if act is None else f"{ACTIVATIONS.get(act, (act,))[0]} in {BLOCKS.get(block, block)}"


def gap(a: dict[float, float], b: dict[float, float]) -> float | None:
    """Mean of a - b over the shared open ratios (at least one below 1 - MARGIN); 0 when none is
    open (both full rank: no difference); None when the curves share no ratio."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    open_ = [r for r in shared if min(a[r], b[r]) < 1 - MARGIN]
    return mean(a[r] - b[r] for r in open_) if open_ else 0.0


def _verdict(oid: str, cases: list[tuple[str, bool, float]], measure: str) -> dict:
    """cases: (label, holds, value). Status by count; evidence names the weakest case."""
    if not cases:
        return {"id": oid, "claim": CLAIMS[oid], "status": "not measured", "held": 0, "cases": 0,
                "evidence": "no case to test with the blocks, activations and ratios measured", "details": []}
    held = sum(ok for _, ok, _ in cases)
    status = "holds" if held == len(cases) else "does not hold" if held == 0 else "partly"
    label, _, value = min(cases, key=lambda c: c[2])
    failing = [c[0] for c in cases if not c[1]]
    evidence = f"{held} of {len(cases)} cases show it ({measure} > {MARGIN:g}); weakest: {label} {value:+.3f}"
    if failing and held:
        evidence += f"; not in: {', '.join(failing[:6])}{f' (+{len(failing) - 6} more)' if len(failing) > 6 else ''}"
    return {"id": oid, "claim": CLAIMS[oid], "status": status, "held": held, "cases": len(cases),
            "evidence": evidence, "details": [{"case": l, "holds": ok, "value": round(v, 4)} for l, ok, v in cases]}


def observation_1(table: dict) -> dict:
    """Per nonlinear curve: rise from the smallest to the largest ratio > MARGIN, and no fall > MARGIN
    between neighbouring ratios."""
    cases = []
    for block, acts in table.items():
        for act, curve in acts.items():
            xs = sorted(curve)
            if act == "linear" or len(xs) < 2:
                continue
            ys = [curve[x] for x in xs]
            rise = ys[-1] - ys[0]
            steady = all(b >= a - MARGIN for a, b in zip(ys, ys[1:]))
            cases.append((_label(block, act), rise > MARGIN and steady, rise if steady else min(b - a for a, b in zip(ys, ys[1:]))))
    return _verdict("1", cases, "rise from the smallest to the largest ratio, never falling")


def observation_2a(table: dict) -> dict:
    cases = []
    for block, acts in table.items():
        if "linear" not in acts:
            continue
        for act, curve in acts.items():
            g = gap(curve, acts["linear"]) if act != "linear" else None
            if g is not None:
                cases.append((_label(block, act), g > MARGIN, g))
    return _verdict("2a", cases, "mean gain over the linear curve")


def observation_2b(table: dict) -> dict:
    cases = []
    for block, acts in table.items():
        if "relu" not in acts:
            continue
        for act in COMPLEX:
            g = gap(acts[act], acts["relu"]) if act in acts else None
            if g is not None:
                cases.append((_label(block, act), g > MARGIN, g))
    return _verdict("2b", cases, "mean gain over ReLU")


def block_gain(table: dict, block: str, acts: list[str]) -> float | None:
    """Mean over `acts` of their gain over the block's linear curve."""
    gains = [gap(table[block][a], table[block]["linear"]) for a in acts if a in table[block]]
    gains = [g for g in gains if g is not None]
    return mean(gains) if gains else None


def observation_3(table: dict) -> dict:
    """Per (conv, IB) pair: the conv's mean nonlinear gain exceeds the IB's by > MARGIN, over the
    nonlinear activations both measured."""
    cases = []
    for conv in (c for c in CONVS if c in table and "linear" in table[c]):
        for ib in (b for b in IBS if b in table and "linear" in table[b]):
            acts = [a for a in table[conv] if a != "linear" and a in table[ib]]
            gc, gi = block_gain(table, conv, acts), block_gain(table, ib, acts)
            if gc is not None and gi is not None:
                cases.append((f"{_label(conv)} {gc:.3f} vs {_label(ib)} {gi:.3f}", gc - gi > MARGIN, gc - gi))
    return _verdict("3", cases, "conv gain minus IB gain")


def verdicts(table: dict) -> list[dict]:
    """The four verdicts (1, 2a, 2b, 3) on a table of rank ratios."""
    return [observation_1(table), observation_2a(table), observation_2b(table), observation_3(table)]
