"""`rextransfer compare`: the paper's table rebuilt from run summaries, in every output format.

The runs here are summary.json files written by the test (the documented run-folder contract), so
every expected number is known: seeds pooled into mean ± sample std, differences vs the paper,
missing cells, incomplete runs, throughput from runs or from a bench file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rextransfer.cli.app import app
from rextransfer.core.errors import RunError

runner = CliRunner()
DASH = "—"


def write_summary(runs: Path, dataset: str, name: str, **fields) -> Path:
    s = {
        "run_name": name, "dataset": dataset, "model": "rexnet", "width": 1.0, "timm_name": "rexnet_100",
        "weight_tag": "rexnet_100.nav_in1k", "pretrained": True, "recipe": "kornblith", "seed": 0, "img_size": 224,
        "num_classes": 10, "train_size": 100, "eval_size": 50, "eval_split": "test", "headline_metric": "top1",
        "headline": 50.0, "final": {"top1": 50.0, "top5": 90.0, "mean_class_acc": 49.0, "loss": 1.0},
        "best": {"top1": 50.0, "top5": 90.0, "mean_class_acc": 49.0, "loss": 1.0, "epoch": 1, "step": 10},
        "params_m": 3.9, "gmacs": 0.4, "train_img_per_s": 100.0, "eval_img_per_s": 400.0, "wall_time_s": 60.0,
        "device": "cuda:NVIDIA H100", "epochs": 1, "steps": 10, "status": "complete",
        "finished_at": "2025-01-01T00:00:00+00:00",
    }
    s.update(fields)
    folder = runs / dataset / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(s))
    return folder


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """A grid with repeated seeds, single seeds, missing cells and runs that must not count."""
    runs = tmp_path / "runs"
    # Food-101, ReXNet x1.0: three seeds -> 88.50 ± 0.50 (sample std), paper 88.4 -> +0.10.
    for seed, acc, tr, ev, wall in ((0, 88.0, 100.0, 1000.0, 60.0), (1, 89.0, 200.0, 1100.0, 120.0), (2, 88.5, 300.0, 1200.0, 180.0)):
        write_summary(runs, "food101", f"rexnet-s{seed}", seed=seed, headline=acc, train_img_per_s=tr,
                      eval_img_per_s=ev, wall_time_s=wall, params_m=4.0, gmacs=0.41)
    # Food-101, ResNet50 (timm's a1_in1k weights): one seed -> std "—", paper 87.0 -> -0.75.
    write_summary(runs, "food101", "r50-s0", model="resnet50", timm_name="resnet50", weight_tag="resnet50.a1_in1k",
                  headline=86.25, params_m=23.7, gmacs=4.1, train_img_per_s=50.0, eval_img_per_s=150.0,
                  wall_time_s=4000.0)
    # Cars, ReXNet x1.0: two seeds -> 91.00 ± 1.41, paper 91.5 -> -0.50.
    write_summary(runs, "cars", "rexnet-s0", seed=0, headline=90.0, params_m=4.05, gmacs=0.41)
    write_summary(runs, "cars", "rexnet-s1", seed=1, headline=92.0, params_m=4.05, gmacs=0.41)
    # Aircraft, EfficientNet-B0, mean per-class accuracy, no throughput measured -> paper 87.1 -> -7.10.
    write_summary(runs, "aircraft", "effb0-s0", model="efficientnet_b0", timm_name="efficientnet_b0",
                  weight_tag="efficientnet_b0.ra_in1k", headline=80.0, headline_metric="mean_class_acc", params_m=4.2,
                  gmacs=0.39, train_img_per_s=None, eval_img_per_s=None, wall_time_s=30.0)
    # Food-101, ReXNet from scratch: its own row, no paper number.
    write_summary(runs, "food101", "rexnet-scratch", pretrained=False, weight_tag=None, headline=40.0)
    # Not results: an interrupted run, a failed one, and a folder with only a config.
    write_summary(runs, "food101", "effb0-interrupted", model="efficientnet_b0", status="interrupted", headline=None)
    write_summary(runs, "cars", "r50-failed", model="resnet50", status="failed", headline=None)
    (runs / "cars" / "just-started").mkdir(parents=True)
    (runs / "cars" / "just-started" / "config.yaml").write_text("model: rexnet\n")
    return runs


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def md_tables(text: str) -> dict[str, list[list[str]]]:
    """Markdown output -> {heading: rows (header first)}."""
    tables, title = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:]
            tables[title] = []
        elif line.startswith("|") and not line.startswith("|---"):
            tables[title].append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return tables


def rich_tables(text: str) -> dict[str, list[list[str]]]:
    """Rich box-drawn output -> {title: rows (header first)}."""
    tables, title, prev = {}, None, ""
    for line in text.splitlines():
        if line.startswith("┏"):
            title = prev.strip()
            tables[title] = []
        elif line.startswith(("┃", "│")):
            tables[title].append([c.strip() for c in line[1:].rstrip()[:-1].replace("┃", "│").split("│")])
        prev = line
    return tables


def by_label(rows: list[list[str]], datasets: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """Rows keyed by their first cell; a dataset's "paper" and "Δ" columns get its name as prefix."""
    header, names, last = rows[0], [], None
    for h in header:
        names.append(f"{last} {h}" if h in ("paper", "Δ") and last in datasets else h)
        last = last if h in ("paper", "Δ") else h
    return {row[0]: dict(zip(names, row)) for row in rows[1:]}


PAPER4 = ("food101", "cars", "aircraft", "flowers102")
OVERVIEW = "Fine-grained transfer, headline metric (%): ours (mean ± sample std over seeds) vs ReXNet paper"
REX, R50, EFF, SCRATCH = "ReXNet x1.0 (nav_in1k)", "ResNet50 (a1_in1k)", "EfficientNet-B0 (ra_in1k)", "ReXNet x1.0 (random init)"


def check_overview(rows: dict[str, dict[str, str]]) -> None:
    assert list(rows) == [REX, SCRATCH, EFF, R50]  # paper order, pretrained before scratch
    rex = rows[REX]
    assert (rex["params (M)"], rex["GMACs"]) == ("4.80", "0.40")  # the ImageNet model (paper_results.yaml)
    assert (rex["food101"], rex["food101 paper"], rex["food101 Δ"]) == ("88.50 ± 0.50 (n=3)", "88.4", "+0.10")
    assert (rex["cars"], rex["cars paper"], rex["cars Δ"]) == ("91.00 ± 1.41 (n=2)", "91.5", "-0.50")
    assert (rex["aircraft"], rex["aircraft paper"], rex["aircraft Δ"]) == (DASH, "89.5", DASH)
    assert (rex["flowers102"], rex["flowers102 paper"], rex["flowers102 Δ"]) == (DASH, "97.8", DASH)
    # Row throughput = median over the row's runs (food 100/200/300, cars 100/100; eval 1000..1200, 400, 400).
    assert (rex["train img/s"], rex["eval img/s"]) == ("100", "1000")
    r50 = rows[R50]
    assert (r50["params (M)"], r50["GMACs"]) == ("25.56", "4.11")
    assert (r50["food101"], r50["food101 paper"], r50["food101 Δ"]) == ("86.25 (n=1)", "87.0", "-0.75")
    assert (r50["cars"], r50["cars paper"]) == (DASH, "92.6")
    eff = rows[EFF]
    assert (eff["aircraft"], eff["aircraft paper"], eff["aircraft Δ"]) == ("80.00 (n=1)", "87.1", "-7.10")
    assert (eff["train img/s"], eff["eval img/s"]) == (DASH, DASH)
    scratch = rows[SCRATCH]
    assert (scratch["food101"], scratch["food101 paper"], scratch["food101 Δ"]) == ("40.00 (n=1)", DASH, DASH)


def check_food_detail(rows: dict[str, dict[str, str]]) -> None:
    rex = rows[REX]
    assert rex == {"backbone": REX, "recipe": "kornblith", "img": "224", "n": "3", "mean": "88.50", "± std": "0.50",
                   "paper": "88.4", "Δ": "+0.10", "params (M)": "4.00", "GMACs": "0.41", "train img/s": "200",
                   "eval img/s": "1100", "device": "cuda:NVIDIA H100", "wall/run": "2m 00s"}
    r50 = rows[R50]
    assert (r50["n"], r50["mean"], r50["± std"], r50["paper"], r50["Δ"]) == ("1", "86.25", DASH, "87.0", "-0.75")
    assert (r50["train img/s"], r50["eval img/s"], r50["wall/run"]) == ("50.0", "150", "1h 06m")
    eff = rows[EFF]  # missing cell: the paper's number and the model's published size, nothing measured
    assert (eff["n"], eff["mean"], eff["± std"], eff["Δ"], eff["paper"]) == ("0", DASH, DASH, DASH, "87.5")
    assert (eff["params (M)"], eff["GMACs"], eff["train img/s"], eff["wall/run"]) == ("5.29", "0.40", DASH, DASH)


def test_table_has_every_number(grid: Path):
    tables = rich_tables(invoke("compare", "--runs", str(grid)))
    check_overview(by_label(tables[OVERVIEW], PAPER4))
    check_food_detail(by_label(tables["Food-101 (food101): top1 (%)"]))
    cars = by_label(tables["Stanford Cars (cars): top1 (%)"])[REX]
    assert (cars["n"], cars["mean"], cars["± std"], cars["Δ"]) == ("2", "91.00", "1.41", "-0.50")
    assert "FGVC Aircraft (variants) (aircraft): mean_class_acc (%)" in tables
    # The published numbers, both references, with their sources.
    refs = tables["Published numbers (paper_results.yaml)"]
    assert ["ReXNet paper", "ReXNet x1.0", "88.4", "91.5", "89.5", "97.8"] in refs
    assert ["ReXNet paper", "ResNet50", "87.0", "92.6", "89.4", "97.7"] in refs
    assert ["ReXNet paper", "EfficientNet-B0", "87.5", "90.7", "87.1", "97.3"] in refs
    assert any(r[1:] == ["ResNet50", "88.3", "92.1", "86.0", "97.6"] and "SimCLR" in r[0] for r in refs)
    # Runs that are not complete are listed, not counted.
    inc = {(r[0], r[1]): r[2] for r in tables["Not counted (run not complete)"][1:]}
    assert inc == {("food101", "effb0-interrupted"): "interrupted", ("cars", "r50-failed"): "failed",
                   ("cars", "just-started"): "in progress (no summary yet)"}


def test_markdown_has_every_number_and_out_file(grid: Path, tmp_path: Path):
    text = invoke("compare", "--runs", str(grid), "--format", "markdown")
    tables = md_tables(text)
    check_overview(by_label(tables[OVERVIEW], PAPER4))
    check_food_detail(by_label(tables["Food-101 (food101): top1 (%)"]))
    out = tmp_path / "table.md"
    invoke("compare", "--runs", str(grid), "--format", "markdown", "--out", str(out))
    assert out.read_text() == text


def test_csv_has_every_number(grid: Path):
    rows = list(csv.DictReader(io.StringIO(invoke("compare", "--runs", str(grid), "--format", "csv"))))
    cells = {(r["dataset"], r["backbone"]): r for r in rows}
    assert len(rows) == 4 * 4  # 4 backbone rows x the paper's 4 datasets, missing ones included
    rex = cells[("food101", REX)]
    assert (rex["n"], rex["seeds"], rex["paper"], rex["metric"]) == ("3", "0;1;2", "88.4", "top1")
    assert (rex["model"], rex["width"], rex["weight_tag"], rex["pretrained"]) == ("rexnet", "1.0", "rexnet_100.nav_in1k", "True")
    assert float(rex["mean"]) == pytest.approx(88.5) and float(rex["std"]) == pytest.approx(0.5)
    assert float(rex["diff"]) == pytest.approx(0.1)
    assert (float(rex["params_m"]), float(rex["gmacs"])) == (4.0, 0.41)
    assert (float(rex["train_img_per_s"]), float(rex["eval_img_per_s"]), rex["throughput_source"]) == (200.0, 1100.0, "run")
    assert float(rex["wall_time_s"]) == 120.0 and rex["recipe"] == "kornblith" and rex["img_size"] == "224"
    cars = cells[("cars", REX)]
    assert float(cars["std"]) == pytest.approx(statistics.stdev([90.0, 92.0]), abs=1e-4) == pytest.approx(math.sqrt(2), abs=1e-4)
    r50 = cells[("food101", R50)]
    assert (r50["n"], r50["std"], float(r50["diff"])) == ("1", "", -0.75)  # n = 1: no std
    missing = cells[("flowers102", EFF)]
    assert (missing["n"], missing["mean"], missing["std"], missing["diff"], missing["paper"]) == ("0", "", "", "", "97.3")
    air = cells[("aircraft", EFF)]
    assert (air["metric"], float(air["mean"]), float(air["diff"])) == ("mean_class_acc", 80.0, pytest.approx(-7.1))
    assert cells[("food101", SCRATCH)]["paper"] == ""


def test_json_has_every_number(grid: Path):
    data = json.loads(invoke("compare", "--runs", str(grid), "--format", "json"))
    assert [d["name"] for d in data["datasets"]] == ["food101", "cars", "aircraft", "flowers102"]
    assert [d["metric"] for d in data["datasets"]] == ["top1", "top1", "mean_class_acc", "mean_class_acc"]
    cells = {(c["dataset"], c["backbone"]): c for c in data["cells"]}
    rex = cells[("food101", REX)]
    assert (rex["n"], rex["seeds"], rex["paper"]) == (3, [0, 1, 2], 88.4)
    assert rex["mean"] == pytest.approx(88.5) and rex["std"] == pytest.approx(0.5) and rex["diff"] == pytest.approx(0.1)
    assert len(rex["runs"]) == 3 and all(Path(p).is_dir() for p in rex["runs"])
    assert cells[("food101", R50)]["std"] is None
    assert cells[("cars", REX)]["std"] == pytest.approx(math.sqrt(2), abs=1e-4)
    missing = cells[("aircraft", REX)]
    assert (missing["n"], missing["mean"], missing["std"], missing["diff"], missing["paper"]) == (0, None, None, None, 89.5)
    rows = {r["backbone"]: r for r in data["rows"]}
    assert (rows[R50]["params_m"], rows[R50]["gmacs"]) == (25.56, 4.11)
    refs = {r["id"]: r for r in data["references"]}
    assert refs["kornblith_simclr"]["results"]["resnet50@1.0"] == {"food101": 88.3, "cars": 92.1, "aircraft": 86.0, "flowers102": 97.6}
    assert refs["rexnet_paper"]["source"]["title"] == "Rethinking Channel Dimensions for Efficient Model Design"
    assert {i["name"]: i["status"] for i in data["incomplete"]} == {
        "effb0-interrupted": "interrupted", "r50-failed": "failed", "just-started": "in progress (no summary yet)"}
    assert data["conventions"]["std"].startswith("sample standard deviation (ddof=1)")


def test_plot_is_a_png(grid: Path, tmp_path: Path):
    from PIL import Image

    png = tmp_path / "acc_vs_gmacs.png"
    invoke("compare", "--runs", str(grid), "--plot", str(png), "--format", "csv")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        img.verify()
    with Image.open(png) as img:
        assert img.width >= 400 and img.height >= 300


def test_filters_aliases_and_extra_datasets(grid: Path):
    write_summary(grid, "demo", "rexnet-demo", headline=75.0)
    data = json.loads(invoke("compare", "--runs", str(grid), "--format", "json"))
    assert [d["name"] for d in data["datasets"]] == ["food101", "cars", "aircraft", "flowers102", "demo"]
    assert {(c["dataset"], c["backbone"]): c["mean"] for c in data["cells"]}[("demo", REX)] == 75.0
    # Aliases and model filters: only Food-101, only ReXNet rows (pretrained and scratch).
    data = json.loads(invoke("compare", "--runs", str(grid), "--format", "json", "--datasets", "food", "--models", "rexnet"))
    assert [d["name"] for d in data["datasets"]] == ["food101"]
    assert [r["backbone"] for r in data["rows"]] == [REX, SCRATCH]
    assert [i["name"] for i in data["incomplete"]] == ["effb0-interrupted"]  # only Food-101's
    # An image-folder dataset is shown under its folder's name, as its runs are stored.
    write_summary(grid, "my_birds", "rexnet-birds", headline=66.0)
    data = json.loads(invoke("compare", "--runs", str(grid), "-f", "json", "-d", str(grid.parent / "photos" / "my_birds")))
    assert [(c["dataset"], c["mean"]) for c in data["cells"] if c["n"]] == [("my_birds", 66.0)]
    data = json.loads(invoke("compare", "--runs", str(grid), "-f", "json", "-d", "cars,food101", "-m", "resnet50"))
    assert [d["name"] for d in data["datasets"]] == ["cars", "food101"]
    assert [r["backbone"] for r in data["rows"]] == [R50]


def test_other_widths_use_the_weights_registry_and_have_no_paper_number(tmp_path: Path):
    runs = tmp_path / "runs"
    write_summary(runs, "cars", "w13", width=1.3, timm_name="rexnet_130", weight_tag="rexnet_130.nav_in1k", headline=92.5)
    rows = by_label(md_tables(invoke("compare", "--runs", str(runs), "-f", "markdown", "-d", "cars"))[OVERVIEW], ("cars",))
    assert list(rows) == [REX, "ReXNet x1.3 (nav_in1k)", EFF, "ResNet50 (tv_in1k)"]
    w13 = rows["ReXNet x1.3 (nav_in1k)"]
    assert (w13["params (M)"], w13["GMACs"], w13["cars"], w13["cars paper"], w13["cars Δ"]) == ("7.56", "0.68", "92.50 (n=1)", DASH, DASH)


def test_throughput_falls_back_to_bench_file(grid: Path):
    bench = {"kind": "rextransfer-bench", "device": "cpu", "created_at": "2025-01-01T00:00:00+00:00",
             "img_size": 64, "batch_size": 16,
             "results": [{"model": "efficientnet_b0", "width": 1.0, "train_img_per_s": 12.5, "eval_img_per_s": 120.0},
                         {"model": "rexnet", "width": 1.0, "train_img_per_s": 11.0, "eval_img_per_s": 55.0}]}
    (grid / "bench").mkdir()
    (grid / "bench" / "bench-cpu.json").write_text(json.dumps(bench))
    text = invoke("compare", "--runs", str(grid), "--format", "markdown")
    rows = by_label(md_tables(text)[OVERVIEW], PAPER4)
    assert (rows[EFF]["train img/s"], rows[EFF]["eval img/s"]) == ("12.5†", "120†")  # no run measured it
    assert (rows[REX]["train img/s"], rows[REX]["eval img/s"]) == ("100", "1000")    # its runs win
    assert "† throughput from `rextransfer bench` (cpu, 64 px, batch 16" in text
    cells = {(c["dataset"], c["backbone"]): c for c in json.loads(invoke("compare", "--runs", str(grid), "-f", "json"))["cells"]}
    assert (cells[("aircraft", EFF)]["train_img_per_s"], cells[("aircraft", EFF)]["throughput_source"]) == (12.5, "bench")
    assert cells[("food101", REX)]["throughput_source"] == "run"


def test_several_recipes_for_one_cell_get_their_own_rows(tmp_path: Path):
    runs = tmp_path / "runs"
    write_summary(runs, "cars", "a", recipe="kornblith", headline=90.0)
    write_summary(runs, "cars", "b", recipe="bit", headline=85.0)
    write_summary(runs, "cars", "c", recipe="kornblith", img_size=64, headline=60.0)
    data = json.loads(invoke("compare", "--runs", str(runs), "-f", "json", "-d", "cars", "-m", "rexnet"))
    means = {c["backbone"]: (c["recipe"], c["img_size"], c["mean"]) for c in data["cells"]}
    assert means == {f"{REX} · bit @224px": ("bit", 224, 85.0), f"{REX} · kornblith @224px": ("kornblith", 224, 90.0),
                     f"{REX} · kornblith @64px": ("kornblith", 64, 60.0)}


def test_no_runs_prints_the_paper_table(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here (a missing folder given with --runs is an error: test_faults.py)
    rows = by_label(md_tables(invoke("compare", "-f", "markdown"))[OVERVIEW], PAPER4)
    assert rows["ReXNet x1.0 (nav_in1k)"]["food101 paper"] == "88.4"
    assert rows["ResNet50 (tv_in1k)"]["flowers102 paper"] == "97.7"
    assert all(r[ds] == DASH for r in rows.values() for ds in ("food101", "cars", "aircraft", "flowers102"))


def test_bad_options_are_one_line_errors(grid: Path):
    import subprocess
    import sys

    for args, code, text in ((["--format", "xml"], 2, "--format must be one of"),
                             (["--run", "--seeds", "a,b"], 2, "--seeds expects integers"),
                             (["--run", "--set", "no_such_key=1", "-d", "demo"], 2, "unknown setting 'no_such_key'")):
        proc = subprocess.run([sys.executable, "-m", "rextransfer.cli", "compare", "--runs", str(grid), *args],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        assert proc.returncode == code, proc.stderr
        assert text in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_dry_run_lists_the_grid(tmp_path: Path):
    runs = tmp_path / "runs"
    write_summary(runs, "demo", "rexnet-w1.0-default-s1", seed=1)  # complete: skipped
    (runs / "demo" / "efficientnet_b0-w1.0-default-s0").mkdir(parents=True)  # started: resumed
    (runs / "demo" / "efficientnet_b0-w1.0-default-s0" / "config.yaml").write_text("model: efficientnet_b0\n")
    out = invoke("compare", "--run", "--dry-run", "--runs", str(runs), "-d", "demo", "-m", "rexnet,efficientnet_b0", "--seeds", "0,1")
    rows = rich_tables(out)["compare --run would train 3 of 4 cells"]
    actions = {(r[1], r[3]): r[6] for r in rows[1:]}
    assert actions == {("rexnet", "0"): "train", ("rexnet", "1"): "skip (complete)",
                       ("efficientnet_b0", "0"): "resume", ("efficientnet_b0", "1"): "train"}
    assert not (runs / "demo" / "rexnet-w1.0-default-s0").exists()  # nothing trained


def test_run_trains_missing_cells_then_nothing_new(tmp_path: Path, monkeypatch):
    """The real grid on the demo dataset at a tiny size; a failing cell is reported, the rest runs."""
    monkeypatch.setenv("REXTRANSFER_DATA", str(tmp_path / "data"))
    runs = tmp_path / "runs"
    args = ["compare", "--run", "--runs", str(runs), "--models", "rexnet,efficientnet_b0", "--no-pretrained",
            "--set", "img_size=32", "--set", "steps=2", "--set", "batch_size=16", "--set", "device=cpu",
            "--set", "workers=0", "--format", "json"]
    missing = str(tmp_path / "no-such-folder")
    first = runner.invoke(app, args + ["--datasets", f"demo,{missing}"])
    # The missing dataset's two cells failed (DataError, reported); the grid went on, then exit 5.
    assert first.exit_code == RunError.exit_code == 5, first.output
    assert "error: 2 of 4 grid cells failed" in first.stderr
    assert first.stderr.count("failed:") == 2 and "no-such-folder" in first.stderr
    summaries = sorted((runs / "demo").glob("*/summary.json"))
    assert len(summaries) == 2 and all(json.loads(p.read_text())["status"] == "complete" for p in summaries)
    data = json.loads(first.stdout)
    cells = {c["model"]: c for c in data["cells"] if c["dataset"] == "demo" and c["n"]}
    assert set(cells) == {"rexnet", "efficientnet_b0"} and all(c["n"] == 1 for c in cells.values())
    assert all(0 <= c["mean"] <= 100 and c["train_img_per_s"] > 0 for c in cells.values())
    stamps = {p: p.stat().st_mtime_ns for p in summaries}

    second = runner.invoke(app, args + ["--datasets", "demo"])
    assert second.exit_code == 0, second.output
    assert "2 complete, 0 to run" in second.stderr
    assert {p: p.stat().st_mtime_ns for p in summaries} == stamps  # nothing retrained
    again = {c["model"]: c for c in json.loads(second.stdout)["cells"] if c["dataset"] == "demo" and c["n"]}
    assert again == cells
