"""Convergence study: the training loss against iteration, from a recorded training history.

Source: a :class:`~MedFusionLib.engine.training.TrainingHistory` (as returned by
``FusionModel.fit`` / ``train_recipe``) or the ``<model>.history.json`` written next to
every trained model (the shipped default model has one). Nothing is re-trained: the
curve *is* the recorded history.

Curves (``convergence_curve``): per iteration t = 1..T the training loss, its trailing
moving average over ``window`` iterations (the mean of iterations max(1, t - window + 1)..t,
so the first points average what exists so far), and (``convergence_validation``)
the validation loss at the recorded validation iterations.

**Flattening iteration** (``convergence_summary``): the first iteration t* after which the
smoothed loss stays within ``tolerance`` (default 5 %) of its final value, i.e. the
smallest t* with |s(t) - s(T)| <= tolerance * |s(T)| for every t >= t*. The same rule,
unsmoothed, is applied to the validation curve. A loss still falling at the end flattens
late by this rule -- which is the honest reading: it has not settled.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from ..engine.training import TrainingHistory
from ..errors import InputError
from ..validation import check_int
from ..progress import ProgressCallback
from ._run import Row, RunFolder, StudyResult, no_progress
from ._study import open_run

STUDY = "convergence"
DEFAULT_WINDOW = 100
DEFAULT_TOLERANCE = 0.05


@dataclass
class ConvergenceCurve:
    """The loss curves of one training run and where they flatten.

    :param iterations: 1..T.
    :param train_loss: the recorded training loss per iteration.
    :param smoothed: its trailing moving average.
    :param validation_iterations: iterations at which validation ran.
    :param validation_loss: the validation loss there.
    :param window: moving-average window (iterations).
    :param tolerance: relative band of the flattening rule.
    :param flattening_iteration: of the smoothed training loss (None for an empty history).
    :param validation_flattening_iteration: of the validation loss (None without validation).
    """

    iterations: list[int]
    train_loss: list[float]
    smoothed: list[float]
    validation_iterations: list[int]
    validation_loss: list[float]
    window: int
    tolerance: float
    flattening_iteration: int | None
    validation_flattening_iteration: int | None


def load_history(source: TrainingHistory | str | os.PathLike) -> TrainingHistory:
    """A history object, or one read from a ``.history.json`` file (or a model path next to one).

    :param source: a :class:`TrainingHistory`, ``model.pt.history.json`` or ``model.pt``.
    """
    if isinstance(source, TrainingHistory):
        return source
    path = Path(source)
    if not path.name.endswith(".json") and Path(f"{path}.history.json").is_file():
        path = Path(f"{path}.history.json")
    if not path.is_file():
        raise InputError(f"{source}: no training history here (expected a <model>.history.json file)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable history JSON ({exc})") from None
    known = {f.name for f in fields(TrainingHistory)}
    if not isinstance(data, dict) or "train_loss" not in data:
        raise InputError(f"{path}: not a training history (no train_loss)")
    return TrainingHistory(**{k: v for k, v in data.items() if k in known})


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` points; the first ``window - 1`` points average what exists so far."""
    window = check_int(window, "window")
    array = np.asarray(values, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(array)])
    index = np.arange(1, array.size + 1)
    start = np.maximum(index - window, 0)
    return (cumulative[index] - cumulative[start]) / (index - start)


def flattening_iteration(values: Sequence[float], iterations: Sequence[int], tolerance: float = DEFAULT_TOLERANCE
                         ) -> int | None:
    """The first iteration after which ``values`` stay within ``tolerance`` x |final value| of the final value.

    :param values: the (smoothed) curve.
    :param iterations: the iteration of each value (same length, increasing).
    :param tolerance: relative band, e.g. 0.05.
    :returns: the iteration, or None for an empty curve.
    """
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise InputError(f"tolerance: expected a non-negative number, got {tolerance!r}")
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return None
    if array.size != len(iterations):
        raise InputError("flattening: values and iterations differ in length")
    outside = np.flatnonzero(np.abs(array - array[-1]) > tolerance * abs(array[-1]))
    # inside the band from just after the last point outside it (the final point is always inside)
    return int(iterations[0 if outside.size == 0 else outside[-1] + 1])


def convergence_curve(history: TrainingHistory | str | os.PathLike, window: int = DEFAULT_WINDOW,
                      tolerance: float = DEFAULT_TOLERANCE) -> ConvergenceCurve:
    """The curves and flattening iterations of a history (see the module docstring).

    :param history: a :class:`TrainingHistory` or a history / model file.
    :param window: moving-average window (clipped to the history's length).
    :param tolerance: relative band of the flattening rule.
    """
    history = load_history(history)
    # Steps on smaller blocks (small_block_fraction) have losses on another scale: left out.
    iterations, train = history.full_size_losses()
    if not train:
        raise InputError("history: no training iterations recorded")
    smoothed = moving_average(train, min(window, len(train)))
    validation_iterations = [int(i) for i in history.validation_iterations]
    validation = [float(v) for v in history.validation_loss]
    return ConvergenceCurve(
        iterations, train, [float(v) for v in smoothed], validation_iterations, validation,
        min(window, len(train)), tolerance, flattening_iteration(smoothed, iterations, tolerance),
        flattening_iteration(validation, validation_iterations, tolerance) if validation else None,
    )


def convergence_study(history: TrainingHistory | str | os.PathLike, *, window: int = DEFAULT_WINDOW,
                      tolerance: float = DEFAULT_TOLERANCE, source: str = "", progress: ProgressCallback = no_progress
                      ) -> StudyResult:
    """The convergence tables of one history (no files written).

    :param history: a history or a history / model file.
    :param window: moving-average window.
    :param tolerance: flattening band.
    :param source: where the history came from (recorded in the config).
    :param progress: ``progress(fraction, message)``.
    """
    curve = convergence_curve(history, window, tolerance)
    loaded = load_history(history)
    rows: list[Row] = [{"iteration": i, "train_loss": t, "smoothed_loss": s}
                       for i, t, s in zip(curve.iterations, curve.train_loss, curve.smoothed)]
    validation: list[Row] = [{"iteration": i, "validation_loss": v}
                             for i, v in zip(curve.validation_iterations, curve.validation_loss)]
    summary: list[Row] = [{
        "iterations": len(curve.iterations), "window": curve.window, "tolerance": curve.tolerance,
        "flattening_iteration": curve.flattening_iteration,
        "validation_flattening_iteration": curve.validation_flattening_iteration,
        "final_smoothed_loss": curve.smoothed[-1], "first_smoothed_loss": curve.smoothed[0],
        "best_iteration": loaded.best_iteration,
        "best_validation_loss": loaded.best_validation_loss if math.isfinite(loaded.best_validation_loss) else None,
        "stopped_early": loaded.stopped_early, "training_seconds": loaded.seconds, "training_device": loaded.device,
    }]
    progress(1.0, "done")
    config = {"source": source or ("TrainingHistory object" if isinstance(history, TrainingHistory) else str(history)),
              "window": curve.window, "tolerance": tolerance,
              "flattening_rule": "first iteration after which the smoothed loss stays within tolerance x |final| "
                                 "of its final value"}
    tables = {"convergence_curve": rows, "convergence_summary": summary}
    if validation:
        tables["convergence_validation"] = validation
    return StudyResult(STUDY, tables, config)


def default_history() -> Path:
    """The shipped default model's training history."""
    from ..fusion import DEFAULT_MODEL_PATH

    return Path(f"{DEFAULT_MODEL_PATH}.history.json")


def run_convergence(
    out: str | os.PathLike = "experiments",
    history: TrainingHistory | str | os.PathLike | None = None,
    *,
    window: int = DEFAULT_WINDOW,
    tolerance: float = DEFAULT_TOLERANCE,
    quick: bool = False,
    seed: int = 0,
    force: bool = False,
    name: str | None = None,
    report: bool = True,
    run: RunFolder | None = None,
    progress: ProgressCallback = no_progress,
) -> StudyResult:
    """Run the convergence study into a new run folder ``<out>/convergence-YYYYmmdd-HHMMSS``.

    :param history: a history, or a history / model file; default: the shipped default
        model's history (reading it costs nothing, so ``quick`` changes nothing here).
    :param seed: recorded only (the study draws nothing random).
    Other parameters as in :func:`MedFusionLib.experiments.compare.run_compare`.
    """
    source = history if history is not None else default_history()
    load_history(source)  # a missing or broken history fails before a run folder is made
    with open_run(out, STUDY, name=name, force=force, run=run, report=report) as folder:
        result = convergence_study(source, window=window, tolerance=tolerance, progress=progress)
        result.config.update(quick=quick, seed=seed)
        return folder.write_study(result)
