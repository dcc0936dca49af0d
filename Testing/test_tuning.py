"""Tests of automatic parameter optimisation with Optuna (MedFusionLib.engine.tuning)."""

from __future__ import annotations

import math
import sys
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from MedFusionLib.engine.rbm import TrainingCancelled
from MedFusionLib.engine.training import Triplet, TripletDataset, TrainingConfig, fusion_loss
from MedFusionLib.engine.tuning import SearchSpace, TuningResult, _TrialMonitor, tune
from MedFusionLib.errors import InputError

# Tiny runs: 30 iterations, a validation every 10, small batches, CPU only (bit-reproducible).
FAST = TrainingConfig(iterations=30, validation_every=10, batch_size=4, validation_blocks=16,
                      patience=None, device="cpu", seed=0)
DBM_FAST = replace(FAST, pretrain_blocks=200, pretrain_epochs=1)


def smooth_image(rng: np.random.Generator, side: int) -> np.ndarray:
    image = ndimage.gaussian_filter(rng.random((side, side)), 2.0)
    return ((image - image.min()) / (image.max() - image.min())).astype(np.float32)


def make_dataset(side: int = 48, count: int = 6, seed: int = 0) -> TripletDataset:
    rng = np.random.default_rng(seed)
    triplets = []
    for index in range(count):
        a, b = smooth_image(rng, side), smooth_image(rng, side)
        triplets.append(Triplet([a, b], np.maximum(a, b), f"toy {index}"))
    return TripletDataset(triplets)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny networks gain nothing from intra-op threads, and on a busy machine spinning
    # OpenMP threads make them many times slower; restore the setting afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def optuna():
    return pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def dataset() -> TripletDataset:
    return make_dataset()


@pytest.fixture(scope="module")
def cnn_result(optuna, dataset) -> TuningResult:
    return tune(dataset, "cnn", n_trials=4, base_config=FAST, seed=0)


def param_sequence(result: TuningResult) -> list[dict]:
    return [trial["params"] for trial in result.trials]


# ------------------------------------------------------------------ a CNN study


def test_study_runs_and_best_value_is_min_over_completed_trials(cnn_result):
    assert [t["number"] for t in cnn_result.trials] == [0, 1, 2, 3]
    completed = [t for t in cnn_result.trials if t["state"] == "COMPLETE"]
    # The median pruner waits for five completed trials, so none of four can be pruned.
    assert len(completed) == 4
    assert cnn_result.best_value == min(t["value"] for t in completed)
    best = next(t for t in completed if t["number"] == cnn_result.best_trial)
    assert best["value"] == cnn_result.best_value and best["params"] == cnn_result.best_params
    assert all(t["seconds"] is not None and t["seconds"] > 0 for t in completed)
    # Distinct parameter sets: the sampler really explores.
    assert len({tuple(sorted(p.items())) for p in param_sequence(cnn_result)}) == 4


def test_intermediate_values_come_from_every_validation(cnn_result):
    # The pruner is fed by parsing train()'s progress messages: if their format changed,
    # no intermediate values would be recorded and pruning would silently stop working.
    for trial in cnn_result.trials:
        steps = list(trial["intermediate_values"])
        assert steps == [10, 20, 30]
        # Messages carry 5 decimals; the trial's value is the full-precision minimum.
        assert abs(min(trial["intermediate_values"].values()) - trial["value"]) <= 5e-6


def test_best_params_lie_inside_the_search_space(cnn_result):
    space = SearchSpace()
    for params in param_sequence(cnn_result):
        assert set(params) == {"block_size", "learning_rate", "levels", "width", "hidden"}
        assert params["block_size"] in (16, 32)  # 64 > the 48-pixel images, filtered out
        assert space.learning_rate[0] <= params["learning_rate"] <= space.learning_rate[1]
        assert params["levels"] in space.levels
        assert params["width"] in space.widths
        assert params["hidden"] in space.hidden


def test_same_seed_gives_the_same_study_bit_for_bit(optuna, dataset, cnn_result):
    again = tune(dataset, "cnn", n_trials=4, base_config=FAST, seed=0)
    assert param_sequence(again) == param_sequence(cnn_result)
    assert [t["value"] for t in again.trials] == [t["value"] for t in cnn_result.trials]
    assert again.best_value == cnn_result.best_value
    other = tune(dataset, "cnn", n_trials=2, base_config=FAST, seed=1)  # and the seed matters
    assert param_sequence(other) != param_sequence(cnn_result)[:2]


def test_best_trial_reproduces_outside_the_study(cnn_result, dataset):
    family, block_size, config = cnn_result.best_model_kwargs()
    assert family == "cnn" and block_size == cnn_result.best_params["block_size"]
    assert config == {k: cnn_result.best_params[k] for k in ("levels", "width", "hidden")}
    training = cnn_result.best_training_config()
    assert training.learning_rate == cnn_result.best_params["learning_rate"]
    assert (training.iterations, training.seed) == (FAST.iterations, FAST.seed)
    assert cnn_result.best_training_config(iterations=5000).iterations == 5000
    # Seeded with seed + trial number before creation, as the objective does.
    torch.manual_seed(cnn_result.seed + cnn_result.best_trial)
    model = cnn_result.create_model()
    assert {k: v for k, v in model.network.config().items() if k not in ("half_resolution_finest", "clamp_to_inputs")} == {"n_inputs": 2, **config}
    history = model.fit(dataset, training)
    assert history.best_validation_loss == cnn_result.best_value


def test_result_round_trips_through_json(cnn_result):
    text = cnn_result.to_json()
    assert TuningResult.from_json(text) == cnn_result
    assert '"best_params"' in text and '"trials"' in text


# ------------------------------------------------------------------ search space


def test_block_size_choices_are_filtered_to_the_image_size():
    space = SearchSpace()
    assert space.block_size_choices("cnn", 48) == [16, 32]
    assert space.block_size_choices("cnn", 64) == [16, 32, 64]
    assert space.block_size_choices("dbm", 10) == [4, 8]
    with pytest.raises(InputError, match="block_sizes"):
        space.block_size_choices("cnn", 12)
    with pytest.raises(InputError, match="power of two"):
        SearchSpace(block_sizes=(12,)).block_size_choices("cnn", 48)


def test_block_sizes_above_the_image_size_are_never_proposed(optuna):
    small = make_dataset(side=20, count=4, seed=3)
    space = SearchSpace(block_sizes=(8, 16, 32, 64), levels=(2,), widths=(4,), hidden=(4,))
    result = tune(small, "cnn", n_trials=4, search_space=space, base_config=replace(FAST, iterations=10), seed=2)
    proposed = [t["params"]["block_size"] for t in result.trials]
    assert len(proposed) == 4 and set(proposed) <= {8, 16}
    assert all(t["state"] == "COMPLETE" for t in result.trials)


def test_searched_gradient_weight_is_scored_with_the_base_weight(optuna, dataset):
    space = SearchSpace(gradient_weight=(0.0, 1.0), levels=(2,), widths=(4,), hidden=(4,), block_sizes=(16,))
    base = replace(FAST, gradient_weight=0.5)
    result = tune(dataset, "cnn", n_trials=2, search_space=space, base_config=base, seed=0)
    weights = [t["params"]["gradient_weight"] for t in result.trials]
    assert all(0.0 <= w <= 1.0 for w in weights) and weights[0] != weights[1]
    assert result.best_training_config().gradient_weight == result.best_params["gradient_weight"]
    # Re-train the best trial and score it on the validation blocks train() uses, with the
    # base weight 0.5 (not the trial's): that is the value the study must have recorded.
    torch.manual_seed(result.seed + result.best_trial)
    model = result.create_model()
    model.fit(dataset, result.best_training_config())
    _, validation = dataset.split(base.validation_fraction, base.seed)
    inputs, targets = validation.sample_blocks(16, base.validation_blocks, np.random.default_rng(base.seed + 1),
                                               augment=False)
    with torch.no_grad():
        expected = float(fusion_loss(model.network(torch.from_numpy(inputs)), torch.from_numpy(targets), 0.5))
    assert result.best_value == expected


# ------------------------------------------------------------------ DBM, storage


def test_dbm_study_runs(optuna, dataset):
    space = SearchSpace(block_sizes=(4, 8), dbm_depth=(1, 3), dbm_first_widths=(8, 16))
    result = tune(dataset, "dbm", n_trials=2, search_space=space, base_config=DBM_FAST, seed=0)
    assert [t["state"] for t in result.trials] == ["COMPLETE", "COMPLETE"]
    assert set(result.best_params) == {"block_size", "learning_rate", "depth", "first_width"}
    family, block_size, config = result.best_model_kwargs()
    first, depth = result.best_params["first_width"], result.best_params["depth"]
    assert family == "dbm" and block_size in (4, 8)
    assert config["layer_sizes"] == [first // 2**i for i in range(depth)]
    model = result.create_model()
    assert model.family == "dbm" and list(model.network.layer_sizes) == config["layer_sizes"]
    assert math.isfinite(result.best_value)


def test_storage_resumes_the_study(optuna, dataset, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    space, config = SearchSpace(levels=(2,), widths=(4,), hidden=(4,)), replace(FAST, iterations=10)
    first = tune(dataset, n_trials=2, search_space=space, base_config=config, storage=storage)
    second = tune(dataset, n_trials=2, search_space=space, base_config=config, storage=storage)
    assert [t["number"] for t in first.trials] == [0, 1]
    assert [t["number"] for t in second.trials] == [0, 1, 2, 3]
    assert second.trials[:2] == first.trials
    assert second.best_value == min(t["value"] for t in second.trials)


# ------------------------------------------------------------------ cancel, pruning


def test_cancel_during_a_trial_stops_the_study_and_raises(optuna, dataset):
    cancel = threading.Event()
    messages: list[str] = []

    def progress(fraction, message):
        messages.append(message)
        if "iteration 10" in message:
            cancel.set()

    with pytest.raises(TrainingCancelled):
        tune(dataset, n_trials=4, base_config=FAST, progress=progress, cancel=cancel)
    # Trial 0 stopped at its second validation check; no other trial started.
    assert not any(m.startswith("trial 1") for m in messages)
    assert not any("iteration 30" in m for m in messages)


def test_cancel_between_trials_stops_the_study_and_raises(optuna, dataset):
    cancel = threading.Event()
    messages: list[str] = []

    def progress(fraction, message):
        messages.append(message)
        if message.startswith("trial 0 complete"):
            cancel.set()

    with pytest.raises(TrainingCancelled, match="1 trial"):
        tune(dataset, n_trials=4, base_config=FAST, progress=progress, cancel=cancel)
    assert messages[-1].startswith("trial 0 complete")


def test_cancel_already_set_raises_before_any_trial(optuna, dataset):
    cancel = threading.Event()
    cancel.set()
    calls: list[str] = []
    with pytest.raises(TrainingCancelled):
        tune(dataset, n_trials=2, base_config=FAST, progress=lambda f, m: calls.append(m), cancel=cancel)
    assert calls == []


class FakeTrial:
    number = 7

    def __init__(self, prune_at: int | None) -> None:
        self.prune_at = prune_at
        self.reports: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.prune_at is not None and self.reports[-1][1] >= self.prune_at


def test_trial_monitor_reports_validations_and_prunes(optuna):
    trial = FakeTrial(prune_at=20)
    seen: list[tuple[float, str]] = []
    monitor = _TrialMonitor(optuna, trial, lambda f, m: seen.append((f, m)), index=1, total=4)
    monitor(0.0, "pre-training: layer 1/2 epoch 1/5, reconstruction error 0.5, validation 0.1")
    monitor(1 / 3, "iteration 10: loss 0.04000, validation 0.03500")
    monitor(0.5, "iteration 15: loss nan, validation nan")  # not a usable intermediate value
    assert trial.reports == [(0.035, 10)]
    with pytest.raises(optuna.TrialPruned):
        monitor(2 / 3, "iteration 20: loss 0.03000, validation 0.02500")
    assert trial.reports[-1] == (0.025, 20)
    assert seen[1] == (pytest.approx((1 + 1 / 3) / 4), "trial 7: iteration 10: loss 0.04000, validation 0.03500")


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"family": "gan"}, "family"),
        ({"n_trials": 0}, "n_trials"),
        ({"n_trials": True}, "n_trials"),
        ({"n_trials": 2.0}, "n_trials"),
        ({"timeout": -1.0}, "timeout"),
        ({"seed": -1}, "seed"),
        ({"search_space": SearchSpace(learning_rate=(0.0, 1e-2))}, "learning_rate"),
        ({"search_space": SearchSpace(learning_rate=(1e-2, 1e-3))}, "learning_rate"),
        ({"search_space": SearchSpace(widths=())}, "widths"),
        ({"search_space": SearchSpace(block_sizes=(64,))}, "block_sizes"),
        ({"search_space": SearchSpace(gradient_weight=(-1.0, 1.0))}, "gradient_weight"),
        ({"family": "dbm", "search_space": SearchSpace(dbm_depth=(0, 2))}, "dbm_depth"),
        ({"search_space": {"widths": (4,)}}, "search_space"),
        ({"base_config": {"iterations": 10}}, "base_config"),
        ({"base_config": replace(FAST, iterations=0)}, "iterations"),
    ],
)
def test_bad_arguments_raise_input_error(dataset, kwargs, match):
    with pytest.raises(InputError, match=match):
        tune(dataset, **kwargs)


def test_empty_or_wrong_dataset_raises_input_error():
    with pytest.raises(InputError, match="no triplets"):
        tune([])
    with pytest.raises(InputError, match="dataset"):
        tune("not a dataset")


def test_missing_optuna_names_the_extra(dataset, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes "import optuna" raise ImportError
    with pytest.raises(InputError, match=r"medfusion\[tune\]"):
        tune(dataset, n_trials=1, base_config=FAST)
