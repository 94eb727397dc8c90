"""The ReXNet paper's expressiveness measures: the rank of a layer's output feature matrix.

Two analyses:

* `layer_rank_sweep` — the paper's single-layer study (Han et al., CVPR 2021, Sec. 3.2): random
  inputs X (d_in channels) through one random layer with d_out output channels, then the
  *rank ratio* = numerical rank of the output feature matrix / d_out, swept over the dimension
  ratio d_in / d_out and averaged over seeds. Layers: a 1x1 convolution, a 3x3 convolution, an
  inverted bottleneck with a 3x3 convolution inside and one with a 3x3 depthwise convolution
  inside. Each convolution is followed by batch normalisation (the paper's "nonlinear functions
  with normalization (we use BN here)") and the activation under test.
* `feature_spectrum` — singular values, numerical rank and normalised nuclear norm of a backbone's
  penultimate features on real images, the measure the paper uses to compare ReXNet with
  MobileNetV2; here it compares backbones, or a model before and after fine-tuning. It lives in
  `rextransfer.features`, which imports `numerical_rank` from here.

Numerical rank: the number of singular values above `rtol * s_max` (the definition of
`torch.linalg.matrix_rank`). In exact arithmetic any non-polynomial activation makes f(WX) full
rank, so the rank the paper reports is a *numerical* one: the default rtol = 1e-4 is about what
`matrix_rank` uses on float32 features by default (max(m, n) * eps_float32 = 1.2e-4 for the default
1024 x 64 matrix), i.e. the precision of the paper's features. Layers run in float32 (round-off
~1e-6 relative, far below rtol) and the SVD in float64.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

# CLI name -> (display name, function). "none" keeps the layer linear (BN only).
ACTIVATIONS: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "none": ("none", lambda x: x),
    "relu": ("ReLU", F.relu),
    "relu6": ("ReLU6", F.relu6),
    "elu": ("ELU", F.elu),
    "softplus": ("SoftPlus", F.softplus),
    "hardswish": ("Hard-Swish", F.hardswish),
    "silu": ("SiLU", F.silu),
}
LAYERS: dict[str, str] = {
    "conv1x1": "1x1 conv",
    "conv3x3": "3x3 conv",
    "ib": "inverted bottleneck (3x3 conv)",
    "ib_dw": "inverted bottleneck (3x3 depthwise)",
}
DEFAULT_RATIOS = [round(0.1 * i, 1) for i in range(1, 11)]  # the paper's range [0.1, 1.0]


@dataclass
class LayerSettings:
    """Settings of the single-layer study; written beside the results."""

    out_width: int = 64             # d_out, output channels of the layer
    ratios: list[float] = field(default_factory=lambda: list(DEFAULT_RATIOS))  # d_in / d_out
    samples: int = 16               # random input images per seed (N)
    size: int = 8                   # input height = width, px; features have samples*size^2 rows
    seeds: int = 5                  # independent draws of inputs and weights, averaged
    seed: int = 0                   # first seed
    rtol: float = 1e-4              # numerical rank: singular values > rtol * s_max
    expansion: int = 6              # inverted bottleneck expansion ratio (MobileNetV2/ReXNet)
    layers: list[str] = field(default_factory=lambda: list(LAYERS))
    activations: list[str] = field(default_factory=lambda: list(ACTIVATIONS))

    def validate(self) -> "LayerSettings":
        from ..core.errors import UsageError

        if self.out_width < 2:
            raise UsageError(f"--out-width must be at least 2; got {self.out_width}")
        if not self.ratios or any(not (r > 0 and math.isfinite(r)) for r in self.ratios):
            raise UsageError(f"--ratios must be positive numbers; got {self.ratios}")
        if self.samples < 1 or self.size < 1 or self.seeds < 1 or self.expansion < 1:
            raise UsageError("--samples, --size, --seeds and --expansion must be at least 1")
        if not 0 < self.rtol < 1:
            raise UsageError(f"--rtol must be in (0, 1); got {self.rtol}")
        for name, given, known in (("layer", self.layers, LAYERS), ("activation", self.activations, ACTIVATIONS)):
            unknown = [g for g in given if g not in known]
            if unknown or not given:
                raise UsageError(f"unknown {name} {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
        if self.samples * self.size * self.size < self.out_width:
            raise UsageError(f"samples * size^2 = {self.samples * self.size ** 2} rows cannot show rank "
                             f"{self.out_width}; raise --samples or --size (the paper uses N > d_out)")
        return self

    def in_width(self, ratio: float) -> int:
        return max(1, round(ratio * self.out_width))


def numerical_rank(singular_values: torch.Tensor, rtol: float) -> int:
    """Count of singular values above rtol times the largest (torch.linalg.matrix_rank's rule)."""
    if singular_values.numel() == 0:
        return 0
    return int((singular_values > rtol * singular_values.max()).sum())


def feature_matrix(y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) layer output -> (N*H*W, C): one row per spatial sample, one column per channel."""
    return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])


# ------------------------------------------------------------------------------------------------
# The single-layer study
# ------------------------------------------------------------------------------------------------
def _bn(x: torch.Tensor) -> torch.Tensor:
    # Batch statistics, no affine: every channel enters the activation at zero mean, unit variance,
    # so activations act in their non-linear range whatever the weight scale.
    return F.batch_norm(x, None, None, training=True)


def _weight(g: torch.Generator, c_out: int, c_in: int, k: int) -> torch.Tensor:
    # Standard normal weights; the scale is irrelevant because BN follows every convolution.
    return torch.randn(c_out, c_in, k, k, generator=g)


def _layer_weights(kind: str, d_in: int, d_out: int, expansion: int, g: torch.Generator) -> dict:
    if kind == "conv1x1":
        return {"w": _weight(g, d_out, d_in, 1)}
    if kind == "conv3x3":
        return {"w": _weight(g, d_out, d_in, 3)}
    mid = d_in * expansion
    return {
        "expand": _weight(g, mid, d_in, 1),
        "mid": _weight(g, mid, 1, 3) if kind == "ib_dw" else _weight(g, mid, mid, 3),
        "project": _weight(g, d_out, mid, 1),
    }


def _pre_activation(kind: str, x: torch.Tensor, w: dict) -> torch.Tensor:
    """BN(conv(x)) of a plain convolution; the activation is applied by the caller."""
    return _bn(F.conv2d(x, w["w"], padding=w["w"].shape[-1] // 2))


def _inverted_bottleneck(x: torch.Tensor, w: dict, act: Callable, depthwise: bool) -> torch.Tensor:
    """MobileNetV2/ReXNet block: 1x1 expand+BN+act, 3x3 (depthwise) conv+BN+act, 1x1 project+BN
    (linear), then ReXNet's partial shortcut: the input is added to the first d_in output channels
    (timm's rexnet.py; used when d_in <= d_out). The activation under test replaces both inner
    activations; the block output is taken after the addition, as in the paper."""
    h = act(_bn(F.conv2d(x, w["expand"])))
    h = act(_bn(F.conv2d(h, w["mid"], padding=1, groups=h.shape[1] if depthwise else 1)))
    y = _bn(F.conv2d(h, w["project"]))
    d_in = x.shape[1]
    if d_in <= y.shape[1]:
        y = torch.cat([y[:, :d_in] + x, y[:, d_in:]], dim=1)
    return y


def layer_rank_sweep(settings: LayerSettings, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Rank ratios for every (layer, activation, dimension ratio), averaged over seeds.

    Returns one row per combination: layer, activation, ratio, d_in, d_out, rank_ratio (mean),
    rank_ratio_std (over seeds), ranks (per seed). Inputs and weights depend only on
    (seed, layer, ratio), so every activation sees the same X and W: comparisons are paired.
    """
    settings.validate()
    # One thread: these matrices are small, and on 2 shared cores intra-op threading made the
    # default sweep 3x slower (18 s vs 5 s measured), the threads mostly waiting for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _sweep(settings, progress)
    finally:
        torch.set_num_threads(threads)


def _sweep(settings: LayerSettings, progress: Callable[[str], None] | None) -> list[dict]:
    d_out = settings.out_width
    rows = []
    for li, kind in enumerate(settings.layers):
        start = time.perf_counter()
        ranks: dict[tuple[str, int], list[int]] = {}
        for ri, ratio in enumerate(settings.ratios):
            d_in = settings.in_width(ratio)
            for s in range(settings.seed, settings.seed + settings.seeds):
                g = torch.Generator().manual_seed(1_000_003 * s + 1009 * li + ri)
                x = torch.randn(settings.samples, d_in, settings.size, settings.size, generator=g)
                w = _layer_weights(kind, d_in, d_out, settings.expansion, g)
                z = _pre_activation(kind, x, w) if kind.startswith("conv") else None
                for a in settings.activations:
                    act = ACTIVATIONS[a][1]
                    y = act(z) if z is not None else _inverted_bottleneck(x, w, act, depthwise=kind == "ib_dw")
                    sv = torch.linalg.svdvals(feature_matrix(y).double())
                    ranks.setdefault((a, ri), []).append(numerical_rank(sv, settings.rtol))
        for a in settings.activations:
            for ri, ratio in enumerate(settings.ratios):
                r = torch.tensor(ranks[(a, ri)], dtype=torch.float64) / d_out
                rows.append({
                    "layer": kind, "activation": a, "ratio": ratio, "d_in": settings.in_width(ratio),
                    "d_out": d_out, "rank_ratio": float(r.mean()),
                    "rank_ratio_std": float(r.std(unbiased=False)), "ranks": ranks[(a, ri)],
                })
        if progress:
            progress(f"{LAYERS[kind]}: {time.perf_counter() - start:.1f} s")
    return rows


def rank_table(rows: list[dict]) -> dict[str, dict[str, dict[float, float]]]:
    """rows -> {layer: {activation: {ratio: mean rank ratio}}}."""
    table: dict[str, dict[str, dict[float, float]]] = {}
    for r in rows:
        table.setdefault(r["layer"], {}).setdefault(r["activation"], {})[r["ratio"]] = r["rank_ratio"]
    return table


def layer_panels(rows: list[dict]) -> list[dict]:
    """One plots.line_panels panel per layer type, one curve per activation."""
    panels = []
    for layer, by_act in rank_table(rows).items():
        series = [{"label": ACTIVATIONS[a][0], "x": list(v), "y": list(v.values()), "marker": True}
                  for a, v in by_act.items()]
        panels.append({"title": LAYERS[layer], "xlabel": "dimension ratio d_in / d_out",
                       "ylabel": "rank ratio", "ylim": (0, 1.05), "series": series})
    return panels


# ------------------------------------------------------------------------------------------------
# Result files
# ------------------------------------------------------------------------------------------------
def environment() -> dict:
    """Versions and threads, recorded in settings.json (here and by rextransfer.features)."""
    import platform

    return {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()}


def write_layer_results(out_dir, settings: LayerSettings, rows: list[dict], wall_s: float) -> dict[str, Path]:
    """layers.csv (one row per layer x activation x ratio), layers.png, settings.json."""
    import csv
    import io

    from ..core import plots
    from ..core.files import write_json, write_text

    out = Path(out_dir)
    buf = io.StringIO()
    fields = ["layer", "activation", "ratio", "d_in", "d_out", "rank_ratio", "rank_ratio_std", "ranks"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "rank_ratio": f"{r['rank_ratio']:.6f}", "rank_ratio_std": f"{r['rank_ratio_std']:.6f}",
                         "ranks": " ".join(map(str, r["ranks"]))})
    paths = {"csv": out / "layers.csv", "png": out / "layers.png", "settings": out / "settings.json"}
    write_text(paths["csv"], buf.getvalue())
    title = (f"Rank ratio of one random layer: d_out={settings.out_width}, "
             f"{settings.samples}x{settings.size}x{settings.size} inputs, rtol={settings.rtol:g}, {settings.seeds} seeds")
    plots.line_panels(paths["png"], layer_panels(rows), title=title, ncols=2)
    write_json(paths["settings"], {"analysis": "layers", **asdict(settings), "wall_time_s": round(wall_s, 2),
                                   "feature_rows": settings.samples * settings.size ** 2,
                                   **environment(), "threads": 1})  # the sweep runs on one thread
    return paths
