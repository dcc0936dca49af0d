"""Q^AB/F, Xydeas & Petrovic's edge-transfer metric, as the two public toolboxes compute it.

The default (:func:`gradient_based_quality_index`) reproduces VIFB's ``metricsQabf.m``, the
code behind VIFB, MEFB and most multimodal-fusion tables; Zheng Liu's ``metricXydeas.m``
(:func:`gradient_based_quality_index_liu`) differs in its sigmoid constants, its orientation
term (wrapped modulo pi) and its per-pixel normalised mean, and is kept as a named variant
(``"QABF_LIU"`` in :func:`~MedFusionLib.metrics.evaluate`). Both are checked against the
original code run under Octave (``Testing/reference_metrics``).

Both generalise to K >= 2 sources the way the two-source formulas read: sums (or the
per-pixel weighted mean) run over every source instead of over A and B.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._common import DataRange
from ._group import Role, ScoredGroup, in_row_bands

#: VIFB's sigmoid constants (``metricsQabf.m``: Tg, kg, Dg, Ta, ka, Da; Petrovic's values).
QABF_CONSTANTS = {"gamma_g": 0.9994, "k_g": -15.0, "d_g": 0.5, "gamma_a": 0.9879, "k_a": -22.0, "d_a": 0.8}
#: Liu's constants (``metricXydeas.m``: gama1, k1, delta1, gama2, k2, delta2).
QABF_LIU_CONSTANTS = {"gamma_g": 1.0, "k_g": -10.0, "d_g": 0.5, "gamma_a": 1.0, "k_a": -20.0, "d_a": 0.75}
#: ``metricXydeas.m`` adds this to zero gradients and strengths before dividing by them.
_LIU_EPSILON = 0.00001


def _sobel_sums(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded Sobel responses: x = right minus left column, y = lower minus upper row (weights 1, 2, 1).

    Liu's ``filter2(flt1/flt2, ., 'same')``; VIFB's ``conv2(., h3)`` is ``-x`` and its
    ``conv2(., h1)`` is ``y``. The additions are made in ``_kernels.qabf_sums``' order, so both
    backends find the same equal strengths (VIFB's rule for them is a jump, not a limit).
    """
    padded = np.pad(image, 1)
    rows, cols = image.shape
    x = np.zeros(image.shape)
    y = np.zeros(image.shape)
    for t, weight in ((-1, 1.0), (0, 2.0), (1, 1.0)):
        x += weight * (padded[1 + t : 1 + t + rows, 2 : 2 + cols] - padded[1 + t : 1 + t + rows, 0:cols])
        y += weight * (padded[2 : 2 + rows, 1 + t : 1 + t + cols] - padded[0:rows, 1 + t : 1 + t + cols])
    return x, y


def _sigmoid(values: np.ndarray, gamma: float, k: float, d: float) -> np.ndarray:
    return gamma / (1.0 + np.exp(k * (values - d)))


# --------------------------------------------------------------------------- VIFB (default)


def _vifb_edges(group: ScoredGroup, role: Role) -> tuple[np.ndarray, np.ndarray]:
    """VIFB's strength ``g`` and orientation ``a`` of one image.

    ``metricsQabf.m`` scales every image by 255 (``255 * im2double`` of an image already
    in 0-255), which only matters for its equal-strength rule below. The orientation is
    ``atan(Sy / Sx)`` in (-pi/2, pi/2), and pi/2 where ``Sx == 0``.
    """
    def compute():
        x, y = _sobel_sums(group.image(role))
        x, y = -255.0 * x, 255.0 * y  # conv2(255 p, h3): left minus right; conv2(255 p, h1)
        strength = np.sqrt(x * x + y * y)
        vertical = x == 0
        with np.errstate(divide="ignore", invalid="ignore"):
            orientation = np.where(vertical, np.pi / 2, np.arctan(y / np.where(vertical, 1.0, x)))
        return strength, orientation

    return group.memo(("qabf_vifb_edges", role), compute)


def _gradient_based_quality(group: ScoredGroup) -> float:
    c = QABF_CONSTANTS
    if group.kernels is not None:  # compiled: the same per pixel, no image-sized temporaries
        images = group.with_fused_last()
        constants = tuple(QABF_CONSTANTS.values())
        bands = in_row_bands(lambda first, end: group.kernels.qabf_sums(images, constants, first, end),
                             images[0].shape[0], group.kernels)
        numerator, denominator = sum(b[0] for b in bands), sum(b[1] for b in bands)
        return numerator / denominator if denominator > 0 else 0.0
    g_f, a_f = _vifb_edges(group, "F")
    numerator = denominator = 0.0
    for k in range(len(group.sources)):
        g_s, a_s = _vifb_edges(group, k)
        with np.errstate(divide="ignore", invalid="ignore"):
            # G = g_F / g_S where the source is stronger, g_A / g_F where weaker, and (VIFB's
            # rule) g_F itself where they are equal -- 0 for two flat pixels, which weigh 0.
            strength = np.where(g_s > g_f, g_f / g_s, np.where(g_s == g_f, g_f, g_s / g_f))
        orientation = 1.0 - np.abs(a_s - a_f) / (np.pi / 2)  # not wrapped: VIFB's form
        quality = (_sigmoid(strength, c["gamma_g"], c["k_g"], c["d_g"])
                   * _sigmoid(orientation, c["gamma_a"], c["k_a"], c["d_a"]))
        numerator += float(np.sum(quality * g_s))
        denominator += float(np.sum(g_s))
    return numerator / denominator if denominator > 0 else 0.0


def gradient_based_quality_index(fused: object, sources: Sequence[object], *, data_range: DataRange = None) -> float:
    """Q^AB/F: Xydeas & Petrovic's edge-transfer metric, as VIFB's ``metricsQabf.m`` computes it.

    Per pixel and source S: Sobel responses with zero padding (``conv2(., 'same')``),
    strength ``g = sqrt(Sx^2 + Sy^2)``, orientation ``a = atan(Sy / Sx)`` (pi/2 where
    ``Sx = 0``);
    ``G = g_F / g_S`` if ``g_S > g_F``, ``g_S / g_F`` if ``g_S < g_F``, and ``g_F`` (times
    255, VIFB's scale) if they are equal;
    ``A = 1 - |a_S - a_F| / (pi/2)`` (not wrapped modulo pi);
    ``Q^SF = 0.9994 / (1 + exp(-15 (G - 0.5))) * 0.9879 / (1 + exp(-22 (A - 0.8)))``;
    ``Q^AB/F = sum_S sum Q^SF g_S / sum_S sum g_S``.

    Reproduces xingchenzhang/VIFB ``metrics/metricsQabf.m`` (commit 5d29ee7) with its
    quirks; Xydeas & Petrovic, Electron. Lett. 36(4), 2000. Sources without any edge
    give 0 (VIFB: 0/0). F equal to every source gives ``0.9994 * 0.9879 / (1 + e^-4.4)``
    = 0.97533 (G is then VIFB's large ``g_F``), the top the constants allow. Higher is
    better. Range [0, 0.97533].
    Liu's form: :func:`gradient_based_quality_index_liu`.

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _gradient_based_quality(ScoredGroup.from_inputs(fused, sources, data_range=data_range))


# --------------------------------------------------------------------------- Liu (variant)


def _gradient_based_quality_liu(group: ScoredGroup) -> float:
    c = QABF_LIU_CONSTANTS
    eps = _LIU_EPSILON

    def edges(role: Role) -> tuple[np.ndarray, np.ndarray]:
        x, y = _sobel_sums(group.image(role))
        strength = np.sqrt(x * x + y * y)
        x = x + (x == 0) * eps  # metricXydeas.m's guard, kept: it sets the angle of vertical edges
        return strength, np.arctan(y / x)

    g_f, a_f = edges("F")
    weighted = np.zeros_like(g_f)
    weights = np.zeros_like(g_f)
    for k in range(len(group.sources)):
        g_s, a_s = edges(k)
        # The statement order of metricXydeas.m: the comparison before either guard, g_F's
        # guard between the two ratios (and kept for the next source).
        stronger = g_s > g_f
        g_s = g_s + (g_s == 0) * eps
        ratio_fs = g_f / g_s
        g_f = g_f + (g_f == 0) * eps
        ratio_sf = g_s / g_f
        strength = np.where(stronger, ratio_fs, ratio_sf)
        orientation = np.abs(np.abs(a_s - a_f) - np.pi / 2) * 2 / np.pi  # wrapped modulo pi
        quality = (_sigmoid(strength, c["gamma_g"], c["k_g"], c["d_g"])
                   * _sigmoid(orientation, c["gamma_a"], c["k_a"], c["d_a"]))
        weighted += quality * g_s
        weights += g_s
    return float(np.mean(weighted / weights))


def gradient_based_quality_index_liu(
    fused: object, sources: Sequence[object], *, data_range: DataRange = None
) -> float:
    """Q^AB/F as Zheng Liu's ``metricXydeas.m`` computes it (the variant ``"QABF_LIU"``).

    Sobel responses with zero padding (``filter2(., 'same')``), strength
    ``g = sqrt(x^2 + y^2)``, orientation ``atan(y / x)`` with 1e-5 added to zero x;
    ``G = g_F / g_S`` where ``g_S > g_F``, else ``g_S / g_F`` (1e-5 added to zero
    strengths first); ``A = | |a_S - a_F| - pi/2 | * 2/pi`` (orientation agreement
    modulo pi); ``Q^SF = 1 / (1 + exp(-10 (G - 0.5))) * 1 / (1 + exp(-20 (A - 0.75)))``;
    the value is the mean over pixels of ``sum_S Q^SF g_S / sum_S g_S``.

    Reproduces zhengliu6699/imageFusionMetrics ``metricXydeas.m`` (commit d6f7f1a;
    Liu et al., IEEE TPAMI 34(1), 2012). Higher is better. Range [0, 1].

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _gradient_based_quality_liu(ScoredGroup.from_inputs(fused, sources, data_range=data_range))
