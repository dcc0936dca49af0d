"""Tests of MedFusionLib.experiments: the numbers of every study, the run folders and the report.

Small phantoms (64 x 64) and mostly baselines keep the whole file to seconds; the shipped
model appears only where a study is about it (block mode). Every numeric check is paired
with a case that must make it fail (a noisy method, a disturbed curve, a shifted history).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedFusionLib.baselines import FusionBaseline
from MedFusionLib.engine.model import FusionModel
from MedFusionLib.engine.training import TrainingConfig, TrainingHistory, TripletDataset, save_history
from MedFusionLib.errors import InputError
from MedFusionLib.experiments import (
    RunFolder,
    block_size_study,
    build_report,
    compare_methods,
    convergence_curve,
    dataset_from_source,
    disturb,
    flattening_iteration,
    load_history,
    perturbation_study,
    phantom_dataset,
    read_csv,
    repeat_fusions,
    run_all,
    run_convergence,
)
from MedFusionLib.experiments import compare as compare_module
from MedFusionLib.experiments import tables as tables_module
from MedFusionLib.experiments._common import output_digest
from MedFusionLib.experiments.cli import add_experiment_parser
from MedFusionLib.experiments.convergence import moving_average
from MedFusionLib.experiments.data import PAPER_PAIRS, Case
from MedFusionLib.experiments.paper_tables import PAPER_TABLES, paper_metrics
from MedFusionLib.experiments.perturbation import KINDS, noise_generator
from MedFusionLib.experiments.repeat_training import repeat_trainings, weights_digest
from MedFusionLib.fusion import fuse
from MedFusionLib.metrics import HIGHER, LOWER, METRICS, block_grid_index, evaluate
from MedFusionLib.recipes import recipe, train_recipe


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """64 x 64 images gain nothing from a second intra-op thread, and on a busy shared machine
    the thread pool's waiting made the tiny trainings here 100x slower; restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cases():
    """2 held-out phantoms of each of the papers' two pairs, 64 x 64."""
    return phantom_dataset(2, PAPER_PAIRS, (64, 64))


class NoisyAverage(FusionBaseline):
    """A deliberately non-deterministic method: the average plus fresh noise at every call."""

    name = "noisy_average"

    def __init__(self) -> None:
        self.rng = np.random.default_rng()

    def _fuse_stack(self, stack: np.ndarray) -> np.ndarray:
        return stack.mean(axis=0) + self.rng.normal(0.0, 0.01, stack.shape[1:])


def _synthetic_history(path: Path, iterations: int = 400) -> Path:
    losses = [0.2 * math.exp(-t / 60.0) + 0.01 for t in range(1, iterations + 1)]
    history = TrainingHistory(train_loss=losses, validation_iterations=list(range(50, iterations + 1, 50)),
                              validation_loss=[losses[i - 1] * 1.1 for i in range(50, iterations + 1, 50)])
    save_history(history, path)
    return path


# ---------------------------------------------------------------------- data


def test_phantom_dataset_is_held_out_and_seeded(cases):
    again = phantom_dataset(2, PAPER_PAIRS, (64, 64))
    assert [c.name for c in cases] == [c.name for c in again]
    assert all(np.array_equal(a.inputs[0], b.inputs[0]) for a, b in zip(cases, again))
    assert all(c.seed >= 1_000_000 for c in cases)  # evaluation seeds only
    assert [c.pair for c in cases] == ["CT+MRI_T1"] * 2 + ["MRI_T1+SPECT"] * 2
    other = phantom_dataset(2, PAPER_PAIRS, (64, 64), data_seed=1)
    assert not set(c.seed for c in cases) & set(c.seed for c in other)


def test_dataset_from_folder_standardises_and_scores(tmp_path):
    rng = np.random.default_rng(3)
    source = tmp_path / "data"
    for name, roles in (("case_a", ("input_1", "input_2", "target")), ("case_b", ("input_1", "input_2"))):
        folder = source / name
        folder.mkdir(parents=True)
        for role in roles:
            sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 256, (48, 48), dtype=np.uint8)),
                            str(folder / f"{role}.png"))
    data = dataset_from_source(source)
    assert [c.name for c in data] == ["case_a", "case_b"]
    assert [c.pair for c in data] == ["all", "all"] and data[0].target is not None and data[1].target is None
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(source / "case_a" / "input_1.png")))
    np.testing.assert_allclose(data[0].inputs[0], written / 255.0, atol=1e-6)  # uint8 / 255, as fuse() does
    result = compare_module.run_compare(tmp_path / "runs", data, methods=["average"], report=False)
    rows = read_csv(result.folder / "compare_rows.csv")
    expected = evaluate(fuse(list(data[0].inputs), method="average").image, list(data[0].inputs), data[0].target,
                        ["RMSE"], data_range=(0, 1))["RMSE"]
    assert rows[0]["RMSE"] == expected  # written at full precision
    assert rows[1]["RMSE"] is None and isinstance(rows[1]["QABF"], float)  # no target: no target metrics


# ---------------------------------------------------------------------- repeat


def test_repeat_of_deterministic_baseline_has_zero_spread(cases):
    result = repeat_fusions(cases[:2], ["average", "laplacian"], repeats=3)
    determinism = result.tables["repeat_determinism"]
    assert len(determinism) == 4 and all(r["bit_identical"] for r in determinism)
    assert all(r["max_abs_difference"] == 0.0 and r["distinct_outputs"] == 1 for r in determinism)
    metric_rows = [r for r in result.tables["repeat_summary"] if r["quantity"] != "time_s"]
    assert metric_rows and all(r["std"] == 0.0 and r["min"] == r["max"] and r["n"] == 3 for r in metric_rows)
    assert len(result.tables["repeat_runs"]) == 2 * 2 * 3


def test_repeat_flags_a_non_deterministic_method(cases):
    result = repeat_fusions(cases[:1], [NoisyAverage()], repeats=3)
    (row,) = result.tables["repeat_determinism"]
    assert row["bit_identical"] is False and row["distinct_outputs"] == 3 and row["max_abs_difference"] > 0
    rmse = next(r for r in result.tables["repeat_summary"] if r["quantity"] == "RMSE")
    assert rmse["std"] > 0 and rmse["max"] > rmse["min"]


# ---------------------------------------------------------------------- compare


def test_ranks_follow_each_metrics_direction():
    rows = [
        {"group": g, "pair": "P", "method": m, "RMSE": rmse + g_off, "PSNR": psnr, "MEAN": 100.0 + rmse,
         "time_s": t}
        for g, g_off in (("g1", 0.0), ("g2", 1.0))
        for m, rmse, psnr, t in (("good", 5.0, 30.0, 0.2), ("bad", 9.0, 20.0, 0.1), ("tie", 9.0, 20.0, 0.3))
    ]
    summary, mean_rank = compare_module.summarise(rows)
    rank = {(r["method"], r["quantity"]): r["rank"] for r in summary}
    assert rank[("good", "RMSE")] == 1.0 and rank[("bad", "RMSE")] == 2.5 == rank[("tie", "RMSE")]  # lower better
    assert rank[("good", "PSNR")] == 1.0 and rank[("bad", "PSNR")] == 2.5  # higher better
    assert rank[("bad", "time_s")] == 1.0 and rank[("tie", "time_s")] == 3.0
    assert all(rank[(m, "MEAN")] is None for m in ("good", "bad", "tie"))  # descriptive: no rank
    means = {(r["method"], r["quantity"]): (r["mean"], r["std"]) for r in summary}
    assert means[("good", "RMSE")] == (5.5, pytest.approx(math.sqrt(0.5)))
    assert {r["method"]: r["mean_rank"] for r in mean_rank} == {"good": 1.0, "bad": 2.5, "tie": 2.5}


def test_compare_table_and_ranks_on_real_fusions(cases):
    result = compare_methods(cases, ["average", "laplacian", "maximum"])
    rows, summary = result.tables["compare_rows"], result.tables["compare_summary"]
    assert len(rows) == len(cases) * 3 and all(r["time_s"] > 0 for r in rows)
    assert {"QABF", "RMSE", "SSIM", "EN"} <= set(rows[0])
    for pair in ("CT+MRI_T1", "MRI_T1+SPECT"):
        for quantity in ("RMSE", "PSNR", "QABF", "REL", "EN"):
            cells = [r for r in summary if r["pair"] == pair and r["quantity"] == quantity]
            better = METRICS[quantity].direction
            order = sorted(cells, key=lambda r: -r["mean"] if better == HIGHER else r["mean"])
            assert [r["rank"] for r in order] == [1.0, 2.0, 3.0], (pair, quantity)
            # the summary mean is the mean of that method's rows
            for cell in cells:
                values = [r[quantity] for r in rows if r["pair"] == pair and r["method"] == cell["method"]]
                assert cell["mean"] == pytest.approx(np.mean(values))
    assert METRICS["RMSE"].direction == LOWER


# ---------------------------------------------------------------------- perturbation


def test_disturbances_are_what_they_say():
    grey = np.full((200, 200), 0.5, dtype=np.float32)
    noisy = disturb(grey, "gaussian", 0.02, np.random.default_rng(0))
    assert np.std(noisy - grey) == pytest.approx(0.02, rel=0.05)
    field = KINDS["salt_and_pepper"][1](np.random.default_rng(1), grey.shape)
    low, high = (disturb(grey, "salt_and_pepper", p, field=field) for p in (0.01, 0.05))
    assert np.mean(low != grey) == pytest.approx(0.01, rel=0.15)
    assert np.mean(high != grey) == pytest.approx(0.05, rel=0.1)
    assert np.all(high[low != grey] == low[low != grey])  # common random numbers: nested hits
    assert set(np.unique(high[high != grey])) <= {0.0, 1.0}
    with pytest.raises(InputError):
        disturb(grey, "blur", 0.1)


def test_noise_monotonically_degrades_the_average_baseline(cases):
    levels = {"gaussian": [0.01, 0.02, 0.05, 0.1], "salt_and_pepper": [0.01, 0.02, 0.05, 0.1]}
    result = perturbation_study(cases[:2], ["average"], levels=levels, seed=7)
    rows = result.tables["perturbation_rows"]
    for group in {r["group"] for r in rows}:
        for kind in levels:
            curve = sorted((r for r in rows if r["group"] == group and r["kind"] == kind), key=lambda r: r["level"])
            assert [r["level"] for r in curve] == [0.0, *levels[kind]]
            assert curve[0]["RMSE_vs_undisturbed"] == 0.0 and math.isinf(curve[0]["PSNR_vs_undisturbed"])
            psnr = [r["PSNR_vs_undisturbed"] for r in curve]
            assert all(b < a for a, b in zip(psnr, psnr[1:])), (group, kind, psnr)
            ssim = [r["SSIM_vs_undisturbed"] for r in curve]
            assert all(b < a for a, b in zip(ssim, ssim[1:])), (group, kind, ssim)
    labels = {(r["kind"], r["level"]): r["disturbance"] for r in rows}
    assert labels[("gaussian", 0.02)] == "primary" and labels[("salt_and_pepper", 0.05)] == "secondary"
    # the check above can fail: a curve whose levels are visited out of order is not monotone
    shuffled = [psnr_row["PSNR_vs_undisturbed"] for psnr_row in sorted(
        (r for r in rows if r["kind"] == "gaussian" and r["group"] == cases[0].name), key=lambda r: -r["level"])]
    assert not all(b < a for a, b in zip(shuffled[1:], shuffled[2:]))


def test_noise_is_seeded(cases):
    levels = {"gaussian": [0.05]}
    first = perturbation_study(cases[:1], ["average"], levels=levels, seed=3).tables["perturbation_rows"]
    again = perturbation_study(cases[:1], ["average"], levels=levels, seed=3).tables["perturbation_rows"]
    other = perturbation_study(cases[:1], ["average"], levels=levels, seed=4).tables["perturbation_rows"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert strip(first) == strip(again)
    assert first[-1]["RMSE_vs_undisturbed"] != other[-1]["RMSE_vs_undisturbed"]
    a = noise_generator(3, "g", 0, "gaussian", 1).random(4)
    assert np.array_equal(a, noise_generator(3, "g", 0, "gaussian", 1).random(4))
    assert not np.array_equal(a, noise_generator(3, "g", 1, "gaussian", 1).random(4))


# ---------------------------------------------------------------------- block size


def test_block_size_study_fuses_in_block_mode(cases):
    result = block_size_study(cases[:2], (1, 3), model="default")
    rows = [r for r in result.tables["block_size_rows"] if r["method"] == "default (block mode)"]
    assert [(r["i"], r["n"]) for r in rows] == [(1, 2), (1, 2), (3, 8), (3, 8)]
    # the shipped DBM beside it, at the one n it fuses with (8), with its block-grid index
    dbm_rows = [r for r in result.tables["block_size_rows"] if r["method"] == "dbm (its own n)"]
    assert [(r["n"], r["group"]) for r in dbm_rows] == [(8, cases[0].name), (8, cases[1].name)]
    assert dbm_rows[1]["GRID"] == pytest.approx(block_grid_index(fuse(list(cases[1].inputs), "dbm").image))
    assert {"RMSE", "EN", "MEAN", "GRAD", "REL", "SSIM", "QABF", "time_s"} <= set(rows[0])
    case = cases[1]
    direct = fuse(list(case.inputs), block_size=8).image
    expected = evaluate(direct, list(case.inputs), case.target, ["RMSE", "SSIM"], data_range=(0, 1))
    assert rows[3]["RMSE"] == pytest.approx(expected["RMSE"], rel=1e-9)
    assert rows[3]["SSIM"] == pytest.approx(expected["SSIM"], rel=1e-9)
    whole = evaluate(fuse(list(case.inputs)).image, list(case.inputs), case.target, ["RMSE"], data_range=(0, 1))
    assert rows[3]["RMSE"] != whole["RMSE"]  # block mode is not the whole-image pass
    assert rows[3]["GRID"] == pytest.approx(block_grid_index(direct)) and all(r["GRID"] >= 1.0 for r in rows)
    summary = {(r["n"], r["quantity"]) for r in result.tables["block_size_summary"]}
    assert (8, "GRID") in summary and (2, "GRID") in summary
    with pytest.raises(InputError):
        block_size_study(cases[:1], (7,))  # 128 x 128 blocks do not fit 64 x 64 images
    with pytest.raises(InputError, match="include i = 3"):
        block_size_study(cases[:1], (1, 2), model="dbm")  # the DBM fuses with its own blocks only
    only = block_size_study(cases[:1], (1, 3), model="dbm")
    assert {(r["method"], r["n"]) for r in only.tables["block_size_rows"]} == {("dbm (block mode)", 8)}


def test_block_size_study_can_train_per_block_size_and_family(cases):
    result = block_size_study(cases[:1], (2,), train=True, quick_training=True)
    methods = [r["method"] for r in result.tables["block_size_rows"]]
    assert methods == ["default (block mode)", "trained at n", "DBM trained at n"]  # no shipped DBM at n = 4
    assert result.config["training"]["cnn"][4]["iterations"] == 30
    assert result.config["training"]["dbm"][4]["iterations"] == 30
    grids = [r["GRID"] for r in result.tables["block_size_rows"]]
    assert all(g >= 1.0 for g in grids)  # every family's block grid, at every n
    only_cnn = block_size_study(cases[:1], (2,), train=True, train_families=["cnn"], quick_training=True, dbm=None)
    assert [r["method"] for r in only_cnn.tables["block_size_rows"]] == ["default (block mode)", "trained at n"]
    with pytest.raises(InputError, match="train_families"):
        block_size_study(cases[:1], (2,), train=True, train_families=["gan"])
    three = [Case("three", "CT+MRI_T1+extra", (*cases[0].inputs, cases[0].inputs[0]), cases[0].target)]
    skipped = block_size_study(three, (2,), train=True, quick_training=True)  # a DBM fuses 2 inputs only
    assert [r["method"] for r in skipped.tables["block_size_rows"]] == ["default (block mode)", "trained at n"]
    assert "3 inputs" in skipped.config["training_skipped"]["dbm"]


# ---------------------------------------------------------------------- convergence


def test_convergence_curve_is_the_recorded_history(tmp_path):
    cases = phantom_dataset(1, PAPER_PAIRS, (64, 64), data_seed=2)
    model = FusionModel.create("cnn", 2, 8, levels=2, width=4, hidden=4)
    history = model.fit(TripletDataset([c_triplet(c) for c in cases]),
                        TrainingConfig(iterations=25, batch_size=4, validation_every=5, validation_blocks=8,
                                       patience=None, device="cpu"))
    curve = convergence_curve(history, window=5)
    assert curve.train_loss == history.train_loss and curve.iterations == list(range(1, 26))
    assert curve.validation_iterations == history.validation_iterations
    assert curve.validation_loss == history.validation_loss
    np.testing.assert_allclose(curve.smoothed[4:], np.convolve(history.train_loss, np.ones(5) / 5, "valid"))
    assert curve.smoothed[0] == history.train_loss[0]
    saved = tmp_path / "m.pt.history.json"
    save_history(history, saved)
    assert load_history(tmp_path / "m.pt").train_loss == history.train_loss  # found next to the model path
    result = run_convergence(tmp_path / "runs", saved, window=5, report=False)
    written = read_csv(result.folder / "convergence_curve.csv")
    assert [r["train_loss"] for r in written] == history.train_loss  # full precision round trip
    assert [r["iteration"] for r in read_csv(result.folder / "convergence_validation.csv")] == [5, 10, 15, 20, 25]


def test_convergence_curve_leaves_out_small_block_steps():
    # Losses of steps on smaller blocks (small_block_fraction) are on another scale.
    history = TrainingHistory(train_loss=[1.0, 9.0, 0.8, 0.7, 9.0, 0.6], small_block_iterations=[2, 5])
    curve = convergence_curve(history, window=2)
    assert curve.iterations == [1, 3, 4, 6] and curve.train_loss == [1.0, 0.8, 0.7, 0.6]
    assert curve.smoothed[-1] == 0.65


def c_triplet(case):
    from MedFusionLib.engine.training import Triplet

    return Triplet(list(case.inputs), case.target, case.name)


def test_flattening_iteration_of_an_exponential_decay():
    a, tau, c, total = 0.5, 300.0, 0.01, 3000
    t = np.arange(1, total + 1)
    loss = a * np.exp(-t / tau) + c
    final = loss[-1]
    # decreasing curve: inside the 5 % band from the first t with a e^(-t/tau) + c <= 1.05 final
    expected = math.ceil(-tau * math.log((1.05 * final - c) / a))
    assert flattening_iteration(loss, list(t), 0.05) == expected
    curve = convergence_curve(TrainingHistory(train_loss=list(loss)), window=1)
    assert curve.flattening_iteration == expected
    # a late drop moves it: the curve is not flat until after the drop
    dropped = loss.copy()
    dropped[2500:] *= 0.5
    assert flattening_iteration(dropped, list(t), 0.05) == 2501
    assert flattening_iteration([3.0, 2.0, 1.0], [10, 20, 30], 0.0) == 30
    np.testing.assert_allclose(moving_average([1, 2, 3, 4], 2), [1.0, 1.5, 2.5, 3.5])


# ---------------------------------------------------------------------- run folders, report, CLI


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_runs_never_overwrite_without_force(tmp_path):
    history = _synthetic_history(tmp_path / "h.history.json")
    first = run_convergence(tmp_path / "runs", history, report=False).folder
    before = _digests(first)
    try:
        second = run_convergence(tmp_path / "runs", history, report=False).folder
        assert second != first  # a new time stamp: a new folder
    except InputError:
        pass  # same second: refused
    assert _digests(first) == before
    with pytest.raises(InputError, match="already exists"):
        run_convergence(tmp_path / "runs", history, name=first.name, report=False)
    assert _digests(first) == before
    (first / "stale.txt").write_text("from the old run")
    replaced = run_convergence(tmp_path / "runs", history, name=first.name, force=True, report=False).folder
    assert replaced == first and not (first / "stale.txt").exists()
    plain = tmp_path / "runs" / "not-a-run"
    plain.mkdir()
    (plain / "precious.txt").write_text("keep")
    with pytest.raises(InputError, match="not a MedFusion run folder"):
        RunFolder.create(tmp_path / "runs", "compare", name="not-a-run", force=True)
    assert (plain / "precious.txt").read_text() == "keep"


def test_a_failing_study_leaves_no_run_folder(tmp_path, cases):
    with pytest.raises(InputError):
        compare_module.run_compare(tmp_path / "runs", cases[:1], methods=["no_such_method"], report=False)
    assert list((tmp_path / "runs").iterdir()) == []


def test_full_quick_run_report_embeds_every_figure_and_config(tmp_path, cases):
    history = _synthetic_history(tmp_path / "h.history.json")
    results = run_all(tmp_path / "out", cases, methods=["average", "laplacian"], quick=True, history=history,
                      seed=5)
    folder = results["compare"].folder
    assert folder.parent == tmp_path / "out" and re.fullmatch(r"all-\d{8}-\d{6}", folder.name)
    page = (folder / "report.html").read_text(encoding="utf-8")
    figures = sorted((folder / "figures").glob("*.png"))
    names = {p.stem for p in figures}
    assert {"compare_fused", "compare_sources", "compare_target", "compare_time", "grid_0", "grid_1",
            "block_size", "perturbation_gaussian", "perturbation_salt_and_pepper", "convergence",
            "repeat_time"} <= names
    embedded = re.findall(r'<figure id="fig-([^"]+)"><img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert {name for name, _ in embedded} == names
    for name, data in embedded:  # the page holds the very figure files, so it needs none of them
        assert base64.b64decode(data) == (folder / "figures" / f"{name}.png").read_bytes()
    config = json.loads(html.unescape(re.search(r'<pre id="config">(.*?)</pre>', page, re.S).group(1)))
    record = json.loads((folder / "run.json").read_text())
    assert config == record["studies"] and set(config) == {"compare", "tables", "repeat", "block_size",
                                                             "perturbation", "convergence"}
    assert config["compare"]["seed"] == 5 and config["perturbation"]["levels"]["gaussian"] == [0.02, 0.05]
    assert record["environment"]["cpu_count"] >= 1 and record["environment"]["torch"] in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # nothing external
    # every CSV parses, rectangular, with numbers where numbers belong
    csvs = sorted(folder.glob("*.csv"))
    assert len(csvs) == 18  # compare 3, tables 5, repeat 3, block size 2, perturbation 2, convergence 3
    for path in csvs:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        assert len(rows) > 1 and all(len(r) == len(rows[0]) for r in rows), path.name
    rows = read_csv(folder / "compare_rows.csv")
    assert all(isinstance(r["QABF"], float) and isinstance(r["time_s"], float) for r in rows)
    assert len(rows) == len(cases) * 2
    # the papers' tables: the shipped DBM for paper 000's table, the printed values on the page
    assert config["tables"]["dbm"]["source"] == "dbm" and config["tables"]["tables"]["table3"]["counterpart"] == \
        "dbm model"
    assert "The papers' tables, reproduced" in html.unescape(page)
    assert "41.06" in page and "0.8911" in page  # Table 3 Test-1 RMSE 41.0644, Table 2 Test 1 Q^AB/F
    # rebuilding the report from the folder alone gives the same page (the figures are deterministic)
    assert build_report(folder).read_text(encoding="utf-8").count("data:image/png;base64,") == len(names)


def test_cli_runs_a_study_and_rebuilds_a_report(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="medfusion")
    add_experiment_parser(parser.add_subparsers(dest="command", required=True))
    history = _synthetic_history(tmp_path / "h.history.json")
    args = parser.parse_args(["experiment", "convergence", "-o", str(tmp_path / "cli"), "--history", str(history),
                              "--name", "conv", "--window", "10", "-q"])
    assert args.handler(args) == 0
    summary = read_csv(tmp_path / "cli" / "conv" / "convergence_summary.csv")[0]
    assert summary["window"] == 10 and summary["iterations"] == 400
    assert (tmp_path / "cli" / "conv" / "report.html").is_file()
    args = parser.parse_args(["experiment", "report", str(tmp_path / "cli" / "conv")])
    assert args.handler(args) == 0
    assert "report written to" in capsys.readouterr().out
    args = parser.parse_args(["experiment", "perturbation", "-o", str(tmp_path / "cli"), "--quick", "--methods",
                              "average", "--gaussian", "0.05", "--per-pair", "1", "--size", "48", "-q",
                              "--no-report"])
    assert args.handler(args) == 0
    (run,) = [p for p in (tmp_path / "cli").iterdir() if p.name.startswith("perturbation-")]
    rows = read_csv(run / "perturbation_rows.csv")
    assert {(r["kind"], r["level"]) for r in rows} == {("gaussian", 0.0), ("gaussian", 0.05)}
    assert not (run / "report.html").exists()


# ---------------------------------------------------------------------- the papers' tables

PAPERS = Path(__file__).resolve().parents[2] / "shared" / "papers"


def test_paper_tables_are_whole_and_self_consistent():
    assert [(t.paper, t.number) for t in PAPER_TABLES.values()] == [("002", 1), ("002", 2), ("000", 3)]
    for table in PAPER_TABLES.values():
        assert len({c.label for c in table.columns}) == len(table.columns)
        assert all(c.metric in METRICS or c.metric == "time_s" for c in table.columns)
        for block in table.blocks:
            assert len(block.values) == 10 and all(len(row) == len(table.columns) for row in block.values)
    # paper 002, Table 1 is on [0, 1]: PSNR = 20 log10(1 / RMSE) (to the printed rounding), and H == ENT
    t1 = PAPER_TABLES["table1"]
    col = {c.label: j for j, c in enumerate(t1.columns)}
    for row in t1.blocks[0].values:
        assert row[col["PSNR"]] == pytest.approx(20 * math.log10(1 / row[col["RMSE"]]), abs=0.012)
        assert row[col["H"]] == row[col["ENT"]]
    # paper 000, Table 3 is on 0-255: PSNR = 20 log10(255 / RMSE) in every row but Test-6 (a remark)
    t3 = PAPER_TABLES["table3"]
    col = {c.label: j for j, c in enumerate(t3.columns)}
    off = [k + 1 for k, row in enumerate(t3.blocks[0].values)
           if abs(row[col["PSNR"]] - 20 * math.log10(255 / row[col["RMSE"]])) > 1e-3]
    assert off == [6] and any("Test-6" in r for r in t3.remarks)
    # the Q indices lie in [0, 1] as the paper says
    assert all(0 <= v <= 1 for b in PAPER_TABLES["table2"].blocks for row in b.values for v in row)
    assert paper_metrics()[:3] == ["RMSE", "PSNR", "CE"] and "time_s" not in paper_metrics()


@pytest.mark.skipif(not PAPERS.is_dir(), reason="the papers' text files (../shared/papers) are not here")
def test_paper_tables_match_the_papers_text():
    """Every transcribed value against the extraction, row by row (the rows start 'Test')."""
    def printed(name: str, first: int, count: int) -> list[tuple[float, ...]]:
        lines = (PAPERS / name).read_text(encoding="utf-8").splitlines()[first - 1:]
        rows = [line.split("\t") for line in lines if line.startswith("Test")][:count]
        return [tuple(float(v) for v in row[1:]) for row in rows]

    assert printed("002_6aa670839a80a403.txt", 188, 10) == list(PAPER_TABLES["table1"].blocks[0].values)
    both = printed("002_6aa670839a80a403.txt", 204, 10)
    assert [r[:4] for r in both] == list(PAPER_TABLES["table2"].blocks[0].values)
    assert [r[4:] for r in both] == list(PAPER_TABLES["table2"].blocks[1].values)
    assert printed("000_c6e9e2eaf8fd772c.txt", 197, 10) == list(PAPER_TABLES["table3"].blocks[0].values)
    headers = (PAPERS / "000_c6e9e2eaf8fd772c.txt").read_text(encoding="utf-8").splitlines()[199].split("\t")
    assert headers[1:] == ["Indices EOG", *[c.label for c in PAPER_TABLES["table3"].columns][1:]]


def test_tables_study_puts_evaluate_numbers_beside_the_printed_ones(tmp_path, cases):
    result = tables_module.run_tables(tmp_path / "runs", cases, methods=["average", "laplacian"], dbm=None,
                                      time_repeats=2, report=False)
    folder = result.folder
    assert {p.stem for p in folder.glob("*.csv")} == {"paper_table1", "paper_table2", "paper_table3",
                                                       "tables_summary", "tables_scores"}
    t1 = read_csv(folder / "paper_table1.csv")
    t2 = read_csv(folder / "paper_table2.csv")
    t3 = read_csv(folder / "paper_table3.csv")
    # table 1's pair is not stated: both pairs; table 2: one block per pair; table 3: CT and MRI only
    assert len(t1) == 2 * 2 * 2 and len(t2) == 2 * 2 * 2 and len(t3) == 1 * 2 * 2
    assert {r["pair"] for r in t3} == {"CT+MRI_T1"}
    assert {(r["paper_pair"], r["pair"]) for r in t2} == {("CT and MRI", "CT+MRI_T1"),
                                                          ("MRI and SPECT", "MRI_T1+SPECT")}
    # our numbers: evaluate() on the same fusion, on the paper's scale
    case = cases[3]  # MRI_T1+SPECT, its second group: Test 2
    scores = evaluate(fuse(list(case.inputs), method="laplacian").image, list(case.inputs), case.target,
                      data_range=(0, 1))
    row = next(r for r in t1 if r["method"] == "laplacian" and r["group"] == case.name)
    assert row["test"] == 2 and row["pair"] == "MRI_T1+SPECT"
    assert row["RMSE"] == scores["RMSE"] * (1 / 255) and row["PSNR"] == scores["PSNR"]
    assert row["Entropy"] == scores["CE"] and row["ENT"] == scores["EN"] and row["H"] == scores["H"]
    assert row["Mean"] == scores["MEAN"] * (1 / 255) and row["SSIM"] == scores["SSIM"]
    assert row["Time (s)"] > 0
    row2 = next(r for r in t2 if r["method"] == "laplacian" and r["group"] == case.name)
    assert row2["QAB/F"] == scores["QABF"] and row2["Q0"] == scores["Q0"]
    row3 = next(r for r in t3 if r["method"] == "laplacian" and r["test"] == 1)
    first = cases[0]
    assert row3["EOG"] == evaluate(fuse(list(first.inputs), method="laplacian").image, list(first.inputs),
                                   first.target, ["EOG"], data_range=(0, 1))["EOG"]
    # the printed values beside them: the transcription's, test for test
    assert row["RMSE [paper]"] == PAPER_TABLES["table1"].blocks[0].values[1][0] == 0.3273
    assert row2["QAB/F [paper]"] == PAPER_TABLES["table2"].blocks[1].values[1][3] == 0.2431
    assert row3["TIME (s) [paper]"] == 1.9843 and row3["RMSE [paper]"] == 41.0644
    # the summary: our mean over our rows, the paper's over its ten printed tests
    summary = read_csv(folder / "tables_summary.csv")
    cell = next(r for r in summary if r["table"] == "table3" and r["method"] == "average" and r["column"] == "RMSE")
    ours = [r["RMSE"] for r in t3 if r["method"] == "average"]
    assert cell["mean"] == pytest.approx(np.mean(ours)) and cell["n"] == 2
    printed = [v[1] for v in PAPER_TABLES["table3"].blocks[0].values]
    assert cell["paper_mean"] == pytest.approx(np.mean(printed)) and cell["paper_min"] == 17.4056
    assert cell["within_paper_range"] is (min(printed) <= cell["mean"] <= max(printed))
    # repeated fusions of a deterministic baseline: bit-identical; no learned model: no counterpart
    assert all(r["bit_identical"] and r["time_repeats"] == 2 for r in read_csv(folder / "tables_scores.csv"))
    assert not any(r["counterpart"] for r in t1 + t2 + t3)


def test_tables_study_takes_a_dbm_as_paper_000s_counterpart(cases, tmp_path):
    torch.manual_seed(0)
    dbm = FusionModel.create("dbm", 2, 8, layer_sizes=(16,))
    result = tables_module.reproduce_tables(cases[:1] + cases[2:3], ["average"], dbm=dbm, time_repeats=1)
    assert result.config["tables"]["table3"]["counterpart"] == "dbm model"
    assert result.config["tables"]["table1"]["counterpart"] == "dbm model"  # no CNN in the run: the DBM stands in
    assert {r["method"] for r in result.tables["paper_table3"] if r["counterpart"]} == {"dbm model"}
    with pytest.raises(InputError, match="not a DBM"):
        tables_module.reproduce_tables(cases[:1], ["average"], dbm="laplacian")
    with pytest.raises(InputError, match="not a DBM"):  # the suite refuses it before any study runs
        run_all(tmp_path / "out", cases, studies=["compare", "tables"], methods=["average"], dbm="laplacian")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_tables_study_can_train_its_own_dbm(cases):
    result = tables_module.reproduce_tables(cases[:1] + cases[2:3], ["average"], dbm=tables_module.TRAIN_DBM,
                                            quick_training=True, time_repeats=1)
    record = result.config["dbm"]
    assert record["source"].startswith("trained here") and record["iterations"] == 20
    assert result.config["tables"]["table3"]["counterpart"] == "dbm model"


def test_tables_match_pairs_by_modality_and_refuse_unusable_data(cases, tmp_path):
    assert tables_module.modality_classes("MRI_T2+SPECT") == ("MRI", "SPECT")
    assert tables_module.modality_classes("CT+MRI") == tables_module.modality_classes("MRI_T1+CT") == ("CT", "MRI")
    assert tables_module.modality_classes("all") is None
    relabelled = [Case(f"mine-{k}", "CT+MRI", c.inputs, c.target) for k, c in enumerate(cases[:2])]
    result = tables_module.reproduce_tables(relabelled, ["average"], dbm=None, time_repeats=1)
    assert {r["pair"] for r in result.tables["paper_table3"]} == {"CT+MRI"}  # your CT+MRI fills their CT and MRI
    assert result.tables["paper_table2"] and {r["paper_pair"] for r in result.tables["paper_table2"]} == {"CT and MRI"}
    unlabelled = [Case(c.name, "all", c.inputs, c.target) for c in cases]
    untargeted = [Case(c.name, c.pair, c.inputs, None) for c in cases]
    assert "modality pairs" in tables_module.applicable(unlabelled)
    assert "target" in tables_module.applicable(untargeted)
    with pytest.raises(InputError, match="target"):
        tables_module.reproduce_tables(untargeted, ["average"], dbm=None)
    # the whole suite skips the study on such data, says why, and runs the rest
    results = run_all(tmp_path / "out", unlabelled, studies=["tables", "repeat"], methods=["average"], quick=True,
                      report=False)
    record = json.loads((results["repeat"].folder / "run.json").read_text())
    assert "modality pairs" in record["studies"]["tables"]["skipped"]
    assert not list(results["repeat"].folder.glob("paper_table*.csv"))


# ---------------------------------------------------------------------- repeated training


def _tiny_recipe() -> dict:
    spec = recipe("smoke")
    spec["training"] = TrainingConfig(iterations=6, batch_size=4, validation_every=3, validation_blocks=8,
                                      patience=None, seed=0, device="cpu")
    return spec


def test_repeated_training_same_seed_is_bit_identical_other_seeds_spread(cases):
    start = torch.get_num_threads()

    def meddle(fraction: float, message: str) -> None:
        # something between trainings changes torch's thread count (scoring did, through numba's
        # OpenMP kernels): the weights' last bits depend on it, so the study must pin it
        if "training run" in message:
            torch.set_num_threads(start + 1)

    result = repeat_trainings(cases[:2], 2, recipe=_tiny_recipe(), seed=0, progress=meddle)
    assert result.config["training_threads"] == start and torch.get_num_threads() == start
    runs, summary = result.tables["repeat_training_runs"], result.tables["repeat_training_summary"]
    determinism = {r["mode"]: r for r in result.tables["repeat_training_determinism"]}
    assert len(runs) == 2 * 2 * 2  # modes x runs x groups
    same, different = determinism["same"], determinism["different"]
    assert same["distinct_weights"] == 1 and same["bit_identical_weights"] and same["bit_identical_outputs"]
    assert same["max_abs_difference"] == 0.0 and same["largest_metric_std"] == 0.0
    assert all(r["std"] == 0.0 for r in summary if r["mode"] == "same" and r["quantity"] != "time_s")
    assert different["training_seeds"] == "0 1" and different["distinct_weights"] == 2
    assert different["distinct_outputs"] == 2 and different["max_abs_difference"] > 0
    spread_all = {r["quantity"]: r for r in summary if r["mode"] == "different" and r["group"] == "all"}
    assert spread_all["final_loss"]["std"] > 0 and spread_all["QABF"]["std"] > 0
    # seed 0 is seed 0 in either mode, and outside the study: training is reproducible
    weights = {r["weights_sha256"] for r in runs if r["training_seed"] == 0}
    assert len(weights) == 1
    model, _ = train_recipe(_tiny_recipe())
    assert weights_digest(model) == weights.pop()
    case = cases[1]
    fused = fuse(list(case.inputs), method=model).image
    row = next(r for r in runs if r["mode"] == "same" and r["run"] == 2 and r["group"] == case.name)
    assert row["output_sha256"] == output_digest(fused)
    assert row["QABF"] == evaluate(fused, list(case.inputs), case.target, ["QABF"], data_range=(0, 1))["QABF"]
    with pytest.raises(InputError):
        repeat_trainings(cases[:1], 1, recipe=_tiny_recipe())  # one training has no spread
    with pytest.raises(InputError, match="unknown mode"):
        repeat_trainings(cases[:1], 2, recipe=_tiny_recipe(), seeds=["sometimes"])


def test_repeat_study_trains_on_request_from_the_cli(tmp_path):
    parser = argparse.ArgumentParser(prog="medfusion")
    add_experiment_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["experiment", "repeat", "-o", str(tmp_path), "--name", "r", "--quick", "--methods",
                              "average", "--per-pair", "1", "--size", "48", "--repeats", "2", "--repeat-training",
                              "2", "--training-seeds", "same", "-q"])
    assert args.handler(args) == 0
    folder = tmp_path / "r"
    (row,) = read_csv(folder / "repeat_training_determinism.csv")
    assert row["mode"] == "same" and row["bit_identical_weights"] is True and row["distinct_outputs"] == 1
    record = json.loads((folder / "run.json").read_text())
    assert record["studies"]["repeat"]["training"]["seeds"] == {"same": [0, 0]}
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "Repeated training" in page and 'id="fig-repeat_training"' in page
    refused = parser.parse_args(["experiment", "repeat", "-o", str(tmp_path), "--repeat-training", "1", "-q"])
    with pytest.raises(InputError):
        refused.handler(refused)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # refused before a folder was made


def test_a_study_without_matplotlib_is_refused_before_it_runs(tmp_path, monkeypatch):
    """Without the experiments extra, the CLI says how to get it, at once, and leaves no folder."""
    import importlib.util

    from MedFusionLib.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["experiment", "compare", "--quick", "-q", "-o", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
