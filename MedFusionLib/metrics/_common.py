"""Shared machinery of the metrics: the 0-255 scoring scale, histograms, windows, gradients.

Intensity convention (applied jointly to every image of one metric call, so the
fused image and its sources or target stay comparable):

1. ``data_range=(lo, hi)`` given: ``(x - lo) / (hi - lo) * 255``, clipped to [0, 255].
2. every image is ``uint8`` or ``bool``: used as is (``True`` -> 255). When only some
   are, they fix the scale and each other image is read on it by itself: values in
   [0, 1] x255, values in [0, 255] as is, anything else is an error.
3. every value lies in [0, 1]: multiplied by 255 (floats normalised to unit range).
4. every value lies in [0, 255]: used as is.
5. otherwise (CT in HU, 16-bit MRI, arbitrary floats): joint min-max to [0, 255].

Colour images ``(H, W, 3|4)`` are scored on their BT.601 luminance.  Metrics are
2D; score volumes slice by slice.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..validation import as_grey_image

#: Optional ``(lo, hi)`` intensity range that maps onto [0, 255].
DataRange = Optional[Tuple[float, float]]

#: Top of the scale every metric is computed on.
SCORE_MAX = 255.0
#: Number of histogram bins of the information metrics (one per grey level).
N_BINS = 256
#: Variances below this (in grey levels squared on the 0-255 scale) are treated as
#: exactly zero: windowed sums leave ~1e-10 of round-off where the window is constant.
VARIANCE_FLOOR = 1e-6


def to_score_scale(
    images: Sequence[object],
    names: Sequence[str],
    data_range: tuple[float, float] | None = None,
) -> list[np.ndarray]:
    """Validate images and map them jointly onto the 0-255 scoring scale (see module docstring).

    :param images: images of one metric call (fused image first, then sources or target).
    :param names: their names, for error messages.
    :param data_range: optional ``(lo, hi)`` intensity range that maps to [0, 255].
    :returns: new 2D ``float64`` arrays of equal shape.
    """
    originals = [np.asarray(image) for image in images]
    arrays = [as_grey_image(image, name) for image, name in zip(originals, names)]
    for array, name in zip(arrays[1:], names[1:]):
        if array.shape != arrays[0].shape:
            raise InputError(
                f"{name}: shape {array.shape} differs from {names[0]} shape {arrays[0].shape}"
            )
    if data_range is not None:
        lo, hi = (float(v) for v in data_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise InputError(f"data_range: expected (lo, hi) with lo < hi, got {data_range!r}")
        return [np.clip((a - lo) * (SCORE_MAX / (hi - lo)), 0.0, SCORE_MAX) for a in arrays]
    eight_bit = [o.dtype == np.uint8 or o.dtype == bool for o in originals]
    if all(eight_bit):
        return [a * SCORE_MAX if o.dtype == bool else a for a, o in zip(arrays, originals)]
    if any(eight_bit):
        # 8-bit images fix the scale at 0-255, so each other image is read on it by itself:
        # a float fused image in [0, 1] next to uint8 sources is x255 (rule 3 per image).
        return [_on_eight_bit_scale(a, o, name) for a, o, name in zip(arrays, originals, names)]
    lo = min(float(a.min()) for a in arrays)
    hi = max(float(a.max()) for a in arrays)
    if lo >= 0.0 and hi <= 1.0:
        return [a * SCORE_MAX for a in arrays]
    if lo >= 0.0 and hi <= SCORE_MAX:
        return arrays
    if hi == lo:  # one constant value outside [0, 255], e.g. air at -1000 HU everywhere
        return [np.zeros_like(a) for a in arrays]
    scale = SCORE_MAX / (hi - lo)
    return [(a - lo) * scale for a in arrays]


def _on_eight_bit_scale(array: np.ndarray, original: np.ndarray, name: str) -> np.ndarray:
    """One image of a group that also holds 8-bit images, put on their 0-255 scale."""
    if original.dtype == np.uint8:
        return array
    if original.dtype == bool:
        return array * SCORE_MAX
    lo, hi = float(array.min()), float(array.max())
    if lo >= 0.0 and hi <= 1.0:
        return array * SCORE_MAX
    if lo >= 0.0 and hi <= SCORE_MAX:
        return array
    raise InputError(
        f"{name}: values {lo:g}..{hi:g} do not fit the 0-255 scale of the 8-bit images beside it; "
        "pass data_range=(lo, hi) or give all images on one scale"
    )


def prepare_single(image: object, data_range: tuple[float, float] | None) -> np.ndarray:
    """Validate one image and put it on the scoring scale."""
    return to_score_scale([image], ["image"], data_range)[0]


def grey_levels(image: np.ndarray) -> np.ndarray:
    """Quantise a 0-255 image to integer grey levels 0..255 (round to nearest)."""
    return np.clip(np.rint(image), 0, N_BINS - 1).astype(np.intp)


def histogram(image: np.ndarray) -> np.ndarray:
    """Normalised 256-bin grey-level histogram (probabilities summing to 1)."""
    counts = np.bincount(grey_levels(image).ravel(), minlength=N_BINS)
    return counts / counts.sum()


def joint_histogram(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Normalised 256x256 joint grey-level histogram; rows index ``first``."""
    codes = grey_levels(first).ravel() * N_BINS + grey_levels(second).ravel()
    counts = np.bincount(codes, minlength=N_BINS * N_BINS).reshape(N_BINS, N_BINS)
    return counts / counts.sum()


def entropy_of(probabilities: np.ndarray, base: float) -> float:
    """Shannon entropy ``-sum p log p`` of a probability array (zeros contribute nothing)."""
    p = probabilities[probabilities > 0]
    return float(-(p * np.log(p)).sum() / np.log(base))


def window_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """The ``size x size`` window, shrunk to the image where the image is smaller."""
    return min(size, shape[0]), min(size, shape[1])


def valid_window_mean(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Means over every window of ``shape`` lying fully inside the image (MATLAB ``'valid'``).

    ``uniform_filter`` centres an even window of size w on ``[i - w//2, i + w//2 - 1]``,
    so the window starting at row ``r`` is read at output row ``r + w//2``.
    """
    means = ndimage.uniform_filter(image, size=shape, mode="constant")
    rows = slice(shape[0] // 2, shape[0] // 2 + image.shape[0] - shape[0] + 1)
    cols = slice(shape[1] // 2, shape[1] // 2 + image.shape[1] - shape[1] + 1)
    return means[rows, cols]


def forward_differences(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward differences along rows and columns on the common ``(H-1) x (W-1)`` grid."""
    dx = image[:-1, 1:] - image[:-1, :-1]
    dy = image[1:, :-1] - image[:-1, :-1]
    return dx, dy
