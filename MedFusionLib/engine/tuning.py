"""Automatic parameter optimisation of a fusion model with Optuna.

Both papers say their "parameters are tuned by automatic optimisation"; this module
does that with `Optuna <https://optuna.org>`_ (the optional ``tune`` extra:
``pip install 'medfusion[tune]'``), not with a hand-written search loop:

* a :class:`SearchSpace` says what is searched (block size, learning rate, network
  shape, optionally the gradient-loss weight);
* each trial builds a model with the sampled parameters, trains it briefly with the
  caller's :class:`~MedFusionLib.engine.training.TrainingConfig` (few iterations by
  default) and scores it by its best validation loss;
* the sampler is TPE, seeded, so a study on the CPU is reproducible bit for bit;
* trials are pruned by Optuna's ``MedianPruner``: the training loop already calls
  ``progress(fraction, "iteration <i>: loss <l>, validation <v>")`` after every
  validation, and :class:`_TrialMonitor` turns those calls into ``trial.report``
  and ``trial.should_prune`` without any change to :mod:`.training` (raising
  ``TrialPruned`` from the callback unwinds ``train``, which restores the model).

The result, a :class:`TuningResult`, gives the best parameters in the form
:meth:`FusionModel.create <MedFusionLib.engine.model.FusionModel.create>` and
:func:`~MedFusionLib.engine.training.train` take, and serialises to JSON.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InputError, MedFusionError
from ..progress import CancelFlag, ProgressCallback
from ..validation import is_integer
from .blocks import validate_block_size
from .model import FusionModel
from .networks import NETWORKS
from .rbm import TrainingCancelled
from .training import (
    TrainingConfig,
    Triplet,
    TripletDataset,
    _check_config,
    fusion_loss,
)


#: Block-size choices per family when the search space does not name any. The DBM's
#: input layer has K n^2 units, so its blocks stay small.
DEFAULT_BLOCK_SIZES: dict[str, tuple[int, ...]] = {"cnn": (16, 32, 64), "dbm": (4, 8, 16)}

#: Training recipe of a trial when the caller gives none: short runs, because a study
#: trains one model per trial; rank the candidates, then train the winner for real
#: (:meth:`TuningResult.best_training_config` with more ``iterations``).
DEFAULT_TUNING_CONFIG = TrainingConfig(
    iterations=300, validation_every=25, patience=None, pretrain_epochs=2, pretrain_blocks=4000
)

# What train() reports after each validation (see training.train); anchored so that the
# DBM's "pre-training: ..." messages never match.
_VALIDATION_MESSAGE = re.compile(r"^iteration (\d+):.*\bvalidation (\S+)\s*$")


@dataclass
class SearchSpace:
    """What :func:`tune` searches. Ranges are ``(low, high)`` inclusive; choices are tuples.

    :param block_sizes: block-size choices (powers of two); None takes
        :data:`DEFAULT_BLOCK_SIZES` of the family. Choices larger than the dataset's
        smallest image side are dropped before the study starts.
    :param learning_rate: Adam step-size range, sampled log-uniformly.
    :param widths: CNN context-encoder channel choices (``width``).
    :param hidden: CNN score-head channel choices (``hidden``).
    :param levels: CNN Laplacian-pyramid depth choices (``levels``).
    :param dbm_depth: DBM number of RBM layers, an integer range.
    :param dbm_first_widths: DBM first hidden-layer size choices; each further layer
        has half the units of the one below (``layer_sizes = [w, w/2, w/4, ...]``).
    :param gradient_weight: range of the gradient-loss weight, sampled uniformly, or
        None to keep the training config's. When it is searched, trials are scored with
        the config's own weight (see :func:`tune`) and pruning is off.
    """

    block_sizes: tuple[int, ...] | None = None
    learning_rate: tuple[float, float] = (3e-4, 1e-2)
    widths: tuple[int, ...] = (4, 8, 12, 16)
    hidden: tuple[int, ...] = (4, 8, 16)
    levels: tuple[int, ...] = (2, 3, 4, 5)
    dbm_depth: tuple[int, int] = (1, 3)
    dbm_first_widths: tuple[int, ...] = (64, 128, 256)
    gradient_weight: tuple[float, float] | None = None

    def block_size_choices(self, family: str, min_side: int) -> list[int]:
        """The admissible block sizes for ``family`` on images whose smallest side is ``min_side``.

        :param family: ``"cnn"`` or ``"dbm"``.
        :param min_side: the dataset's smallest image side.
        """
        choices = DEFAULT_BLOCK_SIZES[family] if self.block_sizes is None else self.block_sizes
        choices = _choices("block_sizes", choices)
        for n in choices:
            validate_block_size(n)
        usable = sorted({int(n) for n in choices if n <= min_side})
        if not usable:
            raise InputError(
                f"search space block_sizes: none of {sorted(choices)} fits the smallest training image side "
                f"{min_side}; give smaller block sizes"
            )
        return usable

    def validate(self, family: str) -> None:
        """Raise :class:`InputError` naming the first unusable entry for ``family``."""
        _range("learning_rate", self.learning_rate, positive=True)
        if self.gradient_weight is not None:
            _range("gradient_weight", self.gradient_weight, positive=False)
        if family == "cnn":
            for name in ("widths", "hidden", "levels"):
                _choices(name, getattr(self, name))
        else:
            depth = self.dbm_depth
            if not (isinstance(depth, (tuple, list)) and len(depth) == 2 and all(is_integer(v) for v in depth)
                    and 1 <= depth[0] <= depth[1]):
                raise InputError(f"search space dbm_depth: expected (low, high) integers with 1 <= low <= high, got {depth!r}")
            _choices("dbm_first_widths", self.dbm_first_widths)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class TuningResult:
    """The outcome of :func:`tune`.

    :param family: the model family tuned.
    :param n_inputs: K, the number of fused inputs of the dataset.
    :param best_params: the best trial's parameters, by Optuna name (``block_size``,
        ``learning_rate``, ``levels``/``width``/``hidden`` or ``depth``/``first_width``,
        optionally ``gradient_weight``).
    :param best_value: the best trial's score (lower is better).
    :param best_trial: the best trial's number.
    :param trials: one dict per trial of the study: ``number``, ``params``, ``value``
        (None if it has none), ``state`` (``COMPLETE``, ``PRUNED``, ``FAIL``, ...),
        ``seconds`` and ``intermediate_values`` (validation loss by iteration).
    :param base_config: the training config the trials started from (as a dict).
    :param search_space: the search space (as a dict).
    :param seed: the study's seed.
    """

    family: str
    n_inputs: int
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    base_config: dict[str, Any] = field(default_factory=dict)
    search_space: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def best_model_kwargs(self) -> tuple[str, int, dict[str, Any]]:
        """``(family, block_size, network config)`` of the best trial, for
        ``FusionModel.create(family, n_inputs, block_size, **config)``."""
        return _model_kwargs(self.family, self.best_params)

    def create_model(self) -> FusionModel:
        """A new, untrained model with the best trial's architecture."""
        family, block_size, config = self.best_model_kwargs()
        return FusionModel.create(family, self.n_inputs, block_size, **config)

    def best_training_config(self, iterations: int | None = None) -> TrainingConfig:
        """The base training config with the best trial's learning rate (and gradient weight).

        :param iterations: replaces the (short, tuning-sized) number of iterations;
            None keeps the base config's.
        """
        config = _trial_config(TrainingConfig(**self.base_config), self.best_params)
        return config if iterations is None else replace(config, iterations=iterations)

    def to_json(self, indent: int | None = 2) -> str:
        """The result as JSON (``best_value`` may be ``Infinity`` if every trial diverged)."""
        return json.dumps(asdict(self), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "TuningResult":
        """Read what :meth:`to_json` wrote."""
        data = json.loads(text)
        for trial in data.get("trials", []):  # JSON object keys are strings; steps are ints
            trial["intermediate_values"] = {int(k): v for k, v in trial.get("intermediate_values", {}).items()}
        return cls(**data)


# ---------------------------------------------------------------------------- tune


def tune(
    dataset: TripletDataset | Sequence[Triplet],
    family: str = "cnn",
    n_trials: int = 20,
    timeout: float | None = None,
    search_space: SearchSpace | None = None,
    base_config: TrainingConfig | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    storage: str | None = None,
    quiet: bool = True,
) -> TuningResult:
    """Search model and training parameters that minimise the validation loss.

    Each trial samples parameters from ``search_space`` (TPE, seeded with ``seed``),
    seeds torch with ``seed + trial.number``, creates the model, trains it with
    ``base_config`` overridden by the trial's learning rate (and gradient weight) and
    returns ``history.best_validation_loss``. All trials share the training seed, hence
    the same train/validation split, blocks and validation set, so their scores compare
    like for like. Unpromising trials are stopped early by a ``MedianPruner`` (from the
    sixth trial on, after a quarter of the iterations) fed with the validation losses
    the training loop reports.

    The loss includes ``gradient_weight`` times a gradient term, so a searched gradient
    weight would "win" just by being small: when ``search_space.gradient_weight`` is set,
    each trial's final model is re-scored on the same validation blocks with the base
    config's weight, and pruning is off (the intermediate losses are not comparable).

    :param dataset: training triplets (or a list of :class:`Triplet`); the base config's
        ``validation_fraction`` of them is held out for scoring.
    :param family: ``"cnn"`` or ``"dbm"``.
    :param n_trials: number of trials to run (in addition to those already in ``storage``).
    :param timeout: stop starting new trials after this many seconds (None: no limit).
    :param search_space: what to search (default :class:`SearchSpace`).
    :param base_config: training recipe of every trial (default
        :data:`DEFAULT_TUNING_CONFIG` seeded with ``seed``). Its ``checkpoint`` is not
        written during tuning.
    :param seed: seeds the sampler and the models' initialisation (and the training when
        no ``base_config`` is given); the same seed gives the same study on the CPU.
    :param progress: ``progress(fraction, message)`` over the whole study.
    :param cancel: an object with ``is_set()``; when set, the running trial stops at its
        next validation, the study stops and :class:`TrainingCancelled` is raised.
    :param storage: an Optuna storage URL (e.g. ``"sqlite:///tuning.db"``) to keep the
        study, named ``medfusion-<family>``; an existing study there is resumed.
    :param quiet: keep Optuna's logging at WARNING and above while the study runs.
    :raises InputError: bad arguments, or Optuna not installed.
    :raises TrainingCancelled: ``cancel`` was set.
    """
    if family not in NETWORKS:
        raise InputError(f"family: expected one of {sorted(NETWORKS)}, got {family!r}")
    if not is_integer(n_trials) or n_trials < 1:
        raise InputError(f"n_trials: expected an integer >= 1, got {n_trials!r}")
    if timeout is not None and (not _is_number(timeout) or not (timeout > 0 and math.isfinite(timeout))):
        raise InputError(f"timeout: expected a positive number of seconds or None, got {timeout!r}")
    if not is_integer(seed) or seed < 0:
        raise InputError(f"seed: expected a non-negative integer, got {seed!r}")
    if not isinstance(dataset, TripletDataset):
        if not isinstance(dataset, Sequence) or not all(isinstance(t, Triplet) for t in dataset):
            raise InputError(f"dataset: expected a TripletDataset or a list of Triplet, got {type(dataset).__name__}")
        dataset = TripletDataset(dataset)  # raises "dataset: no triplets" when empty
    if len(dataset) == 0:
        raise InputError("dataset: no triplets")
    space = SearchSpace() if search_space is None else search_space
    if not isinstance(space, SearchSpace):
        raise InputError(f"search_space: expected a SearchSpace, got {type(space).__name__}")
    space.validate(family)
    block_choices = space.block_size_choices(family, dataset.min_side())
    if base_config is None:
        base = replace(DEFAULT_TUNING_CONFIG, seed=seed)
    elif isinstance(base_config, TrainingConfig):
        base = base_config
    else:
        raise InputError(f"base_config: expected a TrainingConfig, got {type(base_config).__name__}")
    _check_config(base)  # fail here, once, rather than inside the first trial
    optuna = _import_optuna()

    if cancel is not None and cancel.is_set():
        raise TrainingCancelled("tuning cancelled before the first trial")

    score_with_reference = space.gradient_weight is not None
    pruner = (
        optuna.pruners.NopPruner()
        if score_with_reference
        # Early validation losses are noisy: judge no trial before a quarter of its run,
        # and none before five trials have completed to give a meaningful median.
        else optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=base.iterations // 4)
    )
    previous_verbosity = optuna.logging.get_verbosity()
    if quiet:
        optuna.logging.set_verbosity(max(previous_verbosity, optuna.logging.WARNING))
    try:
        study = optuna.create_study(
            direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=pruner,
            storage=storage,
            study_name=f"medfusion-{family}" if storage is not None else None,
            load_if_exists=storage is not None,
        )
        first_number = len(study.trials)
        cancelled: list[bool] = []

        def objective(trial: Any) -> float:
            params = _suggest(trial, family, space, block_choices)
            _, block_size, network_config = _model_kwargs(family, params)
            # checkpoint=None: every trial would otherwise overwrite the caller's file.
            config = replace(_trial_config(base, params), checkpoint=None)
            torch.manual_seed(seed + trial.number)
            model = FusionModel.create(family, dataset.n_inputs, block_size, **network_config)
            monitor = _TrialMonitor(optuna, trial, progress, trial.number - first_number, n_trials)
            try:
                history = model.fit(dataset, config, progress=monitor, cancel=cancel)
            except TrainingCancelled:
                # Recorded as PRUNED (it was stopped early, which is what TPE then assumes),
                # not FAIL: Optuna would log a spurious traceback for a user's cancel.
                cancelled.append(True)
                trial.set_user_attr("cancelled", True)
                study.stop()
                raise optuna.TrialPruned("cancelled") from None
            trial.set_user_attr("iterations_run", len(history.train_loss))
            if score_with_reference:
                return _reference_loss(model, dataset, config, base.gradient_weight)
            return float(history.best_validation_loss)

        def after_trial(study: Any, trial: Any) -> None:
            if progress is not None:
                done = min(1.0, (trial.number - first_number + 1) / n_trials)
                value = "" if trial.value is None else f", value {trial.value:.6g}"
                state = "cancelled" if trial.user_attrs.get("cancelled") else trial.state.name.lower()
                progress(done, f"trial {trial.number} {state}{value}")
            if cancel is not None and cancel.is_set():
                cancelled.append(True)
                study.stop()

        study.optimize(objective, n_trials=n_trials, timeout=timeout, callbacks=[after_trial], gc_after_trial=False)
    finally:
        optuna.logging.set_verbosity(previous_verbosity)

    if cancelled:
        raise TrainingCancelled(f"tuning cancelled after {len(study.trials) - first_number} trial(s)")
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise MedFusionError("tuning: no trial completed; see the trials' states")
    best = study.best_trial
    return TuningResult(
        family=family,
        n_inputs=dataset.n_inputs,
        best_params=dict(best.params),
        best_value=float(best.value),
        best_trial=best.number,
        trials=[_trial_record(t) for t in study.trials],
        base_config=asdict(base),
        search_space=space.to_dict(),
        seed=seed,
    )


# ---------------------------------------------------------------------------- helpers


class _TrialMonitor:
    """The ``progress`` callback of one trial's training: reports validation losses to Optuna.

    ``train`` calls it after each validation with ``"iteration <i>: ..., validation <v>"``;
    the iteration is the step (the same for every trial, as they share
    ``validation_every``). Raising ``TrialPruned`` here stops ``train``, which restores the
    model and re-raises, and Optuna records the trial as pruned.
    """

    def __init__(self, optuna: Any, trial: Any, progress: ProgressCallback | None, index: int, total: int) -> None:
        self.optuna, self.trial, self.progress, self.index, self.total = optuna, trial, progress, index, total

    def __call__(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(min(1.0, (self.index + fraction) / self.total), f"trial {self.trial.number}: {message}")
        match = _VALIDATION_MESSAGE.match(message)
        if match is None:
            return
        step = int(match.group(1))
        try:
            value = float(match.group(2).rstrip(","))
        except ValueError:
            return
        if not math.isfinite(value):  # a diverged validation is not a usable intermediate value
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise self.optuna.TrialPruned(f"pruned at iteration {step} (validation {value:.5g})")


def _suggest(trial: Any, family: str, space: SearchSpace, block_choices: list[int]) -> dict[str, Any]:
    """Sample one trial's parameters (the order fixes the sampler's random stream)."""
    params: dict[str, Any] = {
        "block_size": trial.suggest_categorical("block_size", block_choices),
        "learning_rate": trial.suggest_float("learning_rate", *map(float, space.learning_rate), log=True),
    }
    if family == "cnn":
        params["levels"] = trial.suggest_categorical("levels", [int(v) for v in space.levels])
        params["width"] = trial.suggest_categorical("width", [int(v) for v in space.widths])
        params["hidden"] = trial.suggest_categorical("hidden", [int(v) for v in space.hidden])
    else:
        params["depth"] = trial.suggest_int("depth", int(space.dbm_depth[0]), int(space.dbm_depth[1]))
        params["first_width"] = trial.suggest_categorical("first_width", [int(v) for v in space.dbm_first_widths])
    if space.gradient_weight is not None:
        params["gradient_weight"] = trial.suggest_float("gradient_weight", *map(float, space.gradient_weight))
    return params


def _model_kwargs(family: str, params: dict[str, Any]) -> tuple[str, int, dict[str, Any]]:
    """``(family, block_size, network config)`` from a trial's parameters."""
    if family == "cnn":
        config: dict[str, Any] = {k: int(params[k]) for k in ("levels", "width", "hidden")}
    else:
        first, depth = int(params["first_width"]), int(params["depth"])
        config = {"layer_sizes": [max(1, first >> i) for i in range(depth)]}  # halving per layer
    return family, int(params["block_size"]), config


def _trial_config(base: TrainingConfig, params: dict[str, Any]) -> TrainingConfig:
    """``base`` with the trial's training parameters."""
    overrides: dict[str, Any] = {"learning_rate": float(params["learning_rate"])}
    if "gradient_weight" in params:
        overrides["gradient_weight"] = float(params["gradient_weight"])
    return replace(base, **overrides)


def _reference_loss(model: FusionModel, dataset: TripletDataset, config: TrainingConfig, weight: float) -> float:
    """Loss of the trained model with gradient weight ``weight`` on the validation blocks
    ``train`` used (same split, same seed ``config.seed + 1``, no augmentation)."""
    _, validation = dataset.split(config.validation_fraction, config.seed)
    source = validation if validation is not None else dataset
    inputs, targets = source.sample_blocks(
        model.block_size, config.validation_blocks, np.random.default_rng(config.seed + 1), augment=False
    )
    network = model.network.eval()
    device = next(network.parameters()).device
    with torch.no_grad():
        loss = fusion_loss(network(torch.from_numpy(inputs).to(device)), torch.from_numpy(targets).to(device), weight)
    value = float(loss)
    return value if math.isfinite(value) else math.inf


def _trial_record(trial: Any) -> dict[str, Any]:
    seconds = None
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    return {
        "number": trial.number,
        "params": dict(trial.params),
        "value": None if trial.value is None else float(trial.value),
        "state": trial.state.name,
        "seconds": seconds,
        "intermediate_values": {int(k): float(v) for k, v in sorted(trial.intermediate_values.items())},
    }


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise InputError(
            "automatic parameter tuning needs Optuna, which is not installed: pip install 'medfusion[tune]'"
        ) from None
    return optuna


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _choices(name: str, values: Any) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not values or not all(is_integer(v) and v >= 1 for v in values):
        raise InputError(f"search space {name}: expected a non-empty list of positive integers, got {values!r}")
    return tuple(int(v) for v in values)


def _range(name: str, values: Any, positive: bool) -> tuple[float, float]:
    ok = isinstance(values, (tuple, list)) and len(values) == 2 and all(_is_number(v) for v in values)
    if ok:
        low, high = float(values[0]), float(values[1])
        ok = math.isfinite(low) and math.isfinite(high) and low <= high and (low > 0 if positive else low >= 0)
    if not ok:
        bound = "0 < low" if positive else "0 <= low"
        raise InputError(f"search space {name}: expected (low, high) with {bound} <= high, got {values!r}")
    return low, high


__all__ = ["DEFAULT_BLOCK_SIZES", "DEFAULT_TUNING_CONFIG", "SearchSpace", "TuningResult", "tune"]
