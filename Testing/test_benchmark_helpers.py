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
