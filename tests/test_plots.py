"""PNG plots: valid files of the documented size, robust to empty and missing data."""

import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from rextransfer.core import plots


def _open_verified(path):
    with Image.open(path) as im:
        im.verify()  # raises on a truncated or corrupt file
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im


def _panel(title, n_series=3, n=10):
    xs = [0.1 * i for i in range(1, n + 1)]
    return {"title": title, "xlabel": "dimension ratio", "ylabel": "rank ratio",
            "series": [{"label": f"s{k}", "x": xs, "y": [x * (1 + k / 10) for x in xs], "marker": k == 0}
                       for k in range(n_series)]}


def test_line_panels_grid_size_and_valid_png(tmp_path):
    out = plots.line_panels(tmp_path / "sub" / "p.png", [_panel(f"p{i}") for i in range(4)],
                            title="four panels", ncols=2, panel_size=(300, 200))
    im = _open_verified(out)
    assert im.size == (2 * 300, 30 + 2 * 200)
    # No temp files are left beside the result.
    assert [p.name for p in out.parent.iterdir()] == ["p.png"]


def test_line_panels_default_layout_wraps_rows(tmp_path):
    im = _open_verified(plots.line_panels(tmp_path / "p.png", [_panel(f"p{i}") for i in range(3)]))
    assert im.size == (2 * 420, 2 * 320)  # 3 panels -> ceil(sqrt(3)) = 2 columns, 2 rows, no title


def test_line_panels_draw_series_colours(tmp_path):
    path = plots.line_panels(tmp_path / "p.png", [_panel("one", n_series=2)])
    with Image.open(path) as im:
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert plots.PALETTE[0] in colours and plots.PALETTE[1] in colours


def test_empty_missing_and_log_data_do_not_crash(tmp_path):
    panels = [
        {"title": "empty", "series": []},
        {"title": "empty series", "series": [{"label": "nothing", "x": [], "y": []}]},
        {"title": "gaps", "series": [{"label": "nan", "x": [1, 2, 3, 4], "y": [1.0, float("nan"), None, 2.0]}]},
        {"title": "log", "xlog": True, "ylog": True,
         "series": [{"label": "spectrum", "x": list(range(1, 50)), "y": [math.exp(-i / 5) for i in range(1, 50)]},
                    {"label": "zeros", "x": [0, 1], "y": [0.0, -1.0]}]},
        {"title": "constant", "ylim": (0, 1), "series": [{"label": "c", "x": [5, 5], "y": [0.5, 0.5], "marker": True}]},
        {"title": "scatter", "series": [{"label": "models", "x": [0.4, 4.1], "y": [81.0, 84.0], "marker": True,
                                         "line": False, "point_labels": ["rexnet", "resnet50"]}]},
    ]
    im = _open_verified(plots.line_panels(tmp_path / "p.png", panels, ncols=3))
    assert im.size == (3 * 420, 2 * 320)
    assert _open_verified(plots.line_panels(tmp_path / "none.png", []))


def test_heatmap_small_with_labels(tmp_path):
    m = [[5, 1, 0], [2, 7, 1], [0, float("nan"), 9]]
    im = _open_verified(plots.heatmap(tmp_path / "h.png", m, row_labels=["a", "b", "c"],
                                      col_labels=["a", "b", "c"], title="confusion"))
    assert im.width > 3 * 40 and im.height > 3 * 40


def test_heatmap_200_classes_omits_labels(tmp_path):
    rng = random.Random(0)
    m = [[rng.random() for _ in range(200)] for _ in range(200)]
    labels = [f"class_{i}" for i in range(200)]
    path = plots.heatmap(tmp_path / "h.png", m, row_labels=labels, col_labels=labels)
    im = _open_verified(path)
    assert 600 <= im.width <= 1000 and 600 <= im.height <= 1000
    # With labels past max_labels omitted, the picture is the same as with no labels at all.
    bare = plots.heatmap(tmp_path / "bare.png", m)
    with Image.open(bare) as b:
        assert b.tobytes() == im.tobytes()


def test_heatmap_constant_and_empty(tmp_path):
    assert _open_verified(plots.heatmap(tmp_path / "c.png", [[1, 1], [1, 1]]))
    assert _open_verified(plots.heatmap(tmp_path / "e.png", []))


def test_heatmap_cells_use_viridis_and_missing_grey(tmp_path):
    m = [[0.0, 1.0], [float("nan"), None]]
    with Image.open(plots.heatmap(tmp_path / "h.png", m)) as im:
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert plots.MISSING in colours
    assert (68, 1, 84) in colours and (253, 231, 36) in colours  # viridis at min and max


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(plots.os, "replace", boom)
    with pytest.raises(OSError):
        plots.line_panels(tmp_path / "p.png", [_panel("x")])
    assert list(tmp_path.iterdir()) == []


def test_written_file_is_world_readable(tmp_path):
    path = plots.heatmap(tmp_path / "h.png", [[1, 2], [3, 4]])
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_no_pyplot_figures_leak(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.line_panels(tmp_path / "p.png", [_panel("x")], title="t")
    plots.heatmap(tmp_path / "h.png", [[1, 2], [3, 4]], title="t")
    assert plt.get_fignums() == before


def test_import_does_not_import_matplotlib():
    code = "import rextransfer.core.plots, sys; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_lone_point_between_gaps_is_drawn(tmp_path):
    def blue_pixels(xlim):
        series = [{"label": "lone", "x": [1, 2, 3], "y": [None, 1.5, math.nan]}]
        panel = {"xlim": xlim, "ylim": (0, 3), "series": series}
        with Image.open(plots.line_panels(tmp_path / "p.png", [panel])) as im:
            return dict((c, n) for n, c in im.convert("RGB").getcolors(1 << 20)).get(plots.PALETTE[0], 0)
    # In view the point gets a marker; scrolled out of view only the legend entry is left.
    assert blue_pixels((0, 4)) > blue_pixels((10, 20)) > 0
