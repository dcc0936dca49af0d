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
    assert share(0.3 * a + 0.7 * b, [a, b]) < 1e-12  # a fixed convex blend: its gradient is a blend of theirs
    # Twice the contrast of the only source: every edge is twice as strong, so the excess equals the
    # sources' whole edge strength (a share of exactly 1; 0.5 if it were divided by F's own strength).
    assert abs(share(2 * a, [a, a]) - 1.0) < 1e-12
    left = np.arange(64)[None, :] < 32
    seams = [share(np.where(left, a, b + offset), [a, b + offset]) for offset in (0.0, 0.2, 0.5)]
    assert seams[0] < seams[1] < seams[2]  # a cut between sources: the larger the step, the larger the seam
    assert seams[2] > 0.05
    assert np.isnan(share(np.ones((8, 8)), [np.zeros((8, 8)), np.zeros((8, 8))]))  # no edges to compare with


def _teacher_case(modalities=("CT", "MRI_T1"), seed=11):
    from MedFusionLib.data.targets import phantom_cases

    return phantom_cases(1, (64, 64), [modalities], seed=seed)[0]


def test_teacher_search_family_holds_the_shipped_rule_and_its_knobs_do_what_they_say():
    import tune_teacher
    from scipy import ndimage

    from MedFusionLib.fusion import fuse

    rule, current = tune_teacher.teacher_rule, tune_teacher.CURRENT
    for modalities in (("CT", "MRI_T1"), ("MRI_T2", "SPECT")):
        case = _teacher_case(modalities)
        shipped = rule(case.inputs, current)
        assert np.array_equal(shipped, bench_quality.target_rule(case.inputs))  # bit for bit
        stack = np.stack(case.inputs).astype(np.float64)
        # Pixel selection: every pixel is the most salient input's (Gaussian-smoothed Sobel magnitude).
        saliency = np.stack([ndimage.gaussian_filter(np.hypot(ndimage.sobel(x, 0), ndimage.sobel(x, 1)), 4.0)
                             for x in stack])
        selected = rule(case.inputs, {**current, "pixel_selection": 1.0})
        chosen = np.take_along_axis(stack, saliency.argmax(axis=0)[None], axis=0)[0]
        assert np.array_equal(selected, np.clip(chosen, 0, 1).astype(np.float32))
        # Max-abs details at every level, an averaged base and no clamp: the Laplacian-pyramid baseline.
        laplacian = {**current, "average_base": 1.0, "clamp": False,
                     **{f"max_abs_detail_{i}": 1.0 for i in range(tune_teacher.LEVELS)}}
        expected = np.clip(fuse(case.inputs, method="laplacian").image, 0, 1)
        assert np.abs(rule(case.inputs, laplacian) - expected).max() < 1e-6
        # Soft masks: a high power approaches the hard masks; power 1 is far from them.
        near = np.abs(rule(case.inputs, {**current, "weight_power": 64}) - shipped).mean()
        far = np.abs(rule(case.inputs, {**current, "weight_power": 1}) - shipped).mean()
        assert near < 0.2 * far
        sharpened = rule(case.inputs, {**current, "weight_power": 1, "mask_sharpness": 1.0})
        assert np.abs(sharpened - shipped).mean() < far  # sharper masks: closer to the hard ones
    # Every rule of the family is a fusion: two identical inputs give that input back, whatever the knobs.
    x = _teacher_case().inputs[1]
    for params in ({**current, "weight_power": 1}, {**current, "weight_power": 2, "mask_sharpness": 0.5,
                                                      "average_base": 0.5, "max_abs_detail_0": 0.5, "clamp": False}):
        assert np.abs(rule([x, x], params) - np.clip(x, 0, 1)).max() < 1e-6
    # A flat background (no saliency anywhere): soft masks share it equally instead of dividing 0 by 0.
    flat = np.zeros((32, 32))
    assert np.array_equal(rule([flat, flat], {**current, "weight_power": 2}), flat.astype(np.float32))


def test_teacher_search_pair_scores_and_first_places():
    import tune_teacher

    rows = len(tune_teacher.RANK_METRICS) + len(tune_teacher.EXTRA_COLUMNS)
    baselines = np.ones((2, rows))
    baselines[1, 1] = 2.0  # the second baseline leads the second metric
    pair = tune_teacher.PairSet(("A", "B"), [], baselines)
    row = np.ones(rows)
    row[0] = 1.5
    assert pair.first_places(row) == [k for i, k in enumerate(tune_teacher.RANK_METRICS) if i != 1]
    row[1] = 2.0  # a tie counts as first
    assert pair.first_places(row) == list(tune_teacher.RANK_METRICS)


def test_teacher_search_runs_and_starts_from_the_shipped_rule():
    import tune_teacher

    study = tune_teacher.main(["--trials", "3", "--cases", "1", "--pairs", "pet-spect"])
    first = study.trials[0]
    assert first.params == tune_teacher.CURRENT  # the enqueued baseline rule
    assert first.user_attrs["feasible"] and len(first.user_attrs["firsts"]) == 4
    assert len(study.trials) == 3
    # Its score: the capped fourth-best margins summed over the pairs (the current rule pays no penalty).
    sets = tune_teacher.pair_sets([p for p in tune_teacher.MODALITY_PAIRS if p[1] in ("PET", "SPECT")], 1, 500)
    expected = 0.0
    for pair, firsts in zip(sets, first.user_attrs["firsts"]):
        row, margins = pair.score(lambda inputs: tune_teacher.teacher_rule(inputs, tune_teacher.CURRENT))
        expected += min(np.sort(margins)[::-1][3], 0.02)
        assert firsts == int((margins >= 0).sum()) == len(pair.first_places(row))
    assert abs(first.value - expected) < 1e-12


def test_teacher_search_draws_a_pareto_front():
    import tune_teacher

    study = tune_teacher.main(["--trials", "3", "--cases", "1", "--pairs", "pet-spect", "--frontier", "SSIM_S,SF"])
    assert all(len(t.values) == 2 for t in study.trials) and study.best_trials


def test_teacher_search_can_score_the_mni152_slices():
    import pytest

    pytest.importorskip("nilearn")
    import tune_teacher

    modalities = ("MRI_T1", "PET")
    (pair,) = tune_teacher.pair_sets([modalities], cases=1, seed=500, mni152=True)
    expected = bench_quality.mni152_groups(modalities, tune_teacher.MODALITY_PAIRS.index(modalities))
    assert len(pair.groups) == 6 and all(np.array_equal(a, b) for g, h in zip(pair.groups, expected)
                                         for a, b in zip(g, h))
    assert pair.baselines.shape[0] == len(tune_teacher.BASELINES)
    row, margins = pair.score(lambda inputs: tune_teacher.teacher_rule(inputs, tune_teacher.CURRENT))
    assert len(margins) == len(tune_teacher.RANK_METRICS) and np.isfinite(row).all()
