"""Information-theoretic metrics on 256-bin grey-level histograms of the 0-255 scale.

EN (entropy of the fused image), MI (mutual information with the sources), and,
against a target image, CE (the fusion literature's "cross entropy") and H
(conditional entropy of the target given the fused image).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._common import (
    N_BINS,
    entropy_of,
    histogram,
    joint_histogram,
    prepare_fused_and_sources,
    prepare_pair,
    prepare_single,
)


def entropy(image: object, *, data_range: tuple[float, float] | None = None) -> float:
    """EN (ENT): Shannon entropy ``-sum_i p_i log2 p_i`` of the 256-bin grey-level histogram, in bits.

    Grey levels are the values of the 0-255 scale rounded to the nearest integer;
    for ``uint8`` images this equals ``skimage.measure.shannon_entropy(image, base=2)``
    (Shannon, Bell Syst. Tech. J. 27, 1948; Roberts et al., J. Appl. Remote Sens.
    2(1), 2008). A constant image has EN = 0. Higher means more information.
    Range [0, 8].

    :param image: 2D grey or RGB image.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return entropy_of(histogram(prepare_single(image, data_range)), base=2.0)


def _mutual_information_scaled(first: np.ndarray, second: np.ndarray, base: float) -> float:
    joint = joint_histogram(first, second)
    h_first = entropy_of(joint.sum(axis=1), base)
    h_second = entropy_of(joint.sum(axis=0), base)
    # Clamp the ~1e-16 negative round-off of H(A) + H(B) - H(A,B) for independent images.
    return max(0.0, h_first + h_second - entropy_of(joint, base))


def mutual_information(
    first: object,
    second: object,
    *,
    base: float = np.e,
    data_range: tuple[float, float] | None = None,
) -> float:
    """Mutual information ``I(X;Y) = H(X) + H(Y) - H(X,Y)`` of two images' grey levels.

    From the 256x256 joint histogram; natural log by default (nats), ``base=2``
    for bits. Symmetric, ``I(X;X) = H(X)``, 0 for independent images.

    :param first: 2D grey or RGB image.
    :param second: 2D image of the same shape.
    :param base: logarithm base (``np.e`` for nats, 2 for bits).
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    a, b = prepare_pair(first, second, ("first image", "second image"), data_range)
    return _mutual_information_scaled(a, b, base)


def fusion_mutual_information(
    fused: object,
    sources: Sequence[object],
    *,
    base: float = np.e,
    data_range: tuple[float, float] | None = None,
) -> float:
    """MI: ``sum_k I(S_k; F)``, the information the fused image shares with each source.

    For two sources ``MI = I(A;F) + I(B;F)`` (Qu, Zhang & Yan, Electron. Lett.
    38(7), 2002). Natural log by default, ``base=2`` for bits. Higher is better.
    Range [0, K * log(256)] for K sources.

    :param fused: the fused 2D image.
    :param sources: the K >= 2 source images, same shape as ``fused``.
    :param base: logarithm base (``np.e`` for nats, 2 for bits).
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    f, srcs = prepare_fused_and_sources(fused, sources, data_range)
    return float(sum(_mutual_information_scaled(s, f, base) for s in srcs))


def cross_entropy(
    fused: object,
    target: object,
    *,
    data_range: tuple[float, float] | None = None,
) -> float:
    """CE ("Entropy" in the papers' tables): ``sum_i p_T(i) log2(p_T(i) / p_F(i))``, in bits.

    The fusion literature calls this relative entropy of the target histogram ``p_T``
    against the fused histogram ``p_F`` "cross entropy" (Bulanon et al., Biosyst.
    Eng. 103(1), 2009; VIFB, Zhang et al. 2020). VIFB skips bins that are empty in
    either histogram, which can make the sum negative; here both 256-bin histograms
    get add-one (Laplace) smoothing instead, so CE is finite, >= 0, and 0 exactly
    when the two histograms are equal. Lower is better. Range [0, inf).

    :param fused: the fused 2D image.
    :param target: the target (reference) image, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    f, t = prepare_pair(fused, target, ("fused image", "target image"), data_range)
    p_t = _smoothed_histogram(t)
    p_f = _smoothed_histogram(f)
    return float(max(0.0, np.sum(p_t * np.log2(p_t / p_f))))


def _smoothed_histogram(image: np.ndarray) -> np.ndarray:
    counts = histogram(image) * image.size + 1.0
    return counts / counts.sum()


def conditional_entropy(
    fused: object,
    target: object,
    *,
    data_range: tuple[float, float] | None = None,
) -> float:
    """H: conditional entropy ``H(T | F) = H(T, F) - H(F)`` of the target given the fused image, in bits.

    The papers print an "H" column without a definition (paper 002's Table 1 prints
    the same numbers as ENT). Against a target, MedFusion reads it as the target
    information that the fused image leaves unexplained (Cover & Thomas, Elements
    of Information Theory, 2nd ed., eq. 2.10): 0 when every fused grey level
    determines the target grey level (e.g. F = T), at most H(T). Lower is better.
    Range [0, 8].

    :param fused: the fused 2D image.
    :param target: the target (reference) image, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    f, t = prepare_pair(fused, target, ("fused image", "target image"), data_range)
    joint = joint_histogram(t, f)
    value = entropy_of(joint, 2.0) - entropy_of(joint.sum(axis=0), 2.0)
    return float(min(max(0.0, value), np.log2(N_BINS)))


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
    identical = np.all(source == fused, axis=1)

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

    centred_s = p_s - p_s.mean(axis=1, keepdims=True)
    centred_f = p_f - p_f.mean(axis=1, keepdims=True)
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


def feature_mutual_information(
    fused: object,
    sources: Sequence[object],
    *,
    feature: str = "gradient",
    window: int = 3,
    data_range: tuple[float, float] | None = None,
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
    Identical windows score 1; windows whose normalised MI is undefined score 0.
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
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window: expected a positive integer, got {window!r}")
    f, srcs = prepare_fused_and_sources(fused, sources, data_range)
    size = (min(window, f.shape[0]), min(window, f.shape[1]))
    fused_windows = _fmi_windows(_fmi_feature(f, feature), size)
    per_source = []
    chunk = 8192  # windows per step: bounds the (chunk, l+1, l+1) temporaries to a few MB
    for s in srcs:
        source_windows = _fmi_windows(_fmi_feature(s, feature), size)
        scores = [
            _fmi_window_scores(source_windows[i : i + chunk], fused_windows[i : i + chunk])
            for i in range(0, len(fused_windows), chunk)
        ]
        per_source.append(np.concatenate(scores).mean())
    return float(np.mean(per_source))
