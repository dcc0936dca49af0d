"""Helpers of the benchmark scripts whose numbers the README quotes (the scripts themselves print figures, untested)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_quality  # noqa: E402


def test_copied_share_is_one_for_a_copy_and_lower_for_a_blend():
    rng = np.random.default_rng(0)
    a, b = rng.random((64, 64)), rng.random((64, 64))
    assert bench_quality.copied_share(a.copy(), [a, b]) == 1.0
    assert abs(bench_quality.copied_share(1.0 - b, [a, b]) - 1.0) < 1e-12  # a grey-level mapping of a source
    blend = bench_quality.copied_share((a + b) / 2, [a, b])
    assert 0.0 < blend < 0.6
    assert bench_quality.copied_share(np.zeros((8, 8)), [a[:8, :8], b[:8, :8]]) == 1.0  # flat: H(F) = 0
