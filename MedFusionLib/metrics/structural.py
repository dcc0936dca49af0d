"""Structure- and edge-based fusion metrics against the sources.

Q0 (Wang & Bovik's universal image quality index), QW and QE (Piella & Heijmans),
Q^AB/F (Xydeas & Petrovic), SSIM to the sources and VIF (Sheikh & Bovik).
All on the 0-255 scoring scale; every one accepts K >= 2 sources.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity as _skimage_ssim

from ._common import (
    SCORE_MAX,
    VARIANCE_FLOOR,
    prepare_fused_and_sources,
    sobel_gradients,
    window_shape,
    window_statistics,
    window_variance,
)

#: Side of the sliding window of Q0, QW and QE (Wang & Bovik 2002 use 8x8).
QUALITY_WINDOW = 8
#: Petrovic's constants of the Q^AB/F sigmoids (Xydeas & Petrovic 2000; Petrovic 2007).
QABF_CONSTANTS = {"gamma_g": 0.9994, "k_g": -15.0, "d_g": 0.5, "gamma_a": 0.9879, "k_a": -22.0, "d_a": 0.8}
#: Side of SSIM's Gaussian window (sigma 1.5 truncated at 3.5 sigma, as in Wang et al. 2004).
SSIM_WINDOW = 11


# --------------------------------------------------------------------------- SSIM


def ssim_scaled(reference: np.ndarray, image: np.ndarray) -> float:
    """SSIM of two images already on the 0-255 scale (see :func:`ssim_to_sources`)."""
    if min(reference.shape) >= SSIM_WINDOW:
        return float(
            _skimage_ssim(
                reference,
                image,
                data_range=SCORE_MAX,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                K1=0.01,
                K2=0.03,
            )
        )
    # Smaller than one window: the SSIM formula on global statistics (one window).
    c1, c2 = (0.01 * SCORE_MAX) ** 2, (0.03 * SCORE_MAX) ** 2
    mx, my = reference.mean(), image.mean()
    vx, vy = reference.var(), image.var()
    cov = ((reference - mx) * (image - my)).mean()
    return float((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))


def ssim_to_sources(
    fused: object, sources: Sequence[object], *, data_range: tuple[float, float] | None = None
) -> float:
    """SSIM to the sources: ``sum_k SSIM(S_k, F)``.

    SSIM (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 13(4), 2004) through
    ``skimage.metrics.structural_similarity`` with the paper's settings: 11x11
    Gaussian window, sigma = 1.5, K = (0.01, 0.03), L = 255, population
    statistics; images smaller than 11 pixels along a side use one global window.
    Higher is better. Range [-K, K] for K sources; F = A = B gives 2.

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    f, srcs = prepare_fused_and_sources(fused, sources, data_range)
    return float(sum(ssim_scaled(s, f) for s in srcs))


# --------------------------------------------------------------------------- Q0, QW, QE


def _quality_index_map(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Wang & Bovik's Q for every valid window, with the zero-denominator rules of their ``qindex.m``.

    ``Q = 4 s_xy m_x m_y / ((s_x^2 + s_y^2)(m_x^2 + m_y^2))``; where both windows are
    constant Q = ``2 m_x m_y / (m_x^2 + m_y^2)`` (1 if both are also zero).
    """
    mean_x, mean_y, var_x, var_y, cov = window_statistics(x, y, shape)
    variance_sum = var_x + var_y
    mean_sq_sum = mean_x**2 + mean_y**2
    quality = np.ones_like(mean_x)
    flat = (variance_sum == 0) & (mean_sq_sum > 0)
    quality[flat] = 2.0 * mean_x[flat] * mean_y[flat] / mean_sq_sum[flat]
    general = (variance_sum > 0) & (mean_sq_sum > 0)
    quality[general] = (4.0 * cov * mean_x * mean_y)[general] / (variance_sum * mean_sq_sum)[general]
    # Bright-on-black windows with zero mean but variance: Q's luminance term is 0/0;
    # the structure/contrast part 2 s_xy / (s_x^2 + s_y^2) is what remains defined.
    dark = (variance_sum > 0) & (mean_sq_sum == 0)
    quality[dark] = 2.0 * cov[dark] / variance_sum[dark]
    return np.clip(quality, -1.0, 1.0)


def universal_quality_index(
    fused: object, sources: Sequence[object], *, data_range: tuple[float, float] | None = None
) -> float:
    """Q0: mean over sources of Wang & Bovik's universal image quality index ``Q(S_k, F)``.

    ``Q = 4 s_xy m_x m_y / ((s_x^2 + s_y^2)(m_x^2 + m_y^2))`` averaged over every
    8x8 sliding window (Wang & Bovik, IEEE Signal Process. Lett. 9(3), 2002); the
    window shrinks to the image for images smaller than 8 pixels. Constant windows
    follow ``qindex.m``: Q = 2 m_x m_y / (m_x^2 + m_y^2), and 1 if both are zero.
    Higher is better. Range [-1, 1], 1 when F equals every source.

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    f, srcs = prepare_fused_and_sources(fused, sources, data_range)
    shape = window_shape(f.shape, QUALITY_WINDOW)
    return float(np.mean([_quality_index_map(s, f, shape).mean() for s in srcs]))


def _weighted_quality(f: np.ndarray, srcs: list[np.ndarray]) -> float:
    """Piella's Q_W on images already on the scoring scale."""
    shape = window_shape(f.shape, QUALITY_WINDOW)
    saliency = np.stack([window_variance(s, shape) for s in srcs])
    quality = np.stack([_quality_index_map(s, f, shape) for s in srcs])
    total = saliency.sum(axis=0)
    # Local weight lambda_k = s_k / sum_j s_j; windows where no source varies share equally.
    local = np.where(total > 0, saliency / np.where(total > 0, total, 1.0), 1.0 / len(srcs))
    overall = saliency.max(axis=0)  # C(w) = max_k s(S_k | w)
    if overall.sum() <= 0:  # every source constant: all windows count the same
        overall = np.ones_like(overall)
    return float(np.sum(overall * np.sum(local * quality, axis=0)) / overall.sum())


def weighted_quality_index(
    fused: object, sources: Sequence[object], *, data_range: tuple[float, float] | None = None
) -> float:
    """QW: Piella & Heijmans' weighted fusion quality index.

    ``Q_W = sum_w c(w) sum_k lambda_k(w) Q(S_k, F | w)`` over 8x8 sliding windows,
    with saliency ``s(S_k | w)`` = the variance of source k in w,
    ``lambda_k(w) = s_k / sum_j s_j`` and ``c(w) = max_k s_k / sum_w' max_k s_k``
    (Piella & Heijmans, Proc. ICIP 2003, vol. 3, pp. 173-176). Windows where no
    source varies weigh each source equally. Higher is better. Range [-1, 1].

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    f, srcs = prepare_fused_and_sources(fused, sources, data_range)
    return _weighted_quality(f, srcs)


def _edge_image(image: np.ndarray) -> np.ndarray:
    gx, gy = sobel_gradients(image)
    return np.hypot(gx, gy)


def edge_dependent_quality_index(
    fused: object,
    sources: Sequence[object],
    *,
    alpha: float = 1.0,
    data_range: tuple[float, float] | None = None,
) -> float:
    """QE: Piella & Heijmans' edge-dependent fusion quality index.

    ``Q_E = Q_W(S, F)^(1 - alpha) * Q_W(S', F')^alpha`` where ``S'``, ``F'`` are
    Sobel gradient-magnitude images (Piella & Heijmans, Proc. ICIP 2003). The
    default ``alpha = 1`` scores the edge images alone, as in Zheng Liu's fusion
    metrics toolbox (Liu et al., IEEE TPAMI 34(1), 2012). Negative Q_W values are
    clipped to 0 before the powers so Q_E stays real. Higher is better. Range [0, 1].

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape.
    :param alpha: weight of the edge images, in [0, 1].
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    f, srcs = prepare_fused_and_sources(fused, sources, data_range)
    edge_quality = max(0.0, _weighted_quality(_edge_image(f), [_edge_image(s) for s in srcs]))
    if alpha == 1.0:
        return edge_quality
    plain_quality = max(0.0, _weighted_quality(f, srcs))
    return float(plain_quality ** (1.0 - alpha) * edge_quality**alpha)


# --------------------------------------------------------------------------- Q^AB/F


def _edge_strength_orientation(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = sobel_gradients(image)
    # Edge orientation is defined modulo pi (an edge has no direction).
    return np.hypot(gx, gy), np.mod(np.arctan2(gy, gx), np.pi)


def gradient_based_quality_index(
    fused: object, sources: Sequence[object], *, data_range: tuple[float, float] | None = None
) -> float:
    """Q^AB/F: Xydeas & Petrovic's edge-transfer metric.

    Sobel strength ``g`` and orientation ``a`` per pixel. For each source S:
    ``G^SF = min(g_S, g_F) / max(g_S, g_F)`` (1 where both are 0),
    ``A^SF = | |a_S - a_F| - pi/2 | / (pi/2)`` (orientation agreement modulo pi, as in
    Petrovic's ``Qabf.m``), ``Q^SF = Gamma_g / (1 + exp(k_g (G - D_g))) *
    Gamma_a / (1 + exp(k_a (A - D_a)))`` with Gamma_g = 0.9994, k_g = -15, D_g = 0.5,
    Gamma_a = 0.9879, k_a = -22, D_a = 0.8, and
    ``Q^AB/F = sum_S sum Q^SF g_S / sum_S sum g_S`` (weights ``w = g^L``, L = 1)
    (Xydeas & Petrovic, Electron. Lett. 36(4), 2000). With F equal to every source
    the value is ``0.99885 * 0.97592 = 0.97480``, the top the constants allow.
    Sources without any edge give 0. Higher is better. Range [0, 0.9748].

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    c = QABF_CONSTANTS
    f, srcs = prepare_fused_and_sources(fused, sources, data_range)
    g_f, a_f = _edge_strength_orientation(f)
    numerator = 0.0
    denominator = 0.0
    for s in srcs:
        g_s, a_s = _edge_strength_orientation(s)
        larger = np.maximum(g_s, g_f)
        strength = np.where(larger > 0, np.minimum(g_s, g_f) / np.where(larger > 0, larger, 1.0), 1.0)
        orientation = np.abs(np.abs(a_s - a_f) - np.pi / 2) / (np.pi / 2)
        q_g = c["gamma_g"] / (1.0 + np.exp(c["k_g"] * (strength - c["d_g"])))
        q_a = c["gamma_a"] / (1.0 + np.exp(c["k_a"] * (orientation - c["d_a"])))
        numerator += float(np.sum(q_g * q_a * g_s))
        denominator += float(np.sum(g_s))
    if denominator <= 0.0:
        return 0.0
    return numerator / denominator


# --------------------------------------------------------------------------- VIF


def _gaussian_window_1d(size: int) -> np.ndarray:
    """1D factor of MATLAB's ``fspecial('gaussian', size, size / 5)`` (the 2D kernel is separable)."""
    sigma = size / 5.0
    x = np.arange(size) - (size - 1) / 2.0
    kernel = np.exp(-(x**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def _filter_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable correlation keeping only fully-covered pixels (MATLAB ``filter2(..., 'valid')``)."""
    out = ndimage.correlate1d(image, kernel, axis=0, mode="constant")
    out = ndimage.correlate1d(out, kernel, axis=1, mode="constant")
    r = kernel.size // 2
    return out[r : image.shape[0] - r, r : image.shape[1] - r]


def _vif_scaled(reference: np.ndarray, distorted: np.ndarray, noise_variance: float = 2.0) -> float:
    """Pixel-domain VIF (Sheikh & Bovik's ``vifp_mscale.m``) of images on the 0-255 scale."""
    eps = 1e-10
    numerator = 0.0
    denominator = 0.0
    ref, dist = reference, distorted
    for scale in range(1, 5):
        size = 2 ** (4 - scale + 1) + 1  # 17, 9, 5, 3
        kernel = _gaussian_window_1d(size)
        if min(ref.shape) < size:  # image too small for this scale: it carries no term
            break
        if scale > 1:
            ref = _filter_valid(ref, kernel)[::2, ::2]
            dist = _filter_valid(dist, kernel)[::2, ::2]
        if min(ref.shape) < size:  # image too small for this scale: it carries no term
            break
        mu1 = _filter_valid(ref, kernel)
        mu2 = _filter_valid(dist, kernel)
        sigma1_sq = np.maximum(_filter_valid(ref * ref, kernel) - mu1 * mu1, 0.0)
        sigma2_sq = np.maximum(_filter_valid(dist * dist, kernel) - mu2 * mu2, 0.0)
        sigma12 = _filter_valid(ref * dist, kernel) - mu1 * mu2

        g = sigma12 / (sigma1_sq + eps)
        sv_sq = sigma2_sq - g * sigma12
        flat_ref = sigma1_sq < eps
        g[flat_ref] = 0.0
        sv_sq[flat_ref] = sigma2_sq[flat_ref]
        sigma1_sq[flat_ref] = 0.0
        flat_dist = sigma2_sq < eps
        g[flat_dist] = 0.0
        sv_sq[flat_dist] = 0.0
        negative = g < 0
        sv_sq[negative] = sigma2_sq[negative]
        g[negative] = 0.0
        sv_sq = np.maximum(sv_sq, eps)

        numerator += float(np.sum(np.log10(1.0 + g * g * sigma1_sq / (sv_sq + noise_variance))))
        denominator += float(np.sum(np.log10(1.0 + sigma1_sq / noise_variance)))
    if denominator <= VARIANCE_FLOOR:
        # A flat (or tiny) reference carries no information to preserve.
        return 1.0 if np.array_equal(reference, distorted) else 0.0
    return numerator / denominator


def visual_information_fidelity(
    fused: object, sources: Sequence[object], *, data_range: tuple[float, float] | None = None
) -> float:
    """VIF: ``sum_k VIF(S_k, F)``, pixel-domain visual information fidelity of F to each source.

    Sheikh & Bovik's multi-scale pixel-domain VIF (``vifp_mscale.m``; Sheikh &
    Bovik, IEEE TIP 15(2), 2006): four scales with Gaussian windows of 17, 9, 5 and
    3 pixels (sigma = size / 5), 'valid' filtering and dyadic downsampling, noise
    variance sigma_n^2 = 2. Scales the image is too small for are skipped; a flat
    source gives 1 if F equals it, else 0. Higher is better. Range [0, ~K]
    (VIF can exceed 1 where F has more contrast than the source).

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    f, srcs = prepare_fused_and_sources(fused, sources, data_range)
    return float(sum(_vif_scaled(s, f) for s in srcs))
