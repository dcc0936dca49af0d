"""QW and QE, Piella & Heijmans' fusion quality indices, as Zheng Liu's ``metricPeilla.m`` computes them.

Piella & Heijmans (Proc. ICIP 2003, vol. 3, pp. 173-176) weight a local structural
similarity by each source's local saliency. Liu's toolbox (zhengliu6699/imageFusionMetrics,
commit d6f7f1a: ``metricPeilla.m`` with its own ``ssim_index.m``) takes Wang et al.'s SSIM
map for the local index and the SSIM window's variance for saliency; both functions here
reproduce that code, checked against it under Octave (``Testing/reference_metrics``).

The local statistics are SSIM's: an 11x11 Gaussian window (sigma 1.5, MATLAB's
``fspecial('gaussian', 11, 1.5)``), ``filter2(..., 'valid')`` (only windows inside the
image), K = (0.01, 0.03) and L = 255 -- also for the edge images of QE, as in the code.
Images smaller than 11 pixels along a side are scored as one window (their global
statistics), where ``ssim_index.m`` would give -Inf.

Windows where no source varies: the code gives every ``s_k`` 0.5 where their sum is
exactly 0, so the sources share equally and the window weighs 0.5. In its floating-point
arithmetic the sum is exactly 0 only where every source is 0 throughout the window (black
background); in any other constant window the variances come out as ~1e-13 of round-off,
so the window weighs about nothing (and lambda is noise times that nothing). Both are
reproduced: flat black windows weigh 0.5, other flat windows 0 (variances below 1e-6 count
as flat); if every window is flat and not black they all weigh the same. Without this
rule a fixture with flat grey regions differs from Octave by 9e-7; with it, by 1e-14.

For K >= 2 sources the two-source formulas generalise as they read: ``lambda_k = s_k /
sum_j s_j`` and ``c(w) = max_k s_k``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from ._common import SCORE_MAX, VARIANCE_FLOOR, DataRange
from ._group import Role, ScoredGroup, gaussian_11
from .structural import FLAT_SALIENCY, gaussian_structure, gaussian_structure_sums

_WINDOW = 11
_PAD = _WINDOW // 2
_C1 = (0.01 * SCORE_MAX) ** 2
_C2 = (0.03 * SCORE_MAX) ** 2


def _prewitt_magnitude(image: np.ndarray) -> np.ndarray:
    """``sqrt(x^2 + y^2)`` of Prewitt responses with zero padding (``filter2(flt1/flt2, ., 'same')``)."""
    x = ndimage.prewitt(image, axis=1, mode="constant")
    y = ndimage.prewitt(image, axis=0, mode="constant")
    return np.sqrt(x * x + y * y)


def _local(image: np.ndarray) -> np.ndarray:
    """The 11x11 Gaussian local mean over every window inside the image (``filter2(w, ., 'valid')``)."""
    if min(image.shape) < _WINDOW:
        return np.full((1, 1), image.mean())
    return gaussian_11(image)[_PAD:-_PAD, _PAD:-_PAD]  # the border mode never reaches these pixels


def _piella_images(group: ScoredGroup, edges: bool) -> list[np.ndarray]:
    """``(S_0, ..., S_{K-1}, F)``: the images, or (QE) their Prewitt edge images."""
    roles: list[Role] = [*range(len(group.sources)), "F"]
    if not edges:
        return list(group.with_fused_last())
    prewitt = _prewitt_magnitude if group.kernels is None else group.kernels.prewitt_magnitude
    return [group.memo(("prewitt", r), lambda r=r: prewitt(np.ascontiguousarray(group.image(r)))) for r in roles]


def _weighted_quality_of(group: ScoredGroup, edges: bool) -> float:
    """QW of the images (or of their edge images): ``metricPeilla.m`` case 2."""
    def compiled():
        rows, cols = group.fused.shape[0] - 2 * _PAD, group.fused.shape[1] - 2 * _PAD
        if edges:
            images = tuple(_piella_images(group, edges))
            numerator, denominator, unweighted = gaussian_structure_sums(group, images, 0, len(images) - 1)[1]
        else:  # the images' Gaussian moments: made once with SSIM's when the group wants both
            numerator, denominator, unweighted = gaussian_structure(group, ssim=False, qw=True)[1]
        if denominator == 0:  # every window flat and not black: they count the same
            return float(unweighted / (rows * cols))
        return float(numerator / denominator)

    def compute():
        if group.kernels is not None and min(group.fused.shape) >= _WINDOW:
            return compiled()
        *sources, fused = _piella_images(group, edges)
        mean_f = _local(fused)
        var_f = _local(fused * fused) - mean_f * mean_f
        means = [_local(s) for s in sources]
        variances = np.stack([_local(s * s) - m * m for s, m in zip(sources, means)])
        similarity = []
        for source, mean, variance in zip(sources, means, variances):
            covariance = _local(fused * source) - mean_f * mean
            similarity.append(((2 * mean_f * mean + _C1) * (2 * covariance + _C2))
                              / ((mean_f * mean_f + mean * mean + _C1) * (var_f + variance + _C2)))
        # Windows where no source varies (see the module docstring): weight 0.5 where every source is
        # 0 throughout, else 0 -- what the reference's arithmetic gives -- and equal lambdas.
        variances[np.abs(variances) < VARIANCE_FLOOR] = 0.0
        flat = np.all(variances == 0, axis=0)
        black = flat & np.all(np.stack(means) == 0, axis=0)
        variances[:, flat] = FLAT_SALIENCY
        local_weight = variances / variances.sum(axis=0)
        window_weight = variances.max(axis=0)
        window_weight[flat & ~black] = 0.0
        if window_weight.sum() == 0:  # every window flat and not black: they count the same
            window_weight = np.ones_like(window_weight)
        return float(np.sum(window_weight / window_weight.sum() * np.sum(local_weight * np.stack(similarity), axis=0)))

    return group.memo(("piella_qw", edges), compute)


def _weighted_quality(group: ScoredGroup) -> float:
    return _weighted_quality_of(group, edges=False)


def weighted_quality_index(fused: object, sources: Sequence[object], *, data_range: DataRange = None) -> float:
    """QW: Piella & Heijmans' weighted fusion quality index, as ``metricPeilla.m`` (case 2) computes it.

    ``QW = sum_w c(w) sum_k lambda_k(w) SSIM(F, S_k | w)`` over every 11x11 Gaussian
    window inside the image, with ``s_k(w)`` the window variance of source k,
    ``lambda_k = s_k / sum_j s_j``, ``c(w) = max_k s_k(w) / sum_w' max_k s_k(w')``, and
    SSIM's local map (Wang et al. 2004, K = (0.01, 0.03), L = 255). Where no source varies
    each ``s_k`` is 0.5 (the code's rule). Reproduces zhengliu6699/imageFusionMetrics
    ``metricPeilla.m`` (commit d6f7f1a) with its ``ssim_index.m``. Higher is better.
    Range [-1, 1], 1 when F equals every source.

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _weighted_quality(ScoredGroup.from_inputs(fused, sources, data_range=data_range))


def _edge_dependent_quality(group: ScoredGroup) -> float:
    return _weighted_quality_of(group, edges=False) * _weighted_quality_of(group, edges=True)


def edge_dependent_quality_index(fused: object, sources: Sequence[object], *, data_range: DataRange = None) -> float:
    """QE: Piella & Heijmans' edge-dependent fusion quality index, as ``metricPeilla.m`` (case 3) computes it.

    ``QE = QW(S, F) * QW(S', F')^alpha`` with alpha = 1, where ``S'``, ``F'`` are the
    Prewitt gradient magnitudes (3x3, zero padding) of the images and QW is
    :func:`weighted_quality_index` (SSIM constants unchanged for the edge images).
    As published, case 3 of ``metricPeilla.m`` multiplies by a ``Q`` it never assigns
    (MATLAB stops there); ``Q`` is taken as the case-2 value QW(S, F), Piella & Heijmans'
    definition, and the fixtures were made with that one line added. Higher is better.
    Range [-1, 1].

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _edge_dependent_quality(ScoredGroup.from_inputs(fused, sources, data_range=data_range))
