"""Perturbation study: the inputs disturbed at graded levels, fused, and scored.

Disturbances (on the [0, 1] intensity range, result clipped to [0, 1]):

- ``gaussian``: additive Gaussian noise, level = sigma as a fraction of the range;
- ``salt_and_pepper``: level = fraction of pixels replaced, half by 0 and half by 1;
- ``speckle``: multiplicative noise ``x (1 + sigma z)``, level = sigma (available, not a default).

The papers test under a "primary" and a "secondary" disturbance without giving
parameters. MedFusion maps them to documented levels (:data:`PRIMARY`, :data:`SECONDARY`):
primary = Gaussian sigma 0.02 (2 % of the range) / 1 % salt-and-pepper pixels, a mild
disturbance of the order of scanner noise; secondary = sigma 0.05 / 5 % pixels, clearly
visible. The default grids include both.

Noise is seeded and uses *common random numbers*: one random field per
(seed, group, input, kind, draw) is scaled to every level (Gaussian) or thresholded at
every level (salt-and-pepper: the pixels hit at 1 % are among those hit at 5 %). Curves
against the level therefore differ only by the level, not by a new draw per point, and
every method sees exactly the same disturbed inputs.

Scores per disturbed fusion (``perturbation_rows``):

- every metric of :data:`PERTURBATION_METRICS` against the **clean** sources (the
  disturbance is a corruption; the clean sources are what should be preserved), and the
  target metrics against the group's target when it has one;
- ``RMSE_vs_undisturbed``, ``PSNR_vs_undisturbed``, ``SSIM_vs_undisturbed``: the fused
  image against the same method's fusion of the undisturbed inputs (level 0 rows hold
  that undisturbed result: RMSE 0, PSNR inf, SSIM 1).

``perturbation_summary``: mean, std, n per pair (and ``"all"``) x method x kind x level.
"""

from __future__ import annotations

import os
import zlib
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..data.targets import MODALITY_PAIRS
from ..errors import InputError
from ..fusion import Method
from ..metrics import evaluate
from ..validation import check_int
from ..progress import ProgressCallback
from ._common import (
    PRIMARY,
    SECONDARY,
    DATA_RANGE,
    TIME_COLUMN,
    fuse_case,
    metric_columns,
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

STUDY = "perturbation"
#: Metrics against the clean sources (FMI, the slowest metric, is left out: many fusions are scored).
PERTURBATION_METRICS: tuple[str, ...] = ("EN", "SF", "GRAD", "MI", "QW", "QABF", "SSIM_S", "VIF",
                                         "RMSE", "PSNR", "SSIM")
#: Full-reference metrics against the undisturbed fused result, and their column suffix.
REFERENCE_METRICS: tuple[str, ...] = ("RMSE", "PSNR", "SSIM")
REFERENCE_SUFFIX = "_vs_undisturbed"
FULL = {"count_per_pair": 2, "pairs": MODALITY_PAIRS, "shape": (256, 256), "draws": 3,
        "levels": {"gaussian": (0.01, 0.02, 0.05, 0.1), "salt_and_pepper": (0.01, 0.02, 0.05, 0.1)}}
QUICK = {"count_per_pair": 2, "pairs": PAPER_PAIRS, "shape": (64, 64), "draws": 1,
         "levels": {"gaussian": (0.02, 0.05), "salt_and_pepper": (0.01, 0.05)}}
ALL_PAIRS = "all"


def default_cases(quick: bool = False, data_seed: int = 0, shape: tuple[int, int] | None = None) -> list[Case]:
    spec = QUICK if quick else FULL
    return phantom_dataset(spec["count_per_pair"], spec["pairs"], shape or spec["shape"], data_seed)


# ---------------------------------------------------------------------- disturbances


def _gaussian(image: np.ndarray, level: float, field: np.ndarray) -> np.ndarray:
    return image + level * field[0]


def _salt_and_pepper(image: np.ndarray, level: float, field: np.ndarray) -> np.ndarray:
    hit = field[0] < level  # nested: a pixel hit at a level is hit at every higher level
    return np.where(hit, (field[1] < 0.5).astype(image.dtype), image)


def _speckle(image: np.ndarray, level: float, field: np.ndarray) -> np.ndarray:
    return image * (1.0 + level * field[0])


#: kind -> (disturb(image, level, field), draw the field from a generator and a shape, level range)
KINDS: dict[str, tuple[Callable[[np.ndarray, float, np.ndarray], np.ndarray],
                       Callable[[np.random.Generator, tuple[int, ...]], np.ndarray], tuple[float, float]]] = {
    "gaussian": (_gaussian, lambda rng, shape: rng.standard_normal((1, *shape)), (0.0, 1.0)),
    "salt_and_pepper": (_salt_and_pepper, lambda rng, shape: rng.random((2, *shape)), (0.0, 1.0)),
    "speckle": (_speckle, lambda rng, shape: rng.standard_normal((1, *shape)), (0.0, 1.0)),
}


def noise_generator(seed: int, group: str, input_index: int, kind: str, draw: int) -> np.random.Generator:
    """The generator of one random field; crc32 keeps it stable across processes
    (Python's ``hash`` of a string changes with every interpreter start)."""
    return np.random.default_rng([seed, zlib.crc32(group.encode()), input_index, zlib.crc32(kind.encode()), draw])


def disturb(image: np.ndarray, kind: str, level: float, rng: np.random.Generator | None = None,
            field: np.ndarray | None = None) -> np.ndarray:
    """A disturbed copy of a [0, 1] image, clipped to [0, 1].

    :param image: 2D image in [0, 1] (not modified).
    :param kind: a key of :data:`KINDS`.
    :param level: sigma (fraction of the range) or fraction of pixels.
    :param rng: draws the random field when ``field`` is not given.
    :param field: a field from the kind's drawer (to reuse one draw across levels).
    """
    if kind not in KINDS:
        raise InputError(f"disturbance: unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    apply, draw, (low, high) = KINDS[kind]
    if not (low <= float(level) <= high):
        raise InputError(f"disturbance {kind}: level {level!r} outside [{low}, {high}]")
    image = np.asarray(image, dtype=np.float32)
    if field is None:
        field = draw(rng if rng is not None else np.random.default_rng(), image.shape)
    return np.clip(apply(image, float(level), field), 0.0, 1.0).astype(np.float32)


def disturbance_label(kind: str, level: float) -> str:
    """``"primary"`` / ``"secondary"`` when the level is the papers' level for that kind, else ``""``."""
    if np.isclose(level, PRIMARY.get(kind, -1.0)):
        return "primary"
    if np.isclose(level, SECONDARY.get(kind, -1.0)):
        return "secondary"
    return ""


# ---------------------------------------------------------------------- study


def _check_levels(levels: Mapping[str, Iterable[float]]) -> dict[str, list[float]]:
    checked: dict[str, list[float]] = {}
    for kind, values in levels.items():
        if kind not in KINDS:
            raise InputError(f"disturbance: unknown kind {kind!r}; choose from {', '.join(KINDS)}")
        values = sorted({float(v) for v in values})
        low, high = KINDS[kind][2]
        if not values or any(not (low < v <= high) for v in values):
            raise InputError(f"disturbance {kind}: levels must lie in ({low}, {high}], got {values}")
        checked[kind] = values
    if not checked:
        raise InputError("disturbance: give at least one kind with levels")
    return checked


def perturbation_study(
    cases: Sequence[Case],
    methods: Iterable[Method] | None = ("default", "average", "laplacian"),
    *,
    levels: Mapping[str, Iterable[float]] | None = None,
    draws: int = 1,
    device: str | None = None,
    seed: int = 0,
    metrics: Sequence[str] = PERTURBATION_METRICS,
    progress: ProgressCallback = no_progress,
) -> StudyResult:
    """Fuse every case undisturbed and at every disturbance level (no files written).

    :param cases: the data set.
    :param methods: methods to test (default: the shipped model, average, Laplacian pyramid).
    :param levels: kind -> levels (> 0); default :data:`FULL` ``["levels"]``.
    :param draws: independent noise draws per level (results averaged in the summary).
    :param device: for learned models.
    :param seed: the noise seed (also seeds torch/numpy).
    :param metrics: metric keys against the clean sources (and target).
    :param progress: ``progress(fraction, message)``.
    """
    draws = check_int(draws, "draws")
    grid = _check_levels(FULL["levels"] if levels is None else levels)
    cases = check_cases(cases)
    chosen = resolve_methods(methods)
    seed_everything(seed)
    rows: list[Row] = []
    total = len(chosen) * len(cases)
    for m, (label, method) in enumerate(chosen):
        warm_up(method, cases[0], device)
        for c, case in enumerate(cases):
            progress((m * len(cases) + c) / total, f"{label}: {case.name}")
            clean = fuse_case(case, method, device=device)
            base = {"group": case.name, "pair": case.pair, "method": label}
            clean_scores = _scores(clean.image, case, clean.image, metrics)
            for kind in grid:  # level 0 = the undisturbed fusion, so every curve starts there
                rows.append({**base, "kind": kind, "level": 0.0, "disturbance": "none", "draw": 0,
                             **clean_scores, TIME_COLUMN: clean.seconds})
            for kind, values in grid.items():
                for draw in range(1, draws + 1):
                    fields = [KINDS[kind][1](noise_generator(seed, case.name, k, kind, draw), x.shape)
                              for k, x in enumerate(case.inputs)]
                    for level in values:
                        noisy = [disturb(x, kind, level, field=f) for x, f in zip(case.inputs, fields)]
                        result = fuse_case(case, method, device=device, inputs=noisy)
                        rows.append({**base, "kind": kind, "level": level,
                                     "disturbance": disturbance_label(kind, level), "draw": draw,
                                     **_scores(result.image, case, clean.image, metrics),
                                     TIME_COLUMN: result.seconds})
    progress(1.0, "done")
    columns = ["group", "pair", "method", "kind", "level", "disturbance", "draw", *metric_columns(rows),
               *[f"{k}{REFERENCE_SUFFIX}" for k in REFERENCE_METRICS]]
    columns = [c for c in columns if c != TIME_COLUMN] + [TIME_COLUMN]
    rows = [{c: row.get(c) for c in columns} for row in rows]
    config = {"methods": [label for label, _ in chosen], "levels": grid, "draws": draws, "seed": seed,
              "primary": PRIMARY, "secondary": SECONDARY, "metrics": list(metrics),
              "reference_metrics": [f"{k}{REFERENCE_SUFFIX}" for k in REFERENCE_METRICS],
              "noise": "common random numbers per (seed, group, input, kind, draw); clipped to [0, 1]",
              "device": resolved_device(device), "data": describe(cases)}
    return StudyResult(STUDY, {"perturbation_rows": rows, "perturbation_summary": summarise(rows)}, config)


def _scores(fused: np.ndarray, case: Case, undisturbed: np.ndarray, metrics: Sequence[str]) -> dict[str, float]:
    """Metrics vs the clean sources (and target), then RMSE/PSNR/SSIM vs the undisturbed fusion."""
    values = score(fused, case.inputs, case.target, metrics)
    against = evaluate(fused, list(case.inputs), undisturbed, REFERENCE_METRICS, data_range=DATA_RANGE)
    return {**values, **{f"{k}{REFERENCE_SUFFIX}": v for k, v in against.items()}}


def summarise(rows: Sequence[Row]) -> list[Row]:
    """mean, std, n of each quantity per pair (and ``"all"``) x method x kind x level (over groups and draws)."""
    quantities = [c for c in rows[0] if c not in ("group", "pair", "method", "kind", "level", "disturbance", "draw")] \
        if rows else []
    pairs = [ALL_PAIRS, *dict.fromkeys(row["pair"] for row in rows)]
    keys = list(dict.fromkeys((row["method"], row["kind"], row["level"], row["disturbance"]) for row in rows))
    summary = []
    for pair in pairs:
        mine_pair = [r for r in rows if pair in (ALL_PAIRS, r["pair"])]
        for method, kind, level, label in keys:
            mine = [r for r in mine_pair if r["method"] == method and r["kind"] == kind and r["level"] == level]
            for quantity in quantities:
                s = spread([r[quantity] for r in mine])
                summary.append({"pair": pair, "method": method, "kind": kind, "level": level,
                                "disturbance": label, "quantity": quantity,
                                "mean": s["mean"], "std": s["std"], "count": s["n"]})
    return summary


def run_perturbation(
    out: str | os.PathLike = "experiments",
    cases: Sequence[Case] | None = None,
    *,
    methods: Iterable[Method] | None = ("default", "average", "laplacian"),
    levels: Mapping[str, Iterable[float]] | None = None,
    draws: int | None = None,
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
    """Run the perturbation study into a new run folder ``<out>/perturbation-YYYYmmdd-HHMMSS``.

    :param levels: kind -> levels (default :data:`FULL`/:data:`QUICK` levels).
    :param draws: noise draws per level (default 3; quick 1).
    Other parameters as in :func:`MedFusionLib.experiments.compare.run_compare`.
    """
    spec = QUICK if quick else FULL
    with open_run(out, STUDY, name=name, force=force, run=run, report=report) as folder:
        data = default_cases(quick, data_seed) if cases is None else cases
        result = perturbation_study(data, methods, levels=spec["levels"] if levels is None else levels,
                                    draws=draws or spec["draws"], device=device, seed=seed, progress=progress)
        result.config.update(quick=quick, data_seed=data_seed if cases is None else None)
        return folder.write_study(result)
