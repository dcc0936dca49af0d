"""Single-image statistics of a fused image: MEAN, STD, SF, GRAD (average gradient), EOG.

All are computed on the 0-255 scoring scale (see :mod:`MedFusionLib.metrics._common`)
and are means rather than sums, so they do not depend on the image size.
"""

from __future__ import annotations

import numpy as np

from ._common import DataRange, forward_differences, prepare_single
from ._group import ScoredGroup


def mean_intensity(image: object, *, data_range: DataRange = None) -> float:
    """MEAN: the mean grey level, ``(1/MN) sum F(i, j)``.

    Direction: neither (describes brightness). Range [0, 255].

    :param image: 2D grey or RGB image.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _mean_intensity(prepare_single(image, data_range))


def _mean_intensity(f: np.ndarray) -> float:
    return float(f.mean())


def standard_deviation(image: object, *, data_range: DataRange = None) -> float:
    """STD: population standard deviation ``sqrt((1/MN) sum (F - mean F)^2)`` (ddof = 0).

    Higher means more contrast. Range [0, 127.5].

    :param image: 2D grey or RGB image.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _standard_deviation(prepare_single(image, data_range))


def _standard_deviation(f: np.ndarray) -> float:
    return float(f.std())


def spatial_frequency(image: object, *, data_range: DataRange = None) -> float:
    """SF: spatial frequency ``sqrt(RF^2 + CF^2)``, as VIFB computes it.

    ``RF^2`` is the sum of ``(F(i, j) - F(i, j-1))^2`` over all horizontal neighbour
    pairs and ``CF^2`` the same over vertical pairs, each divided by the number of
    pixels M x N (not by the number of pairs). Reproduces VIFB's
    ``metrics/metricsSpatial_frequency.m`` (xingchenzhang/VIFB, commit 5d29ee7; metric
    of Eskicioglu & Fisher, IEEE Trans. Commun. 43(12), 1995); checked against it under
    Octave (``Testing/reference_metrics``). A uniform ramp of slope s has
    ``SF = s * sqrt((N-1)/N + (M-1)/M)`` when it rises along both axes. An image one
    pixel wide along an axis contributes 0 for that axis. Higher means more detail.
    Range [0, 255 * sqrt(2)].

    :param image: 2D grey or RGB image.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _spatial_frequency(prepare_single(image, data_range))


def _spatial_frequency(f: np.ndarray) -> float:
    rf2 = float(np.sum(np.diff(f, axis=1) ** 2)) / f.size
    cf2 = float(np.sum(np.diff(f, axis=0) ** 2)) / f.size
    return float(np.sqrt(rf2 + cf2))


def average_gradient(image: object, *, data_range: DataRange = None) -> float:
    """GRAD (AG): average gradient, as VIFB computes it.

    ``AG = sum sqrt((dx^2 + dy^2) / 2) / ((M - 1)(N - 1))``, the sum over all M x N
    pixels, with MATLAB's ``gradient``: central differences inside the image and
    one-sided differences on its first and last rows and columns (``np.gradient``,
    the same arithmetic). Reproduces VIFB's ``metrics/metricsAvg_gradient.m``
    (xingchenzhang/VIFB, commit 5d29ee7; metric of Cui et al., Opt. Commun. 341,
    2015); checked against it under Octave (``Testing/reference_metrics``). Images
    one pixel wide give 0. Higher means sharper. Range [0, ~255].

    :param image: 2D grey or RGB image (RGB: scored on its luminance).
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _average_gradient(prepare_single(image, data_range))


def _average_gradient(f: np.ndarray) -> float:
    rows, cols = f.shape
    if rows < 2 or cols < 2:
        return 0.0
    dy, dx = np.gradient(f)
    return float(np.sum(np.sqrt((dx * dx + dy * dy) / 2.0)) / ((rows - 1) * (cols - 1)))


def _squared_gradient(f: np.ndarray) -> np.ndarray:
    """``dx^2 + dy^2`` of the forward differences on the ``(M-1) x (N-1)`` grid (GRAD and EOG)."""
    dx, dy = forward_differences(f)
    return dx**2 + dy**2


def _group_statistics(group: ScoredGroup) -> tuple[float, ...] | None:
    """Compiled backend: every statistic of the fused image in one kernel call (None on NumPy)."""
    if group.kernels is None:
        return None
    return group.memo(("statistics",), lambda: group.kernels.image_statistics(np.ascontiguousarray(group.fused)))


def _group_mean_intensity(group: ScoredGroup) -> float:
    stats = _group_statistics(group)
    return float(stats[0]) if stats is not None else _mean_intensity(group.fused)


def _group_standard_deviation(group: ScoredGroup) -> float:
    stats = _group_statistics(group)
    return float(stats[1]) if stats is not None else _standard_deviation(group.fused)


def _group_spatial_frequency(group: ScoredGroup) -> float:
    stats = _group_statistics(group)
    if stats is None:
        return _spatial_frequency(group.fused)
    rows, cols = group.fused.shape
    # The kernel's RF^2 and CF^2 are means over the pairs; VIFB divides the sums by M x N.
    return float(np.sqrt(stats[2] * (cols - 1) / cols + stats[3] * (rows - 1) / rows))


def _group_squared_gradient(group: ScoredGroup) -> np.ndarray:
    return group.memo(("squared_gradient",), lambda: _squared_gradient(group.fused))


def _group_average_gradient(group: ScoredGroup) -> float:
    # VIFB's central differences: not the compiled statistics kernel's forward differences (EOG's).
    return group.memo(("average_gradient",), lambda: _average_gradient(group.fused))


def _group_energy_of_gradient(group: ScoredGroup) -> float:
    stats = _group_statistics(group)
    if stats is not None:
        return float(stats[5])
    squared = _group_squared_gradient(group)
    return float(np.mean(squared)) if squared.size else 0.0


def energy_of_gradient(image: object, *, data_range: DataRange = None) -> float:
    """EOG: energy of gradient, the mean of ``dx^2 + dy^2`` over the ``(M-1) x (N-1)`` grid.

    The classical focus measure sums ``dx^2 + dy^2`` (Subbarao et al., Opt. Eng.
    32(11), 1993; Huang & Jing, Pattern Recognit. Lett. 28(4), 2007); the mean is
    used here so the value does not grow with the image size. Images one pixel wide
    give 0. Higher means more edge energy. Range [0, 2 * 255^2].

    :param image: 2D grey or RGB image.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _energy_of_gradient(prepare_single(image, data_range))


def _energy_of_gradient(f: np.ndarray) -> float:
    squared = _squared_gradient(f)
    return float(np.mean(squared)) if squared.size else 0.0
