"""The ReXNet paper's single-layer rank study (Han et al., CVPR 2021, Sec. 3, Figure 1), in the
paper's own matrix form, with every setting the paper leaves open made explicit.

The paper's layer is f(WX) with W in R^{d_out x d_in}, X in R^{d_in x N}, N > d_out > d_in, f a
nonlinearity with normalization (BN); the rank ratio = rank(f(WX)) / d_out is plotted against the
dimension ratio d_in / d_out, "averaged over 1,000 random-sized networks" (d_out drawn at random
per network). Four blocks: a 1x1 conv, a 3x3 conv, and inverted bottlenecks (IB) with a 3x3 conv
or a 3x3 depthwise conv inside, whose input is the first 1x1 conv's input and whose output is taken
after the shortcut addition. Everything the paper does not state (input distribution and scale,
the d_out range, N, weight init, BN order and mode, the rank rule, the IB expansion, LeakyReLU's
slope) is a field of `LayerSettings`, and `SETTING_SOURCES` says for each one whether the paper
states it.

Matrix form means no spatial grid: each of the N columns of X is one sample with a 1x1 "image".
A 3x3 kernel (zero padding 1) on a 1x1 input acts through its centre tap only, so a 3x3 conv is a
d_out x d_in matrix drawn with the 3x3 init's fan-in (9 d_in); a 3x3 depthwise conv is a per-channel
scale. Layers run in float32, as a network would.

Numerical rank: singular values above rtol * s_max. Rules: fixed rtols, and "torch" = what
`torch.linalg.matrix_rank` uses by default on the float32 feature matrix (rtol = eps(float32) *
max(N, d_out)). Singular values come from the float64 Gram matrix Y Y^T (eigvalsh), which resolves
s / s_max down to ~1e-7, well below every rule (the smallest, "torch", is ~3e-5 at N = 256).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

# CLI key -> (the paper's legend label, function). Order: the paper's legend.
ACTIVATIONS: dict[str, tuple[str, Callable]] = {
    "linear": ("Linear", lambda x, slope: x),
    "relu6": ("ReLU6", lambda x, slope: F.relu6(x)),
    "relu": ("ReLU", lambda x, slope: F.relu(x)),
    "leakyrelu": ("LeakyReLU", lambda x, slope: F.leaky_relu(x, slope)),
    "elu": ("ELU", lambda x, slope: F.elu(x)),
    "softplus": ("SoftPlus", lambda x, slope: F.softplus(x)),
    "hardswish": ("HSwish", lambda x, slope: F.hardswish(x)),
    "silu": ("SiLU", lambda x, slope: F.silu(x)),
}
BLOCKS: dict[str, str] = {
    "conv1x1": "1x1 conv",
    "conv3x3": "3x3 conv",
    "ib": "IB with conv",
    "ib_dw": "IB with depthwise",
}
DEFAULT_RATIOS = [round(0.1 * i, 1) for i in range(1, 11)]  # Figure 1's x axis, 0.1 to 1.0
DEFAULT_RTOLS = [1e-4, 1e-3, 1e-2]
INPUTS = ("normal", "uniform")            # both zero mean, variance input_scale^2
INITS = ("torch", "normal", "kaiming")    # torch: nn.Conv2d's default (kaiming_uniform_, a=sqrt(5))
BN_ORDERS = ("before", "after")           # BN before the activation (conv-BN-act) or after it
BN_MODES = ("batch", "eval")              # batch statistics, or fresh running stats (mean 0, var 1)
BN_EPS = 1e-5                             # nn.BatchNorm default
FLOAT32_EPS = torch.finfo(torch.float32).eps


@dataclass
class LayerSettings:
    """Settings of the single-layer study; written to settings.json with their sources."""

    networks: int = 1000            # random networks per (block, dimension ratio) point
    d_out_min: int = 16             # d_out is drawn uniformly from [d_out_min, d_out_max] per network
    d_out_max: int = 64
    ratios: list[float] = field(default_factory=lambda: list(DEFAULT_RATIOS))  # d_in / d_out
    blocks: list[str] = field(default_factory=lambda: list(BLOCKS))
    activations: list[str] = field(default_factory=lambda: list(ACTIVATIONS))
    samples: int = 256              # N, columns of X
    input: str = "normal"
    input_scale: float = 1.0        # standard deviation of every input entry
    input_centred: bool = True      # each input channel has zero mean over the N samples
    init: str = "torch"
    bn_order: str = "before"
    bn_mode: str = "batch"
    rank_rule: str = "torch"        # the rule the tables, plot and verdicts use
    rtols: list[float] = field(default_factory=lambda: list(DEFAULT_RTOLS))  # also reported
    expansion: int = 6              # IB: inner channels = expansion * d_in
    leaky_slope: float = 0.01       # LeakyReLU negative slope
    seed: int = 0

    @property
    def rules(self) -> list[str]:
        """Every rank rule reported, the primary first: "torch" and "1e-4"-style rtols."""
        rules = [self.rank_rule] + ["torch"] + [f"{r:g}" for r in self.rtols]
        return list(dict.fromkeys(rules))

    def validate(self) -> "LayerSettings":
        from ..core.errors import UsageError

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UsageError(message)

        need(self.networks >= 1, f"--networks must be at least 1; got {self.networks}")
        need(2 <= self.d_out_min <= self.d_out_max,
             f"need 2 <= --d-out-min <= --d-out-max; got {self.d_out_min}, {self.d_out_max}")
        need(self.samples > self.d_out_max,
             f"--samples (N) must exceed --d-out-max ({self.d_out_max}): the paper's layer has N > d_out; got {self.samples}")
        need(bool(self.ratios) and all(0 < r <= 1 and math.isfinite(r) for r in self.ratios),
             f"--ratios must be numbers in (0, 1] (expansion layers, d_in <= d_out); got {self.ratios}")
        need(self.expansion >= 1, f"--expansion must be at least 1; got {self.expansion}")
        need(math.isfinite(self.input_scale) and self.input_scale > 0, f"--input-scale must be positive; got {self.input_scale}")
        need(math.isfinite(self.leaky_slope), f"--leaky-slope must be a number; got {self.leaky_slope}")
        for name, given, known in (("block", self.blocks, BLOCKS), ("activation", self.activations, ACTIVATIONS)):
            unknown = [g for g in given if g not in known]
            need(bool(given) and not unknown,
                 f"unknown {name} {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
        for option, value, known in (("--input", self.input, INPUTS), ("--init", self.init, INITS),
                                     ("--bn-order", self.bn_order, BN_ORDERS), ("--bn-mode", self.bn_mode, BN_MODES)):
            need(value in known, f"{option} must be one of {', '.join(known)}; got {value!r}")
        need(all(0 < r < 1 for r in self.rtols), f"--rtols must be numbers in (0, 1); got {self.rtols}")
        need(self.rank_rule == "torch" or _is_rtol(self.rank_rule),
             f"--rank-rule must be torch or a number in (0, 1); got {self.rank_rule!r}")
        if self.rank_rule != "torch":
            self.rank_rule = f"{float(self.rank_rule):g}"  # "1e-2" and "0.01" name one rule
        return self


def _is_rtol(text: str) -> bool:
    try:
        return 0 < float(text) < 1
    except ValueError:
        return False


# What the paper states about each setting, and why we chose what it does not state.
SETTING_SOURCES: dict[str, tuple[bool, str]] = {
    "networks": (True, "Figure 1 caption (CVPR): averaged over 1,000 random-sized networks (arXiv v1: ten thousand)"),
    "d_out_min": (False, "d_out is random per network (stated), from a range (not stated); 16-64 keeps d_in >= 1 at ratio 0.1 and the run fast"),
    "d_out_max": (False, "see d_out_min"),
    "ratios": (True, "Figure 1's x axis, dimension ratio d_in/d_out from 0.1 to 1.0"),
    "blocks": (True, "Figure 1's four panels"),
    "activations": (True, "Figure 1's legend"),
    "samples": (False, "N > d_out is stated, N itself is not; 256 = 4 x the largest default d_out"),
    "input": (False, "X's distribution; standard normal entries"),
    "input_scale": (False, "X's scale; it matters only where BN does not directly follow a conv, and for the IB shortcut"),
    "input_centred": (False, "centred, as a BN'd previous layer's output is; an uncentred X adds the all-ones direction through "
                             "batch BN and the IB shortcut (linear IB rank d_in + 1, where the paper's linear line is y = x)"),
    "init": (False, "W's init; nn.Conv2d's default (uniform, bound 1/sqrt(fan_in), fan_in = d_in x k x k)"),
    "bn_order": (False, "'nonlinear functions with normalization (BN)' is stated, the order is not; conv-BN-act as in MobileNetV2/ReXNet"),
    "bn_mode": (False, "BN's mode; batch statistics over the N samples (training mode)"),
    "rank_rule": (False, "the rank rule; torch.linalg.matrix_rank's default on the float32 features, rtol = eps x max(N, d_out)"),
    "rtols": (False, "further rank rules, reported beside the primary one so its effect shows"),
    "expansion": (False, "the IB expansion; 6 as in MobileNetV2 and ReXNet"),
    "leaky_slope": (False, "LeakyReLU's slope; 0.01, PyTorch's default"),
    "seed": (False, "our random stream; results are averages over the networks"),
}


def provenance(settings: LayerSettings) -> list[dict]:
    """[{name, value, stated, note}] for every setting, in field order."""
    return [{"name": k, "value": v, "stated": SETTING_SOURCES[k][0],
             "note": ("stated by the paper: " if SETTING_SOURCES[k][0] else "not stated by the paper: ") + SETTING_SOURCES[k][1]}
            for k, v in asdict(settings).items()]


# ------------------------------------------------------------------------------------------------
# The rank measure
# ------------------------------------------------------------------------------------------------
def numerical_rank(singular_values: torch.Tensor, rtol: float) -> int:
    """Count of singular values above rtol times the largest (torch.linalg.matrix_rank's rule)."""
    if singular_values.numel() == 0:
        return 0
    return int((singular_values > rtol * singular_values.max()).sum())


def rule_rtol(rule: str, rows: int, cols: int) -> float:
    """The relative tolerance of a rank rule for a rows x cols float32 matrix."""
    return FLOAT32_EPS * max(rows, cols) if rule == "torch" else float(rule)


def batched_singular_values(y: torch.Tensor) -> torch.Tensor:
    """(B, d, N) float32 -> (B, d) singular values, descending, from the float64 Gram matrix."""
    yd = y.double()
    eig = torch.linalg.eigvalsh(yd @ yd.transpose(1, 2))
    return eig.clamp_min(0).sqrt().flip(-1)


def rank_counts(sv: torch.Tensor, rules: list[str], samples: int) -> dict[str, torch.Tensor]:
    """{rule: (B,) ranks} of (B, d) singular values of d x samples matrices."""
    top = sv[:, :1]
    return {rule: (sv > rule_rtol(rule, samples, sv.shape[1]) * top).sum(-1) for rule in rules}


# ------------------------------------------------------------------------------------------------
# The blocks, batched over networks of one shape: x is (B, channels, N)
# ------------------------------------------------------------------------------------------------
def _bn(z: torch.Tensor, mode: str) -> torch.Tensor:
    # No affine part: a fresh BN's weight is 1 and bias 0.
    if mode == "eval":  # fresh running statistics: mean 0, variance 1
        return z / math.sqrt(1 + BN_EPS)
    # Training-mode BN of a (B, C, N) batch: each channel of each network standardised over its N
    # samples (biased variance, eps inside the root). That is layer_norm over the last dim, ~7x
    # faster than mean/var here.
    return F.layer_norm(z, z.shape[-1:], eps=BN_EPS)


def _weight(g: torch.Generator, shape: tuple[int, ...], fan_in: int, init: str) -> torch.Tensor:
    if init == "normal":
        return torch.randn(*shape, generator=g)
    if init == "kaiming":  # He normal, fan_in, ReLU gain
        return torch.randn(*shape, generator=g) * math.sqrt(2 / fan_in)
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)): gain sqrt(1/3) * sqrt(3 / fan_in)
    return (torch.rand(*shape, generator=g) * 2 - 1) * bound


def _inputs(g: torch.Generator, shape: tuple[int, ...], s: LayerSettings) -> torch.Tensor:
    if s.input == "uniform":  # U(-sqrt 3, sqrt 3): unit variance
        x = (torch.rand(*shape, generator=g) * 2 - 1) * (math.sqrt(3) * s.input_scale)
    else:
        x = torch.randn(*shape, generator=g) * s.input_scale
    return x - x.mean(-1, keepdim=True) if s.input_centred else x


def _weights(kind: str, b: int, d_in: int, d_out: int, s: LayerSettings, g: torch.Generator) -> dict:
    if kind == "conv1x1":
        return {"w": _weight(g, (b, d_out, d_in), d_in, s.init)}
    if kind == "conv3x3":  # the centre tap of a 3x3 kernel
        return {"w": _weight(g, (b, d_out, d_in), 9 * d_in, s.init)}
    mid = s.expansion * d_in
    inner = _weight(g, (b, mid, 1), 9, s.init) if kind == "ib_dw" else _weight(g, (b, mid, mid), 9 * mid, s.init)
    return {"expand": _weight(g, (b, mid, d_in), d_in, s.init), "inner": inner,
            "project": _weight(g, (b, d_out, mid), mid, s.init)}


def first_product(kind: str, x: torch.Tensor, w: dict) -> torch.Tensor:
    """The block's first matrix product, the same for every activation (computed once)."""
    return (w["w"] if kind in ("conv1x1", "conv3x3") else w["expand"]) @ x


def block_output(kind: str, x: torch.Tensor, w: dict, act: str, s: LayerSettings,
                 first: torch.Tensor | None = None) -> torch.Tensor:
    """f(WX) of one block for a batch of networks: (B, d_in, N) -> (B, d_out, N)."""
    fn = ACTIVATIONS[act][1]
    first = first_product(kind, x, w) if first is None else first

    def norm_act(z: torch.Tensor) -> torch.Tensor:
        if s.bn_order == "after":
            return _bn(fn(z, s.leaky_slope), s.bn_mode)
        return fn(_bn(z, s.bn_mode), s.leaky_slope)

    if kind in ("conv1x1", "conv3x3"):
        return norm_act(first)
    # MobileNetV2/ReXNet block: 1x1 expand, BN+act; 3x3 (depthwise) conv, BN+act; 1x1 project, BN
    # (linear); then ReXNet's partial shortcut adds the input to the first d_in output channels.
    h = norm_act(first)
    h = norm_act(w["inner"] * h if kind == "ib_dw" else w["inner"] @ h)
    y = _bn(w["project"] @ h, s.bn_mode)
    d_in = x.shape[1]
    return torch.cat([y[:, :d_in] + x, y[:, d_in:]], dim=1)


# ------------------------------------------------------------------------------------------------
# The study
# ------------------------------------------------------------------------------------------------
def d_out_draws(s: LayerSettings) -> torch.Tensor:
    """d_out of each network, drawn once per run: the same networks' sizes at every point."""
    g = torch.Generator().manual_seed(s.seed)
    return torch.randint(s.d_out_min, s.d_out_max + 1, (s.networks,), generator=g)


def in_width(ratio: float, d_out: int) -> int:
    return max(1, round(ratio * d_out))


def layer_rank_sweep(settings: LayerSettings, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Mean rank ratio for every (block, activation, dimension ratio) under every rank rule.

    Returns one row per point: block, activation, ratio, realised_ratio (mean d_in/d_out),
    networks, rank_ratio {rule: mean}, rank_ratio_std {rule: std over networks}. Each network's X
    and W depend only on (seed, block, ratio, d_out) and every activation sees the same ones:
    the comparison between activations is paired.
    """
    settings.validate()
    # One thread: the matrices are small, and on shared cores intra-op threads mostly wait.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _sweep(settings, progress)
    finally:
        torch.set_num_threads(threads)


def _sweep(s: LayerSettings, progress: Callable[[str], None] | None) -> list[dict]:
    d_outs = d_out_draws(s)
    sizes = [(d, int((d_outs == d).sum())) for d in d_outs.unique().tolist()]
    rules, rows = s.rules, []
    for bi, kind in enumerate(s.blocks):
        start = time.perf_counter()
        for ri, ratio in enumerate(s.ratios):
            ratios = {a: {r: [] for r in rules} for a in s.activations}
            realised = []
            for d_out, count in sizes:
                d_in = in_width(ratio, d_out)
                g = torch.Generator().manual_seed(((s.seed * 1009 + bi) * 1013 + ri) * 1031 + d_out)
                x = _inputs(g, (count, d_in, s.samples), s)
                w = _weights(kind, count, d_in, d_out, s, g)
                realised += [d_in / d_out] * count
                first = first_product(kind, x, w)
                for a in s.activations:
                    sv = batched_singular_values(block_output(kind, x, w, a, s, first))
                    for rule, ranks in rank_counts(sv, rules, s.samples).items():
                        ratios[a][rule].append(ranks.double() / d_out)
            for a in s.activations:
                per_rule = {rule: torch.cat(v) for rule, v in ratios[a].items()}
                rows.append({"block": kind, "activation": a, "ratio": ratio,
                             "realised_ratio": sum(realised) / len(realised), "networks": s.networks,
                             "rank_ratio": {r: float(v.mean()) for r, v in per_rule.items()},
                             "rank_ratio_std": {r: float(v.std(unbiased=False)) for r, v in per_rule.items()}})
        if progress:
            progress(f"{BLOCKS[kind]}: {time.perf_counter() - start:.1f} s")
    return rows


def rank_table(rows: list[dict], rule: str | None = None) -> dict[str, dict[str, dict[float, float]]]:
    """rows -> {block: {activation: {ratio: mean rank ratio}}} under one rule (default: the first)."""
    table: dict[str, dict[str, dict[float, float]]] = {}
    for r in rows:
        value = r["rank_ratio"][rule] if rule else next(iter(r["rank_ratio"].values()))
        table.setdefault(r["block"], {}).setdefault(r["activation"], {})[r["ratio"]] = value
    return table


def environment() -> dict:
    """Versions and threads, recorded in settings.json (here and by rextransfer.analyze.features)."""
    import platform

    return {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()}
