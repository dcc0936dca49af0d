"""Repeatability study: each fusion repeated R times -- spread of every metric and of the time,
and whether the outputs are bit-identical (the papers average 50-100 runs per experiment).

Tables:

- ``repeat_runs``: one row per group x method x repeat: metrics, ``time_s`` and
  ``output_sha256`` (the hash of the fused ``float32`` bytes).
- ``repeat_summary``: per group x method x quantity: mean, sample std, min, max, n.
- ``repeat_determinism``: per group x method: ``bit_identical`` (every repeat gave the
  same bytes), ``distinct_outputs`` and ``max_abs_difference`` to the first repeat.

Metrics are computed once per distinct output (an identical output has identical
scores, so re-scoring it would only cost time); the time is measured on every repeat.
A deterministic method therefore shows zero spread in every metric and only timing noise.

On request (``training_repeats=R``, ``--repeat-training R``) the study also trains R small
models per seed mode (same seed / different seeds) and fuses with each:
:mod:`MedFusionLib.experiments.repeat_training` (tables ``repeat_training_*``).
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from ..data.targets import MODALITY_PAIRS
from ..fusion import Method
from ..validation import check_int
from ..progress import ProgressCallback
from ._common import (
    TIME_COLUMN,
    fuse_case,
    metric_columns,
    output_digest,
    resolve_methods,
    score,
    seed_everything,
    spread,
    warm_up,
)
from ._run import (
    Row,
    RunFolder,
    StudyResult,
    no_progress,
    resolved_device,
)
from ._study import open_run
from .data import PAPER_PAIRS, Case, check_cases, describe, phantom_dataset

STUDY = "repeat"
#: Defaults: 50 repeats (paper 000's count) of 5 groups per pair; quick: 2 repeats of 2 x 2 small groups.
FULL = {"count_per_pair": 5, "pairs": MODALITY_PAIRS, "shape": (256, 256), "repeats": 50}
QUICK = {"count_per_pair": 2, "pairs": PAPER_PAIRS, "shape": (96, 96), "repeats": 2}


def default_cases(quick: bool = False, data_seed: int = 0, shape: tuple[int, int] | None = None) -> list[Case]:
    spec = QUICK if quick else FULL
    return phantom_dataset(spec["count_per_pair"], spec["pairs"], shape or spec["shape"], data_seed)


def repeat_fusions(
    cases: Sequence[Case],
    methods: Iterable[Method] | None = None,
    *,
    repeats: int = 10,
    device: str | None = None,
    seed: int = 0,
    progress: ProgressCallback = no_progress,
) -> StudyResult:
    """Fuse every case with every method ``repeats`` times (no files written).

    :param cases: the data set.
    :param methods: default the shipped model and every baseline.
    :param repeats: R >= 1.
    :param device: for learned models.
    :param seed: seeds torch and numpy once, before the first repeat (a method that drew
        random numbers would then differ between repeats -- which is what this study detects).
    :param progress: ``progress(fraction, message)``.
    """
    repeats = check_int(repeats, "repeats")
    cases = check_cases(cases)
    chosen = resolve_methods(methods)
    seed_everything(seed)
    runs: list[Row] = []
    determinism: list[Row] = []
    total = len(cases) * len(chosen)
    step = 0
    for label, method in chosen:
        warm_up(method, cases[0], device)
        for case in cases:
            progress(step / total, f"{label}: {case.name} x {repeats}")
            step += 1
            first: np.ndarray | None = None
            scores: dict[str, dict[str, float]] = {}
            largest = 0.0
            for r in range(1, repeats + 1):
                result = fuse_case(case, method, device=device)
                digest = output_digest(result.image)
                if digest not in scores:
                    scores[digest] = score(result.image, case.inputs, case.target)
                if first is None:
                    first = result.image.copy()
                else:
                    largest = max(largest, float(np.max(np.abs(result.image.astype(np.float64) - first))))
                runs.append({"group": case.name, "pair": case.pair, "method": label, "repeat": r,
                             **scores[digest], TIME_COLUMN: result.seconds, "output_sha256": digest})
            determinism.append({"group": case.name, "pair": case.pair, "method": label, "repeats": repeats,
                                "bit_identical": len(scores) == 1, "distinct_outputs": len(scores),
                                "max_abs_difference": largest})
    progress(1.0, "done")
    columns = ["group", "pair", "method", "repeat", *metric_columns(runs), "output_sha256"]
    runs = [{c: row.get(c) for c in columns} for row in runs]  # groups without a target: empty target cells
    summary = summarise(runs)
    config = {"methods": [label for label, _ in chosen], "repeats": repeats, "seed": seed,
              "device": resolved_device(device), "data": describe(cases)}
    return StudyResult(STUDY, {"repeat_runs": runs, "repeat_summary": summary, "repeat_determinism": determinism},
                       config)


def summarise(runs: Sequence[Row]) -> list[Row]:
    """mean, std, min, max, n of every metric and of the time, per group x method."""
    quantities = metric_columns(runs)
    keys = list(dict.fromkeys((row["group"], row["pair"], row["method"]) for row in runs))
    summary = []
    for group, pair, method in keys:
        mine = [row for row in runs if row["group"] == group and row["method"] == method]
        for quantity in quantities:
            summary.append({"group": group, "pair": pair, "method": method, "quantity": quantity,
                            **spread([row.get(quantity) for row in mine])})
    return summary


def run_repeat(
    out: str | os.PathLike = "experiments",
    cases: Sequence[Case] | None = None,
    *,
    methods: Iterable[Method] | None = None,
    repeats: int | None = None,
    training_repeats: int | None = None,
    training_recipe: str | dict = "smoke",
    training_seeds: Sequence[str] = ("same", "different"),
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
    """Run the repeatability study into a new run folder ``<out>/repeat-YYYYmmdd-HHMMSS``.

    :param repeats: R (default 50; quick 2).
    :param training_repeats: on request, also train this many models per seed mode and fuse with
        each (:func:`~MedFusionLib.experiments.repeat_training.repeat_trainings`); None: no training.
    :param training_recipe: the recipe trained (default ``smoke``: seconds per model).
    :param training_seeds: ``"same"`` (R trainings with one seed) and/or ``"different"`` (R seeds).
    Other parameters as in :func:`MedFusionLib.experiments.compare.run_compare`.
    """
    from .repeat_training import repeat_trainings

    spec = QUICK if quick else FULL
    if training_repeats is not None:  # fail before the folder and the fusions, not after them
        from ..recipes import recipe
        from .repeat_training import training_seeds as seeds_of

        check_int(training_repeats, "training repeats", minimum=2)
        if isinstance(training_recipe, str):
            recipe(training_recipe)
        for mode in training_seeds:
            seeds_of(mode, 1, seed)
    with open_run(out, STUDY, name=name, force=force, run=run, report=report) as folder:
        data = default_cases(quick, data_seed) if cases is None else cases
        share = 1.0 if training_repeats is None else 0.5  # of the progress bar for the repeated fusions
        result = repeat_fusions(data, methods, repeats=repeats or spec["repeats"], device=device, seed=seed,
                                progress=lambda f, m: progress(share * f, m))
        if training_repeats is not None:
            trained = repeat_trainings(data, training_repeats, recipe=training_recipe, seeds=training_seeds,
                                       seed=seed, device=device,
                                       progress=lambda f, m: progress(share + (1 - share) * f, f"training: {m}"))
            result.tables.update(trained.tables)
            result.config["training"] = trained.config
        result.config.update(quick=quick, data_seed=data_seed if cases is None else None)
        return folder.write_study(result)
