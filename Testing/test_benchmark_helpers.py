"""Helpers of the benchmark scripts whose numbers the README quotes (the scripts themselves print figures, untested)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_quality  # noqa: E402


def test_copied_share_is_one_for_a_copy_and_lower_for_a_blend():
    rng = np.random.default_rng(0)
    a, b = rng.random((256, 256)), rng.random((256, 256))  # 65,536 samples: a joint histogram worth reading
    assert bench_quality.copied_share(a.copy(), [a, b]) == 1.0
    assert abs(bench_quality.copied_share(1.0 - b, [a, b]) - 1.0) < 1e-12  # a grey-level mapping of a source
    # The average of two independent images: each explains a small part of it (0.15 here, far from 1).
    blend = bench_quality.copied_share((a + b) / 2, [a, b])
    assert 0.05 < blend < 0.3
    mostly_a = bench_quality.copied_share(0.9 * a + 0.1 * b, [a, b])
    assert blend < mostly_a < 1.0
    assert np.isnan(bench_quality.copied_share(np.zeros((8, 8)), [a[:8, :8], b[:8, :8]]))  # flat: H(F) = 0


def test_the_target_rule_scored_is_the_one_the_training_sets_hold():
    from MedFusionLib.data.targets import phantom_cases

    case = phantom_cases(1, (64, 64), [("CT", "MRI_T1")], seed=7)[0]
    scored = bench_quality.target_rule(case.inputs)
    assert scored.dtype == np.float32 and scored.shape == case.target.shape
    assert np.abs(scored - case.target).max() < 1e-6


def test_first_places_count_against_all_baselines_or_the_chosen_rivals():
    ranked = np.zeros((3, len(bench_quality.RANK_METRICS)))
    ranked[0] = 1.0   # the model
    ranked[1, 1] = 2.0  # baseline 1 leads the second metric
    ranked[2, 3] = 1.0  # baseline 2 ties the fourth: a tie counts as first
    everyone = bench_quality.firsts(ranked)
    assert bench_quality.RANK_METRICS[1] not in everyone and len(everyone) == len(bench_quality.RANK_METRICS) - 1
    without_first = bench_quality.firsts(ranked, np.array([False, True]))
    assert without_first == list(bench_quality.RANK_METRICS)
    assert bench_quality.firsts(ranked, np.array([False, False])) == list(bench_quality.RANK_METRICS)


def test_invented_edge_share_is_zero_for_copies_and_blends_and_counts_seams():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    a, b = (ndimage.gaussian_filter(rng.random((64, 64)), 2) for _ in range(2))
    share = bench_quality.invented_edge_share
    assert share(a.copy(), [a, b]) == 0.0
    assert share(0.3 * a + 0.7 * b, [a, b]) < 1e-12  # a fixed blend: its gradient is a blend of theirs
    left = np.arange(64)[None, :] < 32
    seams = [share(np.where(left, a, b + offset), [a, b + offset]) for offset in (0.0, 0.2, 0.5)]
    assert seams[0] < seams[1] < seams[2]  # a cut between sources: the larger the step, the larger the seam
    assert seams[2] > 0.05
    assert np.isnan(share(np.ones((8, 8)), [np.zeros((8, 8)), np.zeros((8, 8))]))  # no edges to compare with


def test_teacher_search_family_holds_the_shipped_rule_and_pixel_selection():
    import tune_teacher
    from MedFusionLib.data.targets import phantom_cases

    for modalities in (("CT", "MRI_T1"), ("MRI_T2", "SPECT")):
        case = phantom_cases(1, (64, 64), [modalities], seed=11)[0]
        current = tune_teacher.teacher_rule(case.inputs, tune_teacher.CURRENT)
        assert np.array_equal(current, bench_quality.target_rule(case.inputs))  # bit for bit
        selected = tune_teacher.teacher_rule(case.inputs, {**tune_teacher.CURRENT, "pixel_selection": 1.0})
        stack = np.stack(case.inputs).astype(np.float32)
        assert np.all((selected == stack[0]) | (selected == stack[1]))  # every pixel one source's value
        assert not np.array_equal(selected, current)
        detail = tune_teacher.teacher_rule(case.inputs, {**tune_teacher.CURRENT, "max_abs_detail_0": 1.0})
        assert not np.array_equal(detail, current)


def test_teacher_search_runs_and_starts_from_the_shipped_rule():
    import tune_teacher

    study = tune_teacher.main(["--trials", "3", "--cases", "1", "--pairs", "pet-spect"])
    first = study.trials[0]
    assert first.params == tune_teacher.CURRENT  # the enqueued baseline rule
    assert len(first.user_attrs["firsts"]) == 4 and all(0 <= c <= 6 for c in first.user_attrs["firsts"])
    assert len(study.trials) == 3


def test_teacher_search_can_score_the_mni152_slices():
    import pytest

    pytest.importorskip("nilearn")
    import tune_teacher

    (pair,) = tune_teacher.pair_sets([("CT", "MRI_T1")], cases=1, seed=500, mni152=True)
    assert len(pair.groups) == 6 and pair.baselines.shape[0] == len(tune_teacher.BASELINES)
    row, margins = pair.score(lambda inputs: tune_teacher.teacher_rule(inputs, tune_teacher.CURRENT))
    assert len(margins) == len(tune_teacher.RANK_METRICS) and np.isfinite(row).all()
