"""FMI: feature mutual information (Haghighat et al. 2011; the fast windowed form of 2014).

Two interchangeable implementations compute the per-window scores: compiled
kernels (numba, installed with the ``fast`` extra: ``pip install medfusion[fast]``;
see :mod:`MedFusionLib.metrics._kernels`) and a vectorised NumPy one used when
numba is missing. Both are tested against a loop-by-loop transcription of
Haghighat's ``fmi.m``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..validation import check_int
from ._common import DataRange
from ._group import ScoredGroup, compiled_kernels, in_row_bands, metrics_backend

#: Features of :func:`feature_mutual_information`.
FMI_FEATURES = ("gradient", "pixel", "dct")


def _fmi_feature(image: np.ndarray, feature: str) -> np.ndarray:
    if feature == "pixel":
        return image
    if feature == "gradient":
        # MATLAB's one-output gradient(I), used by fmi.m: the horizontal derivative
        # (central differences inside, one-sided at the borders).
        return np.gradient(image, axis=1) if image.shape[1] > 1 else np.zeros_like(image)
    from scipy.fft import dctn

    return dctn(image, norm="ortho")  # MATLAB dct2


def _fmi_windows(feature_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Every full window as a row, flattened column-major like MATLAB's ``aSub(:)``."""
    windows = np.lib.stride_tricks.sliding_window_view(feature_map, size)
    return windows.swapaxes(-1, -2).reshape(-1, size[0] * size[1])


def _fmi_window_scores(source: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """Fast-FMI of each window pair (rows of ``source`` and ``fused``), vectorised over windows.

    Haghighat's ``fmi.m`` reads each min-max normalised window as a distribution p
    with CDF P, and builds the joint distribution of the fused (rows) and source
    (columns) windows as ``J = kappa * D + (1 - kappa) * p_F p_S^T``, where D is the
    difference of the Frechet-Hoeffding bound copula ``B`` evaluated at the CDFs
    (``min(P_F, P_S)`` for positive Pearson correlation c, ``max(P_F + P_S - 1, 0)``
    for negative) and ``kappa = c / (sum(B - P_F P_S^T) / (sd_F sd_S))``.

    ``fmi.m`` forms the dense l x l matrices; here the same numbers come from one
    sort per window, which is ~15x faster: D is the coupling U -> (F^-1(U), S^-1(U))
    (or S^-1(1 - U)), so its mass lies on one interval per breakpoint of the merged
    sorted CDF values, and outside those cells J is a multiple of the product
    distribution, whose entropy is known in closed form. ``sum B`` is the integral
    of ``#{P_F >= t} * #{P_S >= t}`` (or ``#{1 - P_S <= t}``) over the same intervals.
    """
    n, length = source.shape
    # Two flat windows score 1 like identical ones: in fmi.m their uniform pdfs centre to the
    # same rounding residue (mean(ones(9,1)/9) is not exactly 1/9), so their correlation is +1
    # and the window scores 1 (to 1e-14).
    identical = np.all(source == fused, axis=1) | (_is_flat(source)[:, 0] & _is_flat(fused)[:, 0])

    def to_pdf(x: np.ndarray) -> np.ndarray:
        lo = x.min(axis=1, keepdims=True)
        span = x.max(axis=1, keepdims=True) - lo
        unit = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 1.0)
        return unit / unit.sum(axis=1, keepdims=True)

    def entropy_rows(p: np.ndarray) -> np.ndarray:  # nats
        return -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=1)

    p_s, p_f = to_pdf(source), to_pdf(fused)
    cdf_s = np.cumsum(p_s, axis=1)
    cdf_f = np.cumsum(p_f, axis=1)

    # A flat window's pdf is exactly uniform: it has no correlation with any window
    # (Pearson's 0/0 read as 0). Its centred values are set to exactly 0, as the mean of
    # the rounded 1/l entries need not come out as 1/l and would leave two flat windows
    # a correlation of +-1 made of rounding alone.
    centred_s = np.where(_is_flat(source), 0.0, p_s - p_s.mean(axis=1, keepdims=True))
    centred_f = np.where(_is_flat(fused), 0.0, p_f - p_f.mean(axis=1, keepdims=True))
    cross = np.sum(centred_s * centred_f, axis=1)
    norm = np.sqrt(np.sum(centred_s**2, axis=1) * np.sum(centred_f**2, axis=1))
    correlation = np.where(cross != 0, cross / np.where(norm > 0, norm, 1.0), 0.0)
    positive = correlation >= 0

    index = np.arange(1, length + 1, dtype=np.float64)
    sd_s = np.sqrt(np.maximum(p_s @ index**2 - (p_s @ index) ** 2, 0.0))
    sd_f = np.sqrt(np.maximum(p_f @ index**2 - (p_f @ index) ** 2, 0.0))

    # Merge the fused CDF values with the source's (or 1 - the source's) on one axis.
    other = np.where(positive[:, None], cdf_s, 1.0 - cdf_s)
    values = np.concatenate([cdf_f, other], axis=1)
    order = np.argsort(values, axis=1, kind="stable")
    breakpoints = np.take_along_axis(values, order, axis=1)
    widths = np.diff(breakpoints, axis=1, prepend=0.0)
    from_fused = order < length
    fused_before = np.cumsum(from_fused, axis=1) - from_fused
    other_before = np.arange(2 * length)[None, :] - fused_before

    # sum_ij B(i, j) as an integral over the merged intervals.
    fused_above = length - fused_before
    other_side = np.where(positive[:, None], length - other_before, other_before)
    bound_sum = np.sum(widths * fused_above * other_side, axis=1)
    spread = (bound_sum - cdf_f.sum(axis=1) * cdf_s.sum(axis=1)) / np.where(sd_f * sd_s > 0, sd_f * sd_s, 1.0)
    usable = (sd_s > 0) & (sd_f > 0) & (correlation != 0) & (spread != 0)
    kappa = np.where(usable, correlation / np.where(spread != 0, spread, 1.0), 0.0)
    rest = 1.0 - kappa

    # Cells of the coupling's mass: row = fused index, column = source index.
    rows = np.minimum(fused_before, length - 1)
    cols = np.where(positive[:, None], other_before, length - other_before).clip(0, length - 1)
    product = np.take_along_axis(p_f, rows, axis=1) * np.take_along_axis(p_s, cols, axis=1)
    joint = kappa[:, None] * widths + rest[:, None] * product

    def x_log_abs(x: np.ndarray) -> np.ndarray:
        magnitude = np.abs(x)
        return x * np.log(np.where(magnitude > 0, magnitude, 1.0))

    h_s, h_f = entropy_rows(p_s), entropy_rows(p_f)
    # sum over all cells of (1 - kappa) p_F p_S log|(1 - kappa) p_F p_S| ...
    product_part = rest * (np.log(np.where(rest != 0, np.abs(rest), 1.0)) - h_f - h_s)
    # ... with the coupling's cells swapped for their true joint values (fmi.m takes
    # real(-j .* log2(j)), which for a negative j is -j * log2|j|).
    joint_log = product_part + np.sum(x_log_abs(joint) - x_log_abs(rest[:, None] * product), axis=1)
    information = h_s + h_f + joint_log  # H_S + H_F - H_J, nats
    total = h_s + h_f
    scores = np.where((information != 0) & (total > 0), 2.0 * information / np.where(total > 0, total, 1.0), 0.0)
    return np.where(identical, 1.0, scores)


def _is_flat(windows: np.ndarray) -> np.ndarray:
    """Rows (windows) whose values are all equal, as an ``(n, 1)`` mask."""
    return (windows.max(axis=1) == windows.min(axis=1))[:, None]


def feature_mutual_information(
    fused: object,
    sources: Sequence[object],
    *,
    feature: str = "gradient",
    window: int = 3,
    data_range: DataRange = None,
) -> float:
    """FMI: feature mutual information, the fast windowed form of Haghighat et al.

    Feature maps (default: MATLAB's ``gradient``, the horizontal derivative;
    ``"pixel"`` for raw intensities; ``"dct"`` for the orthonormal 2D DCT) are cut into
    every full ``window x window`` window (3x3 default). Each window is min-max
    normalised and read as a probability distribution; the joint distribution of a
    source window and the fused window comes from their CDFs and Pearson
    correlation through the Frechet-Hoeffding bounds, and the window scores the
    normalised mutual information ``2 I / (H_S + H_F)``. FMI is the mean over windows
    and sources (Haghighat, Aghagolzadeh & Seyedarabi, Comput. Electr. Eng. 37(5),
    2011; Haghighat & Razian, "Fast-FMI", IEEE AICT 2014; their ``fmi.m``).
    Identical windows score 1, and so do two flat windows (what ``fmi.m``'s arithmetic
    gives them: their centred pdfs are equal rounding residues, correlated +1); a flat
    window against one that varies is uncorrelated (Pearson's 0/0 read as 0); windows whose
    normalised MI is undefined score 0. Checked against ``fmi.m`` (mhaghighat/fmi, commit
    2268df2) under Octave (``Testing/reference_metrics``).
    Higher is better. Range [0, 1] (nominally; ``fmi.m``'s approximation of the joint
    entropy can push single windows slightly outside).

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape.
    :param feature: ``"gradient"``, ``"pixel"`` or ``"dct"``.
    :param window: side of the sliding window (shrunk to the image if larger).
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    if feature not in FMI_FEATURES:
        raise ValueError(f"feature: expected one of {FMI_FEATURES}, got {feature!r}")
    window = check_int(window, "window")
    return _feature_mutual_information(ScoredGroup.from_inputs(fused, sources, data_range=data_range), feature, window)


# --------------------------------------------------------------------------- compiled backend

#: Windows per block of the compiled pipeline (at least one row of windows): its buffers stay in
#: a core's own cache. On a 256 x 256 pair, one row per block (254 windows, ~250 KiB of buffers)
#: ran two threads 1.65-1.8x faster than one, four rows per block 1.5-1.6x.
_BLOCK_WINDOWS = 256


def fmi_backend() -> str:
    """Which implementation computes FMI's windows: ``"numba"`` (compiled) or ``"numpy"``."""
    return metrics_backend()


def _compiled_window_sums(kernels, features: tuple[np.ndarray, ...], size: tuple[int, int]) -> np.ndarray:
    """Sum of window scores per source with the compiled kernels, bands of window rows in parallel.

    ``features`` = (sources..., fused). Each band is one compiled call
    (``_kernels.fmi_band``), which works through blocks of ``rows`` window rows with
    its own buffers (see :func:`_block_buffers` and
    :func:`~MedFusionLib.metrics._group.in_row_bands`).
    """
    out_rows = features[0].shape[0] - size[0] + 1
    out_cols = features[0].shape[1] - size[1] + 1
    rows = max(1, _BLOCK_WINDOWS // out_cols)
    # Made here, once: on a first call, each band's thread would make (and load) its own.
    band = kernels.fmi_band_kernel(size[0] * size[1])

    def band_sums(first: int, end: int, buffers: tuple[np.ndarray, ...]) -> np.ndarray:
        sums = np.zeros(len(features) - 1)
        band(features, first, end, size[0], size[1], rows, *buffers, sums)
        return sums

    return sum(in_row_bands(band_sums, out_rows, kernels,
                            lambda: _block_buffers(len(features), size[0] * size[1], rows * out_cols)))


def _block_buffers(count: int, length: int, windows: int) -> tuple[np.ndarray, ...]:
    """Scratch of one block of ``windows`` windows.

    pdf, CDF, log pdf, stats (see ``_kernels.fmi_windows`` and ``fmi_window_sums``);
    joint, log joint, base, total, same; the logarithm's scratch. The arrays whose
    logarithms are taken start as ones: the logarithm runs over whole arrays (a last,
    partial block sets their tails back to ones first).
    """
    return (
        np.empty((count, length, windows)),
        np.empty((count, length, windows)),
        np.ones((count, length, windows)),
        np.empty((count, 6, windows)),
        np.empty((count - 1, windows, 2 * length + 1)),
        np.ones((count - 1, windows, 2 * length + 1)),
        np.empty((count - 1, windows)),
        np.empty((count - 1, windows)),
        np.empty((count - 1, windows), dtype=bool),
        np.empty((2, max(count, 2 * (count - 1)) * length * windows + (count - 1) * windows), dtype=np.int64),
    )


def _feature_mutual_information(
    group: ScoredGroup, feature: str = "gradient", window: int = 3, backend: str | None = None
) -> float:
    f = group.fused
    size = (min(window, f.shape[0]), min(window, f.shape[1]))
    fused_feature = _fmi_feature(f, feature)
    source_features = [_fmi_feature(s, feature) for s in group.sources]
    windows = (f.shape[0] - size[0] + 1) * (f.shape[1] - size[1] + 1)
    kernels = group.kernels if backend is None else (compiled_kernels() if backend == "numba" else None)
    if kernels is not None:
        features = tuple(np.ascontiguousarray(x) for x in (*source_features, fused_feature))
        return float(np.mean(_compiled_window_sums(kernels, features, size) / windows))
    fused_windows = _fmi_windows(fused_feature, size)
    per_source = []
    chunk = 4096  # windows per step: keeps the (chunk, 2 l) temporaries in cache
    for feature_map in source_features:
        source_windows = _fmi_windows(feature_map, size)
        scores = [
            _fmi_window_scores(source_windows[i : i + chunk], fused_windows[i : i + chunk])
            for i in range(0, windows, chunk)
        ]
        per_source.append(np.concatenate(scores).mean())
    return float(np.mean(per_source))
