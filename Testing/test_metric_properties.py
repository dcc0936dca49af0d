"""Property-based tests (Hypothesis): every metric is finite and inside its documented range for random
valid inputs, the source-based metrics do not depend on the order of the sources, and the compiled
(numba) and NumPy backends give the same values."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from MedFusionLib.metrics import METRICS, evaluate, metrics_backend
from MedFusionLib.metrics.qabf import QABF_CONSTANTS

# VIFB's top: equal strengths give G = g_F (large), so the strength sigmoid reaches gamma_g.
_QABF_MAX = QABF_CONSTANTS["gamma_g"] * QABF_CONSTANTS["gamma_a"] / (1 + math.exp(QABF_CONSTANTS["k_a"] * 0.2))

#: Documented ranges (see each function's docstring); K = number of sources.
RANGES = {
    "EN": lambda k: (0.0, 8.0),
    "MEAN": lambda k: (0.0, 255.0),
    "STD": lambda k: (0.0, 127.5),
    "SF": lambda k: (0.0, 255.0 * math.sqrt(2)),
    "GRAD": lambda k: (0.0, 4 * 255.0),  # the sum over M x N pixels over (M-1)(N-1): up to 4x on 2x2
    "EOG": lambda k: (0.0, 2 * 255.0**2),
    "MI": lambda k: (0.0, k * math.log(256)),
    "Q0": lambda k: (-1.0, 1.0),
    "QW": lambda k: (-1.0, 1.0),
    "QE": lambda k: (-1.0, 1.0),
    "QABF": lambda k: (0.0, _QABF_MAX),
    "QABF_LIU": lambda k: (0.0, 1.0),
    "SSIM_S": lambda k: (-float(k), float(k)),
    "VIF": lambda k: (0.0, math.inf),
    "FMI": lambda k: (-0.05, 1.05),  # fmi.m's joint-entropy approximation can step slightly outside [0, 1]
    "RMSE": lambda k: (0.0, 255.0),
    "PSNR": lambda k: (0.0, math.inf),
    "SSIM": lambda k: (-1.0, 1.0),
    "REL": lambda k: (0.0, math.inf),
    "CE": lambda k: (0.0, math.inf),
    "H": lambda k: (0.0, 8.0),
}
SOURCE_METRICS = [k for k, m in METRICS.items() if m.family == "sources"]


@st.composite
def image_groups(draw):
    """K sources, a fused image and a target of one random shape and dtype; smooth or noisy content."""
    height = draw(st.integers(1, 40))
    width = draw(st.integers(1, 40))
    count = draw(st.integers(2, 3))
    dtype = draw(st.sampled_from(["uint8", "uint16", "int16", "float32", "float64"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count + 2):
        kind = draw(st.sampled_from(["noise", "constant", "ramp", "extreme"]))
        if kind == "noise":
            image = rng.random((height, width))
        elif kind == "constant":
            image = np.full((height, width), rng.random())
        elif kind == "ramp":
            image = np.add.outer(np.arange(height), np.arange(width)) / max(height + width - 2, 1)
        else:
            image = rng.integers(0, 2, (height, width)).astype(float)  # only the extremes
        if dtype == "uint8":
            image = np.rint(image * 255).astype(np.uint8)
        elif dtype == "uint16":
            image = np.rint(image * 65535).astype(np.uint16)
        elif dtype == "int16":
            image = np.rint(image * 4000 - 1024).astype(np.int16)  # CT-like, negative values
        else:
            image = image.astype(dtype)
        images.append(image)
    return images[0], images[1:-1], images[-1]


@settings(max_examples=40, deadline=None)
@given(image_groups())
def test_every_metric_is_finite_and_in_range(group):
    fused, sources, target = group
    results = evaluate(fused, sources, target)
    for key, value in results.items():
        low, high = RANGES[key](len(sources))
        assert not math.isnan(value), key
        if key not in ("PSNR", "REL"):  # the only metrics defined as inf (F = T, or a zero target)
            assert math.isfinite(value), (key, value)
        assert low - 1e-9 <= value <= high + 1e-9, (key, value, (low, high))


@settings(max_examples=25, deadline=None)
@given(image_groups())
def test_source_metrics_do_not_depend_on_source_order(group):
    fused, sources, _ = group
    forward = evaluate(fused, sources, metrics=SOURCE_METRICS)
    backward = evaluate(fused, sources[::-1], metrics=SOURCE_METRICS)
    for key in SOURCE_METRICS:
        # metricXydeas.m guards the fused strength against 0 between its two sources, so the first
        # source divides 0 and the second 1e-5: Liu's form depends on the order by about 1e-7.
        tolerance = 1e-6 if key == "QABF_LIU" else 1e-9
        assert math.isclose(forward[key], backward[key], rel_tol=tolerance, abs_tol=tolerance), key


@settings(max_examples=25, deadline=None)
@given(image_groups())
def test_compiled_and_numpy_backends_agree(group):
    if metrics_backend() != "numba":
        return  # without numba there is only the NumPy backend
    fused, sources, target = group
    compiled = evaluate(fused, sources, target, backend="numba")
    reference = evaluate(fused, sources, target, backend="numpy")
    for key in reference:
        # An FMI window whose copula normaliser nearly vanishes amplifies rounding (kappa =
        # corr / spread): on such near-flat windows the two sums of ~40 terms, added in
        # different orders, can differ by ~1e-8.
        tolerance = 1e-6 if key == "FMI" else 1e-9
        assert math.isclose(compiled[key], reference[key], rel_tol=1e-9, abs_tol=tolerance), (
            key, compiled[key], reference[key])
