"""Guided-filtering fusion (GFF) of Li, Kang & Hu, with the guided filter of He et al.

Algorithm (Li et al. 2013, section III), for K inputs scaled jointly to [0, 1]:

1. Two-scale decomposition: base ``B_k`` = 31x31 mean filter of ``I_k``,
   detail ``D_k = I_k - B_k``.
2. Saliency ``S_k`` = |3x3 Laplacian of ``I_k``| smoothed by an 11x11 Gaussian
   (sigma 5); binary weight maps ``P_k = 1`` where ``S_k`` is the largest of the K.
3. Weight refinement by guided filtering with ``I_k`` as guide:
   ``W_k^B = GF(I_k, P_k; r1=45, eps1=0.3)`` (smooth, for the base layers) and
   ``W_k^D = GF(I_k, P_k; r2=7, eps2=1e-6)`` (sharp, for the detail layers),
   each normalised to sum to one per pixel.
4. ``F = sum_k W_k^B B_k + sum_k W_k^D D_k``, scaled back to the input units.

Colour inputs are fused on their luminance (the paper guides with the colour
image instead).  The fused image is not clipped: like any weighted scheme with
signed guided-filter weights it may overshoot the input range slightly.

References:

- S. Li, X. Kang and J. Hu, "Image fusion with guided filtering",
  *IEEE Trans. Image Processing* 22(7):2864-2875, 2013.
- K. He, J. Sun and X. Tang, "Guided image filtering", ECCV 2010, and
  *IEEE Trans. Pattern Analysis and Machine Intelligence* 35(6):1397-1409, 2013.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import correlate1d, gaussian_filter, uniform_filter

from ..errors import InputError
from ..contributions import combine_scales
from .pixel import FusionBaseline, check_non_negative_int, check_positive_float

# Weight sums at or below this are treated as zero and replaced by equal weights.
_ZERO_SUM = 1e-12


def _box_size(radius: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-axis box window ``2r+1`` over the last two axes, clipped to fit inside the image.

    A window larger than the image would only average reflected copies of it,
    so each axis gets the largest odd window not longer than that side.
    """
    sides = [2 * min(radius, (side - 1) // 2) + 1 for side in shape[-2:]]
    return (1,) * (len(shape) - 2) + tuple(sides)


def _box(image: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    return uniform_filter(image, size=size, mode="reflect")


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Grey-guide guided filter of He, Sun & Tang (ECCV 2010 / TPAMI 2013), Algorithm 1.

    Fits ``q = a_k * guide + b_k`` in every ``(2r+1)x(2r+1)`` window ``w_k`` by
    ridge regression of ``src`` on ``guide`` (``a = cov / (var + eps)``), then
    averages the coefficients of all windows covering each pixel.  Flat guide
    regions are smoothed like a box filter, strong guide edges (variance >> eps)
    are preserved.  Box means use ``scipy.ndimage.uniform_filter`` with
    ``'reflect'`` borders; the window is clipped per axis to the image side.

    :param guide: guide image ``I``, ``(H, W)`` or a ``(..., H, W)`` stack filtered slice by slice.
    :param src: image ``p`` to filter, same shape as ``guide``.
    :param radius: window radius ``r`` >= 0 (window ``2r+1``).
    :param eps: regularisation > 0, in squared intensity units of ``guide``.
    :return: the filtered image ``q``, a new ``float64`` array of ``src``'s shape.
    :raises InputError: mismatched shapes or invalid ``radius``/``eps``.
    """
    radius = check_non_negative_int(radius, "radius")
    eps = check_positive_float(eps, "eps")
    guide = np.asarray(guide, dtype=np.float64)
    src = np.asarray(src, dtype=np.float64)
    if guide.shape != src.shape or guide.ndim < 2:
        raise InputError(
            f"guided_filter: guide {guide.shape} and src {src.shape} must be images of one shape"
        )
    size = _box_size(radius, guide.shape)
    mean_i = _box(guide, size)
    mean_p = _box(src, size)
    # Clamp: E[I^2] - E[I]^2 can come out a rounding error below zero.
    var_i = np.maximum(_box(guide * guide, size) - mean_i * mean_i, 0.0)
    cov_ip = _box(guide * src, size) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return _box(a, size) * guide + _box(b, size)


def _normalised_weights(weights: np.ndarray) -> np.ndarray:
    """Scale ``(K, H, W)`` weights to sum to one per pixel; equal weights where the sum vanishes."""
    total = weights.sum(axis=0)
    degenerate = total <= _ZERO_SUM
    np.divide(weights, total, out=weights, where=~degenerate)
    weights[:, degenerate] = 1.0 / weights.shape[0]
    return weights


class GuidedFilterFusion(FusionBaseline):
    """Guided-filtering fusion (GFF), Li, Kang & Hu, IEEE TIP 2013, with the paper's parameters.

    :param base_size: side of the mean filter of the two-scale decomposition (odd, default 31).
    :param saliency_sigma: sigma of the Gaussian smoothing of the Laplacian saliency (default 5).
    :param saliency_radius: radius of that Gaussian window (default 5, i.e. 11x11).
    :param r1: guided-filter radius for the base weights (default 45).
    :param eps1: guided-filter regularisation for the base weights (default 0.3).
    :param r2: guided-filter radius for the detail weights (default 7).
    :param eps2: guided-filter regularisation for the detail weights (default 1e-6).

    ``eps1``/``eps2`` are in units of intensities scaled to [0, 1] (by the
    group's joint minimum and range), as in the paper.  Box windows (the mean
    filter and the guided filters) larger than the image are clipped to it per
    axis, so tiny images work; the saliency Gaussian needs no clipping.
    """

    name = "guided_filter"

    def __init__(
        self,
        base_size: int = 31,
        saliency_sigma: float = 5.0,
        saliency_radius: int = 5,
        r1: int = 45,
        eps1: float = 0.3,
        r2: int = 7,
        eps2: float = 1e-6,
    ) -> None:
        base_size = check_non_negative_int(base_size, "base_size")
        if base_size % 2 == 0:
            raise InputError(f"base_size: expected an odd positive integer, got {base_size}")
        self.base_size = base_size
        self.saliency_sigma = check_positive_float(saliency_sigma, "saliency_sigma")
        self.saliency_radius = check_non_negative_int(saliency_radius, "saliency_radius")
        self.r1 = check_non_negative_int(r1, "r1")
        self.eps1 = check_positive_float(eps1, "eps1")
        self.r2 = check_non_negative_int(r2, "r2")
        self.eps2 = check_positive_float(eps2, "eps2")

    def _params(self) -> dict[str, object]:
        return {
            "base_size": self.base_size,
            "saliency_sigma": self.saliency_sigma,
            "saliency_radius": self.saliency_radius,
            "r1": self.r1,
            "eps1": self.eps1,
            "r2": self.r2,
            "eps2": self.eps2,
        }

    def _fuse_stack(self, stack: np.ndarray, contributions: bool = False) -> Any:
        low = stack.min()
        span = stack.max() - low
        if span == 0:
            # Every input is the same constant image: nothing to fuse.
            fused = stack[0].copy()
            return (fused, np.full(stack.shape, 1.0 / stack.shape[0])) if contributions else fused
        # eps1/eps2 assume [0, 1] intensities, so scale jointly (one scale for
        # all inputs keeps their relative contrast) and undo it at the end.
        stack -= low
        stack /= span

        base = _box(stack, _box_size(self.base_size // 2, stack.shape))
        detail = stack - base

        # Saliency: |3x3 Laplacian| (sum of second differences along the two
        # image axes, as scipy.ndimage.laplace does) smoothed by the Gaussian;
        # axis 0 (the K inputs) is never filtered, so inputs never mix.
        second_difference = np.array([1.0, -2.0, 1.0])
        saliency = np.abs(
            correlate1d(stack, second_difference, axis=1, mode="reflect")
            + correlate1d(stack, second_difference, axis=2, mode="reflect")
        )
        saliency = gaussian_filter(
            saliency,
            sigma=(0.0, self.saliency_sigma, self.saliency_sigma),
            truncate=self.saliency_radius / self.saliency_sigma,
            mode="reflect",
        )
        # Equality rather than argmax: identical inputs all get P = 1 and the
        # rule does not depend on the order of the inputs.
        binary = (saliency == saliency.max(axis=0)).astype(np.float64)

        weights_base = _normalised_weights(guided_filter(stack, binary, self.r1, self.eps1))
        weights_detail = _normalised_weights(guided_filter(stack, binary, self.r2, self.eps2))
        fused = np.einsum("khw,khw->hw", weights_base, base)
        fused_detail = np.einsum("khw,khw->hw", weights_detail, detail)
        fused += fused_detail
        fused *= span
        fused += low
        if not contributions:
            return fused
        # The guided filter can overshoot [0, 1] a little; a share is a non-negative fraction.
        shares = [_normalised_weights(np.clip(w, 0.0, None)) for w in (weights_detail, weights_base)]
        return fused, combine_scales([(shares[0], fused_detail[None])], shares[1], _no_resize)


def _no_resize(array: np.ndarray, size: tuple[int, ...]) -> np.ndarray:  # GFF's two scales share one grid
    raise AssertionError("guided-filter scales have one size")
