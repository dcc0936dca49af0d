"""Structure-based fusion metrics against the sources.

Q0 (Wang & Bovik's universal image quality index), SSIM to the sources and VIF (Sheikh &
Bovik); QW and QE are in :mod:`.piella`, Q^AB/F in :mod:`.qabf`.
All on the 0-255 scoring scale; every one accepts K >= 2 sources.  The private
``_name(group)`` functions compute from a :class:`ScoredGroup`, so
:func:`~MedFusionLib.metrics.evaluate` shares their intermediate results.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from ._common import SCORE_MAX, VARIANCE_FLOOR, DataRange, window_shape
from ._group import QUALITY_WINDOW, Role, ScoredGroup, in_row_bands

#: Side of SSIM's Gaussian window (sigma 1.5 truncated at 3.5 sigma, as in Wang et al. 2004).
SSIM_WINDOW = 11
#: QW's saliency of every source where none varies (``metricPeilla.m``'s rule; see :mod:`.piella`).
FLAT_SALIENCY = 0.5
_SSIM_C1 = (0.01 * SCORE_MAX) ** 2
_SSIM_C2 = (0.03 * SCORE_MAX) ** 2
#: The taps of :func:`gaussian_11` (SciPy's ``_gaussian_kernel1d``), for the compiled backend.
_SSIM_WEIGHTS = np.exp(-0.5 / 1.5**2 * np.arange(-(SSIM_WINDOW // 2), SSIM_WINDOW // 2 + 1) ** 2)
_SSIM_WEIGHTS /= _SSIM_WEIGHTS.sum()

# --------------------------------------------------------------------------- SSIM


def ssim_between(group: ScoredGroup, reference: Role, image: Role = "F") -> float:
    """SSIM(reference, image) with the settings of Wang et al. 2004 (see :func:`ssim_to_sources`).

    The NumPy backend calls ``skimage.metrics.structural_similarity`` (Gaussian weights,
    population statistics, borders of 5 pixels cropped before the mean); the compiled one
    (:func:`_ssim_to_fused`) computes the same sums for every source against the fused image
    in one pass, and the tests check it against scikit-image. Images smaller than one 11x11
    window use the SSIM formula on global statistics (scikit-image refuses them).
    """
    x, y = group.image(reference), group.image(image)
    if min(x.shape) < SSIM_WINDOW:
        mx, my = x.mean(), y.mean()
        cov = ((x - mx) * (y - my)).mean()
        return float((2 * mx * my + _SSIM_C1) * (2 * cov + _SSIM_C2)
                     / ((mx**2 + my**2 + _SSIM_C1) * (x.var() + y.var() + _SSIM_C2)))
    if group.kernels is not None and image == "F":
        return _ssim_to_fused(group)[reference]
    return float(structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=SCORE_MAX))


def _ssim_to_fused(group: ScoredGroup) -> dict[Role, float]:
    """Compiled backend: SSIM(R, F) for every source and the target, in one pass over F."""
    return gaussian_structure(group, ssim=True, qw=False)[0]


def gaussian_structure(
    group: ScoredGroup, *, ssim: bool, qw: bool
) -> tuple[dict[Role, float], tuple[float, float, float] | None]:
    """Compiled backend: SSIM's Gaussian moments of every image, made once for SSIM and QW.

    SSIM against the fused image (of every source, and of the target if there is one)
    and QW (:func:`~MedFusionLib.metrics.piella.weighted_quality_index`) both start from
    the 11-tap Gaussian means, squares and cross products with F of the same images; the
    kernel (``_kernels.gaussian_structure_sums``) makes them once per row and computes
    each pixel's SSIM once for both. Each metric asks for its own part, and for the
    other's too when the group will be asked for it (:meth:`ScoredGroup.wants`), so the
    second finds the pass done.

    :param ssim: compute SSIM of every source and the target against F.
    :param qw: compute QW's sums over the sources.
    :returns: ``({role: SSIM}, (QW numerator, denominator, unweighted sum) or None)``.
    """
    ssim = ssim or group.wants("SSIM_S", "SSIM")
    qw = qw or group.wants("QW", "QE")

    def compute():
        roles: list[Role] = list(range(len(group.sources)))
        if ssim and group.target is not None:
            roles.append("T")
        images = tuple(np.ascontiguousarray(group.image(r)) for r in [*roles, "F"])
        pad = SSIM_WINDOW // 2
        pixels = (images[0].shape[0] - 2 * pad) * (images[0].shape[1] - 2 * pad)
        ssim_sums, qw_sums = gaussian_structure_sums(
            group, images, len(roles) if ssim else 0, len(group.sources) if qw else 0)
        values = dict(zip(roles, (float(v) for v in ssim_sums / pixels))) if ssim else {}
        return values, qw_sums if qw else None

    return group.memo(("gaussian_structure", ssim, qw), compute)


def gaussian_structure_sums(
    group: ScoredGroup, images: tuple[np.ndarray, ...], ssim_count: int, qw_count: int
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``_kernels.gaussian_structure_sums`` over every valid row of ``images`` = (others..., F), bands in parallel.

    :param ssim_count: the first images whose SSIM against F is summed (0: none).
    :param qw_count: the first images (the sources) QW's sums are taken over (0: none).
    :returns: the SSIM sums per image, and QW's (numerator, denominator, unweighted sum).
    """
    bands = in_row_bands(
        lambda first, end: group.kernels.gaussian_structure_sums(
            images, _SSIM_WEIGHTS, _SSIM_C1, _SSIM_C2, VARIANCE_FLOOR, FLAT_SALIENCY, ssim_count, qw_count,
            first, end),
        images[0].shape[0] - 2 * (SSIM_WINDOW // 2), group.kernels)
    return sum(b[0] for b in bands), tuple(float(sum(b[i] for b in bands)) for i in (1, 2, 3))


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


def _quality_indices(group: ScoredGroup) -> np.ndarray:
    """Per-source mean of Q(S_k, F) over the 8x8 windows; both backends compute the same window statistics."""
    def compute():
        if group.kernels is not None:  # the compiled backend never forms the maps
            images = group.with_fused_last()
            rows, cols = window_shape(group.fused.shape, QUALITY_WINDOW)
            out_rows, out_cols = group.fused.shape[0] - rows + 1, group.fused.shape[1] - cols + 1
            bands = in_row_bands(
                lambda first, end: group.kernels.quality_sums(images, rows, cols, VARIANCE_FLOOR, first, end),
                out_rows, group.kernels)
            return sum(band[0] for band in bands) / (out_rows * out_cols)
        return np.array([group.quality_map(k).mean() for k in range(len(group.sources))])

    return group.memo(("quality_indices",), compute)


def _universal_quality(group: ScoredGroup) -> float:
    return float(np.mean(_quality_indices(group)))


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
