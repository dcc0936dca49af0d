"""Comparison study: every selected method on every group of a data set.

Tables (tidy CSVs):

- ``compare_rows``: one row per group x method -- ``group, pair, method``, every metric
  that applies (target metrics when the group has a target) and ``time_s``, the
  fusion's wall time (each method fuses the first group once untimed first, so
  one-off start-up costs are not charged to a group).
- ``compare_summary``: per modality pair x method x quantity -- mean, sample standard
  deviation, n, and the rank among the methods (1 = best by the mean, following the
  metric's direction; ties share the average rank; MEAN is descriptive, so unranked).
  ``time_s`` is ranked too (lower is better).
- ``compare_mean_rank``: per pair x method -- the mean rank over the ranked metrics
  (time excluded: it is a cost, not a quality) and the number of first places.

The first group of each pair (up to ``grid_groups``) is kept as 8-bit images for the
report's image grid (sources, target, each method's fused image).

Example::

    from MedFusionLib.experiments import compare
    result = compare.run_compare("results", quick=True)   # results/compare-YYYYmmdd-HHMMSS/
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from ..data.targets import MODALITY_PAIRS
from ..fusion import Method, unit_to_uint8
from ..metrics import HIGHER, LOWER
from ..progress import ProgressCallback
from ._common import TIME_COLUMN, direction, fuse_case, metric_columns, ranks, resolve_methods, score, \
    seed_everything, spread, warm_up
from ._run import Row, RunFolder, StudyResult, no_progress, resolved_device
from ._study import open_run
from .data import PAPER_PAIRS, Case, check_cases, describe, per_pair, phantom_dataset

STUDY = "compare"
#: Data-set defaults: the papers' ten groups per pair on every bundled pair; quick: 2 x 2 small ones.
FULL = {"count_per_pair": 10, "pairs": MODALITY_PAIRS, "shape": (256, 256)}
QUICK = {"count_per_pair": 2, "pairs": PAPER_PAIRS, "shape": (96, 96)}


def default_cases(quick: bool = False, data_seed: int = 0, shape: tuple[int, int] | None = None) -> list[Case]:
    """The phantom evaluation set of this study (``quick``: 2 groups of 2 pairs)."""
    spec = QUICK if quick else FULL
    return phantom_dataset(spec["count_per_pair"], spec["pairs"], shape or spec["shape"], data_seed)


def compare_methods(
    cases: Sequence[Case],
    methods: Iterable[Method] | None = None,
    *,
    device: str | None = None,
    seed: int = 0,
    grid_groups: int = 3,
    progress: ProgressCallback = no_progress,
) -> StudyResult:
    """Fuse and score every case with every method (no files written).

    :param cases: the data set (see :mod:`MedFusionLib.experiments.data`).
    :param methods: names / model files / objects; default the shipped model and every baseline.
    :param device: for learned models (None: CUDA when present).
    :param seed: seeds torch and numpy first (the fusion itself draws nothing random).
    :param grid_groups: groups kept as images for the report's grid.
    :param progress: ``progress(fraction, message)``.
    """
    cases = check_cases(cases)
    chosen = resolve_methods(methods)
    seed_everything(seed)
    rows: list[Row] = []
    grid = per_pair(cases, 1)[: max(grid_groups, 0)]
    grid_index = {case.name: j for j, case in enumerate(grid)}
    arrays: dict[str, np.ndarray] = {}
    total = len(cases) * len(chosen)
    for m, (label, method) in enumerate(chosen):
        warm_up(method, cases[0], device)
        for c, case in enumerate(cases):
            progress((m * len(cases) + c) / total, f"{label}: {case.name}")
            result = fuse_case(case, method, device=device)
            rows.append({"group": case.name, "pair": case.pair, "method": label,
                         **score(result.image, case.inputs, case.target), TIME_COLUMN: result.seconds})
            if case.name in grid_index:
                arrays[f"case{grid_index[case.name]}_method{m}"] = unit_to_uint8(result.image)
    for j, case in enumerate(grid):
        for k, image in enumerate(case.inputs):
            arrays[f"case{j}_source{k}"] = unit_to_uint8(image)
        if case.target is not None:
            arrays[f"case{j}_target"] = unit_to_uint8(case.target)
    if arrays:
        arrays["cases"] = np.array([c.name for c in grid])
        arrays["methods"] = np.array([label for label, _ in chosen])
    progress(1.0, "done")
    rows = _uniform(rows)
    summary, mean_rank = summarise(rows)
    config = {"methods": [label for label, _ in chosen], "seed": seed, "device": resolved_device(device),
              "grid_groups": len(grid), "data": describe(cases)}
    return StudyResult(STUDY, {"compare_rows": rows, "compare_summary": summary, "compare_mean_rank": mean_rank},
                       config, arrays)




def _uniform(rows: list[Row]) -> list[Row]:
    """Same columns in every row (groups without a target lack target metrics): None where absent."""
    columns = ["group", "pair", "method", *metric_columns(rows)]
    return [{c: row.get(c) for c in columns} for row in rows]


def summarise(rows: Sequence[Row]) -> tuple[list[Row], list[Row]]:
    """Per-pair summary (mean, std, n, rank per quantity) and mean ranks, from ``compare_rows``.

    :param rows: rows with ``pair``, ``method``, metric columns and ``time_s``.
    :returns: ``(summary rows, mean-rank rows)``.
    """
    quantities = metric_columns(rows)
    pairs = list(dict.fromkeys(row["pair"] for row in rows))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    summary: list[Row] = []
    mean_rank: list[Row] = []
    for pair in pairs:
        per_method_ranks: dict[str, list[float]] = {m: [] for m in methods}
        for quantity in quantities:
            stats = [spread([r[quantity] for r in rows if r["pair"] == pair and r["method"] == m]) for m in methods]
            better = direction(quantity)
            method_ranks = ranks([s["mean"] for s in stats], better)
            for method, s, rank in zip(methods, stats, method_ranks):
                summary.append({"pair": pair, "method": method, "quantity": quantity,
                                "direction": {HIGHER: "higher", LOWER: "lower"}.get(better or "", "none"),
                                "mean": s["mean"], "std": s["std"], "n": s["n"], "rank": rank})
                if rank is not None and quantity != TIME_COLUMN:
                    per_method_ranks[method].append(rank)
        for method in methods:
            ranked = per_method_ranks[method]
            mean_rank.append({"pair": pair, "method": method,
                              "mean_rank": float(np.mean(ranked)) if ranked else None,
                              "metrics_ranked": len(ranked), "first_places": sum(r == 1.0 for r in ranked)})
    return summary, mean_rank


def run_compare(
    out: str | os.PathLike = "experiments",
    cases: Sequence[Case] | None = None,
    *,
    methods: Iterable[Method] | None = None,
    quick: bool = False,
    data_seed: int = 0,
    device: str | None = None,
    seed: int = 0,
    force: bool = False,
    name: str | None = None,
    report: bool = True,
    run: RunFolder | None = None,
    progress: ProgressCallback = no_progress,
) -> StudyResult:
    """Run the comparison into a new run folder ``<out>/compare-YYYYmmdd-HHMMSS``.

    :param out: parent folder of the run folder.
    :param cases: the data set; default :func:`default_cases` (phantom evaluation set).
    :param methods: as in :func:`compare_methods`.
    :param quick: the smoke-sized data set.
    :param data_seed: which held-out phantom set (when ``cases`` is None).
    :param device: for learned models.
    :param seed: recorded and used to seed torch/numpy.
    :param force: replace an existing run folder of the same name.
    :param name: run folder name instead of the time stamp.
    :param report: also write ``report.html`` and the figures.
    :param run: write into this open run folder instead (used by the whole-suite run).
    :param progress: ``progress(fraction, message)``.
    """
    with open_run(out, STUDY, name=name, force=force, run=run, report=report) as folder:
        data = default_cases(quick, data_seed) if cases is None else cases
        result = compare_methods(data, methods, device=device, seed=seed, progress=progress)
        result.config.update(quick=quick, data_seed=data_seed if cases is None else None)
        return folder.write_study(result)
