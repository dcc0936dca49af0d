"""Structure- and edge-based fusion metrics against the sources.

Q0 (Wang & Bovik's universal image quality index), QW and QE (Piella & Heijmans),
Q^AB/F (Xydeas & Petrovic), SSIM to the sources and VIF (Sheikh & Bovik).
All on the 0-255 scoring scale; every one accepts K >= 2 sources.  The private
``_name(group)`` functions compute from a :class:`ScoredGroup`, so
:func:`~MedFusionLib.metrics.evaluate` shares their intermediate results.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from ._common import SCORE_MAX, VARIANCE_FLOOR, DataRange, window_shape
from ._group import QUALITY_WINDOW, Role, ScoredGroup, gaussian_11, in_row_bands

#: Petrovic's constants of the Q^AB/F sigmoids (Xydeas & Petrovic 2000; Petrovic 2007).
QABF_CONSTANTS = {"gamma_g": 0.9994, "k_g": -15.0, "d_g": 0.5, "gamma_a": 0.9879, "k_a": -22.0, "d_a": 0.8}
#: Rows of Sobel responses per step of the compiled gradient pass (a few hundred KiB of scratch).
_GRADIENT_STRIP = 32
#: Side of SSIM's Gaussian window (sigma 1.5 truncated at 3.5 sigma, as in Wang et al. 2004).
SSIM_WINDOW = 11
_SSIM_C1 = (0.01 * SCORE_MAX) ** 2
_SSIM_C2 = (0.03 * SCORE_MAX) ** 2
#: The taps of :func:`gaussian_11` (SciPy's ``_gaussian_kernel1d``), for the compiled backend.
_SSIM_WEIGHTS = np.exp(-0.5 / 1.5**2 * np.arange(-(SSIM_WINDOW // 2), SSIM_WINDOW // 2 + 1) ** 2)
_SSIM_WEIGHTS /= _SSIM_WEIGHTS.sum()

# --------------------------------------------------------------------------- SSIM


def ssim_between(group: ScoredGroup, reference: Role, image: Role = "F") -> float:
    """SSIM(reference, image) with the settings of Wang et al. 2004 (see :func:`ssim_to_sources`).

    The arithmetic is ``skimage.metrics.structural_similarity``'s (Gaussian
    weights, population statistics, borders of 5 pixels cropped before the mean),
    written out so the filtered fused image is shared by every pair; the tests
    check it against scikit-image. Only the cropped interior enters the mean, and
    there the 11-tap window never reaches past the image, so the border mode of the
    filter does not matter.
    """
    x, y = group.image(reference), group.image(image)
    if min(x.shape) < SSIM_WINDOW:
        # Smaller than one window: the SSIM formula on global statistics (one window).
        mx, my = x.mean(), y.mean()
        cov = ((x - mx) * (y - my)).mean()
        return float((2 * mx * my + _SSIM_C1) * (2 * cov + _SSIM_C2)
                     / ((mx**2 + my**2 + _SSIM_C1) * (x.var() + y.var() + _SSIM_C2)))
    if group.kernels is not None and image == "F":
        return _ssim_to_fused(group)[reference]
    mean_x, square_x = group.gaussian_moments(reference)
    mean_y, square_y = group.gaussian_moments(image)
    var_x = square_x - mean_x * mean_x
    var_y = square_y - mean_y * mean_y
    cov = gaussian_11(x * y) - mean_x * mean_y
    ssim_map = ((2 * mean_x * mean_y + _SSIM_C1) * (2 * cov + _SSIM_C2)) / (
        (mean_x * mean_x + mean_y * mean_y + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
    )
    pad = SSIM_WINDOW // 2
    return float(ssim_map[pad:-pad, pad:-pad].mean())


def _ssim_to_fused(group: ScoredGroup) -> dict[Role, float]:
    """Compiled backend: SSIM(R, F) for every source and the target, in one pass over F."""
    def compute():
        roles: list[Role] = [*range(len(group.sources)), *(["T"] if group.target is not None else [])]
        images = tuple(np.ascontiguousarray(group.image(r)) for r in [*roles, "F"])
        pad = SSIM_WINDOW // 2
        rows, cols = images[0].shape[0] - 2 * pad, images[0].shape[1] - 2 * pad
        bands = in_row_bands(
            lambda first, end: group.kernels.ssim_sums(images, _SSIM_WEIGHTS, _SSIM_C1, _SSIM_C2, first, end),
            rows, group.kernels)
        return dict(zip(roles, (float(v) for v in sum(bands) / (rows * cols))))

    return group.memo(("ssim_to_fused",), compute)


def _ssim_to_sources(group: ScoredGroup) -> float:
    return float(sum(ssim_between(group, k) for k in range(len(group.sources))))


def ssim_to_sources(fused: object, sources: Sequence[object], *, data_range: DataRange = None) -> float:
    """SSIM to the sources: ``sum_k SSIM(S_k, F)``.

    SSIM (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 13(4), 2004) with the paper's
    settings, those of ``skimage.metrics.structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=255)``: 11x11 Gaussian window,
    K = (0.01, 0.03), L = 255; images smaller than 11 pixels along a side use one
    global window. Higher is better. Range [-K, K] for K sources; F = A = B gives 2.

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _ssim_to_sources(ScoredGroup.from_inputs(fused, sources, data_range=data_range))


# --------------------------------------------------------------------------- Q0, QW, QE


def _quality_indices(group: ScoredGroup, edges: bool = False) -> tuple[np.ndarray, float]:
    """Per-source mean of Q(S_k, F) over the 8x8 windows, and Q_W (see :func:`weighted_quality_index`).

    ``edges`` scores the Sobel magnitude images instead (for QE). Both backends
    compute the same window statistics; the compiled one never forms the maps.
    """
    def compute():
        count = len(group.sources)
        if group.kernels is not None:
            images = tuple(_compiled_gradients(group)[0]) if edges else group.with_fused_last()
            rows, cols = window_shape(group.fused.shape, QUALITY_WINDOW)
            out_rows, out_cols = group.fused.shape[0] - rows + 1, group.fused.shape[1] - cols + 1
            bands = in_row_bands(
                lambda first, end: group.kernels.quality_sums(images, rows, cols, VARIANCE_FLOOR, first, end),
                out_rows, group.kernels)
            q_sums, weighted, weight, unweighted = (sum(band[i] for band in bands) for i in range(4))
            windows = out_rows * out_cols
            # No source varies in any window: every window counts the same (see below).
            return q_sums / windows, (weighted / weight if weight > 0 else unweighted / windows)
        saliency = np.stack([group.window_moments(k, edges)[1] for k in range(count)])
        quality = np.stack([group.quality_map(k, edges) for k in range(count)])
        total = saliency.sum(axis=0)
        # Local weight lambda_k = s_k / sum_j s_j; windows where no source varies share equally.
        local = np.where(total > 0, saliency / np.where(total > 0, total, 1.0), 1.0 / count)
        overall = saliency.max(axis=0)  # C(w) = max_k s(S_k | w)
        if overall.sum() <= 0:  # every source constant: all windows count the same
            overall = np.ones_like(overall)
        weighted = float(np.sum(overall * np.sum(local * quality, axis=0)) / overall.sum())
        return np.array([q.mean() for q in quality]), weighted

    return group.memo(("quality_indices", edges), compute)


def _universal_quality(group: ScoredGroup) -> float:
    return float(np.mean(_quality_indices(group)[0]))


def universal_quality_index(fused: object, sources: Sequence[object], *, data_range: DataRange = None) -> float:
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
    return _universal_quality(ScoredGroup.from_inputs(fused, sources, data_range=data_range))


def _weighted_quality(group: ScoredGroup, edges: bool = False) -> float:
    return float(_quality_indices(group, edges)[1])


def weighted_quality_index(fused: object, sources: Sequence[object], *, data_range: DataRange = None) -> float:
    """QW: Piella & Heijmans' weighted fusion quality index.

    ``Q_W = sum_w c(w) sum_k lambda_k(w) Q(S_k, F | w)`` over 8x8 sliding windows,
    with saliency ``s(S_k | w)`` = the variance of source k in w,
    ``lambda_k(w) = s_k / sum_j s_j`` and ``c(w) = max_k s_k / sum_w' max_k s_k``
    (Piella & Heijmans, Proc. ICIP 2003, vol. 3, pp. 173-176). This is the paper's
    form with Q0 as the local index; Zheng Liu's toolbox substitutes an 11x11
    Gaussian SSIM. Windows where no source varies weigh each source equally.
    Higher is better. Range [-1, 1].

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _weighted_quality(ScoredGroup.from_inputs(fused, sources, data_range=data_range))


def _edge_dependent_quality(group: ScoredGroup, alpha: float = 1.0) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    edge_quality = max(0.0, _weighted_quality(group, edges=True))
    if alpha == 1.0:
        return edge_quality
    plain_quality = max(0.0, _weighted_quality(group))
    return float(plain_quality ** (1.0 - alpha) * edge_quality**alpha)


def edge_dependent_quality_index(
    fused: object, sources: Sequence[object], *, alpha: float = 1.0, data_range: DataRange = None
) -> float:
    """QE: Piella & Heijmans' edge-dependent fusion quality index.

    ``Q_E = Q_W(S, F)^(1 - alpha) * Q_W(S', F')^alpha`` where ``S'``, ``F'`` are
    Sobel gradient-magnitude images (Piella & Heijmans, Proc. ICIP 2003; the form
    of Liu et al., IEEE TPAMI 34(1), 2012). The default ``alpha = 1`` scores the
    edge images alone, as Liu's and the MEFB benchmark's code do. Negative Q_W
    values are clipped to 0 before the powers so Q_E stays real. Higher is better.
    Range [0, 1].

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape.
    :param alpha: weight of the edge images, in [0, 1].
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _edge_dependent_quality(ScoredGroup.from_inputs(fused, sources, data_range=data_range), alpha)


# --------------------------------------------------------------------------- Q^AB/F


def _gradient_based_quality(group: ScoredGroup) -> float:
    c = QABF_CONSTANTS
    if group.kernels is not None:
        _, numerator, denominator = _compiled_gradients(group)
        return numerator / denominator if denominator > 0.0 else 0.0
    g_f, a_f = group.edge("F"), group.orientation("F")
    numerator = 0.0
    denominator = 0.0
    for k in range(len(group.sources)):
        g_s, a_s = group.edge(k), group.orientation(k)
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


def _compiled_gradients(group: ScoredGroup) -> tuple[np.ndarray, float, float]:
    """Compiled backend: Sobel magnitudes of ``(S_0, ..., S_{K-1}, F)`` and the Q^AB/F sums, in one pass.

    QE needs the magnitude images whole (for its 8x8 windows); Q^AB/F needs the
    orientations only pixel by pixel, so they are made one strip of rows at a time
    and never kept whole. The kernels leave ``arctan2`` and ``exp`` to NumPy, whose
    are vectorised (numba's call the scalar C library). Both metrics come from this
    one pass, so QE alone also pays for Q^AB/F's sums.
    """
    def compute():
        images = group.with_fused_last()
        count, (height, width) = len(images), images[0].shape
        magnitude = np.empty((count, height, width))
        constants = tuple(QABF_CONSTANTS.values())

        def scratch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            strip = (count, _GRADIENT_STRIP, width)
            return np.empty(strip), np.empty(strip), np.empty((2, count - 1, _GRADIENT_STRIP, width))

        def band(first: int, end: int, buffers: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[float, float]:
            gx, gy, exponents = buffers
            numerator = denominator = 0.0
            for r0 in range(first, end, _GRADIENT_STRIP):
                rows = min(_GRADIENT_STRIP, end - r0)
                for p, image in enumerate(images):
                    group.kernels.sobel_rows(image, r0, r0 + rows, gx[p], gy[p], magnitude[p, r0 : r0 + rows])
                angle = np.arctan2(gy[:, :rows], gx[:, :rows], out=gx[:, :rows])
                group.kernels.qabf_exponents(magnitude[:, r0 : r0 + rows], angle, constants, exponents[:, :, :rows])
                exponentials = np.exp(exponents[:, :, :rows], out=exponents[:, :, :rows])
                num, den = group.kernels.qabf_sums(magnitude[:, r0 : r0 + rows], exponentials, constants)
                numerator += num
                denominator += den
            return numerator, denominator

        bands = in_row_bands(band, height, group.kernels, scratch)
        return magnitude, sum(b[0] for b in bands), sum(b[1] for b in bands)

    return group.memo(("compiled_gradients",), compute)


def gradient_based_quality_index(fused: object, sources: Sequence[object], *, data_range: DataRange = None) -> float:
    """Q^AB/F: Xydeas & Petrovic's edge-transfer metric.

    Sobel strength ``g`` and orientation ``a`` per pixel. For each source S:
    ``G^SF = min(g_S, g_F) / max(g_S, g_F)`` (1 where both are 0; ``Qabf.m``'s
    ``G = g_F`` quirk for equal strengths is not reproduced),
    ``A^SF = | |a_S - a_F| - pi/2 | / (pi/2)`` (orientation agreement modulo pi, as in
    Liu's ``metricXydeas.m``), ``Q^SF = Gamma_g / (1 + exp(k_g (G - D_g))) *
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
    return _gradient_based_quality(ScoredGroup.from_inputs(fused, sources, data_range=data_range))


# --------------------------------------------------------------------------- VIF

_VIF_SCALES = 4
_VIF_NOISE_VARIANCE = 2.0  # sigma_n^2 of vifp_mscale.m
_VIF_EPS = 1e-10


def _gaussian_window_1d(size: int) -> np.ndarray:
    """1D factor of MATLAB's ``fspecial('gaussian', size, size / 5)`` (the 2D kernel is separable)."""
    sigma = size / 5.0
    x = np.arange(size) - (size - 1) / 2.0
    kernel = np.exp(-(x**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


_VIF_KERNELS = [_gaussian_window_1d(2 ** (_VIF_SCALES - scale + 1) + 1) for scale in range(1, _VIF_SCALES + 1)]


def _filter_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable correlation keeping only fully-covered pixels (MATLAB ``filter2(..., 'valid')``)."""
    r = kernel.size // 2
    out = ndimage.correlate1d(image, kernel, axis=0, mode="constant")[r : image.shape[0] - r]
    out = ndimage.correlate1d(out, kernel, axis=1, mode="constant")
    return out[:, r : image.shape[1] - r]


def _vif_pyramid(group: ScoredGroup, role: Role) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per VIF scale: the image at that scale, its local mean and local variance ('valid')."""
    def compute():
        levels = []
        image = group.image(role)
        for scale, kernel in enumerate(_VIF_KERNELS, start=1):
            if min(image.shape) < kernel.size:  # too small for this scale: it carries no term
                break
            if scale > 1:
                image = _filter_valid(image, kernel)[::2, ::2]
                if min(image.shape) < kernel.size:
                    break
            mean = _filter_valid(image, kernel)
            variance = np.maximum(_filter_valid(image * image, kernel) - mean * mean, 0.0)
            levels.append((image, mean, variance))
        return levels

    return group.memo(("vif_pyramid", role), compute)


def vif_between(group: ScoredGroup, reference: Role, distorted: Role = "F") -> float:
    """Pixel-domain VIF of ``distorted`` against ``reference`` (Sheikh & Bovik's ``vifp_mscale.m``)."""
    numerator = 0.0
    denominator = 0.0
    for kernel, (ref, mu1, sigma1_sq), (dist, mu2, sigma2_sq) in zip(
        _VIF_KERNELS, _vif_pyramid(group, reference), _vif_pyramid(group, distorted)
    ):
        sigma1_sq = sigma1_sq.copy()
        sigma12 = _filter_valid(ref * dist, kernel) - mu1 * mu2
        g = sigma12 / (sigma1_sq + _VIF_EPS)
        sv_sq = sigma2_sq - g * sigma12
        flat_ref = sigma1_sq < _VIF_EPS
        g[flat_ref] = 0.0
        sv_sq[flat_ref] = sigma2_sq[flat_ref]
        sigma1_sq[flat_ref] = 0.0
        flat_dist = sigma2_sq < _VIF_EPS
        g[flat_dist] = 0.0
        sv_sq[flat_dist] = 0.0
        negative = g < 0
        sv_sq[negative] = sigma2_sq[negative]
        g[negative] = 0.0
        sv_sq = np.maximum(sv_sq, _VIF_EPS)
        numerator += float(np.sum(np.log10(1.0 + g * g * sigma1_sq / (sv_sq + _VIF_NOISE_VARIANCE))))
        denominator += float(np.sum(np.log10(1.0 + sigma1_sq / _VIF_NOISE_VARIANCE)))
    if denominator <= VARIANCE_FLOOR:
        # A flat (or tiny) reference carries no information to preserve.
        return 1.0 if np.array_equal(group.image(reference), group.image(distorted)) else 0.0
    return numerator / denominator


def _visual_information_fidelity(group: ScoredGroup) -> float:
    if group.kernels is not None:
        return float(sum(_vif_compiled(group)))
    return float(sum(vif_between(group, k) for k in range(len(group.sources))))


def _vif_compiled(group: ScoredGroup) -> list[float]:
    """Compiled backend: :func:`vif_between` of every source, all filtered together scale by scale."""
    count = len(group.sources)
    numerator, denominator = np.zeros(count), np.zeros(count)
    images = group.with_fused_last()
    for scale, kernel in enumerate(_VIF_KERNELS, start=1):
        if min(images[0].shape) < kernel.size:
            break
        if scale > 1:
            images = tuple(group.kernels.vif_downsample(image, kernel) for image in images)
            if min(images[0].shape) < kernel.size:
                break

        def band(first: int, end: int, images=images, kernel=kernel) -> tuple[np.ndarray, np.ndarray]:
            sums = np.zeros(count), np.zeros(count)
            group.kernels.vif_scale(images, kernel, _VIF_EPS, _VIF_NOISE_VARIANCE, first, end, *sums)
            return sums

        for num, den in in_row_bands(band, images[0].shape[0] - kernel.size + 1, group.kernels):
            numerator += num
            denominator += den
    return [
        float(n / d) if d > VARIANCE_FLOOR else (1.0 if np.array_equal(group.sources[k], group.fused) else 0.0)
        for k, (n, d) in enumerate(zip(numerator, denominator))
    ]


def visual_information_fidelity(fused: object, sources: Sequence[object], *, data_range: DataRange = None) -> float:
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
    return _visual_information_fidelity(ScoredGroup.from_inputs(fused, sources, data_range=data_range))
