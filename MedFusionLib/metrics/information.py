"""Information-theoretic metrics on 256-bin grey-level histograms of the 0-255 scale.

EN (entropy of the fused image), MI (mutual information with the sources), and,
against a target image, CE (the fusion literature's "cross entropy") and H
(conditional entropy of the target given the fused image).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._common import N_BINS, DataRange, entropy_of, histogram, joint_histogram, prepare_single
from ._group import ScoredGroup


def entropy(image: object, *, data_range: DataRange = None) -> float:
    """EN (ENT): Shannon entropy ``-sum_i p_i log2 p_i`` of the 256-bin grey-level histogram, in bits.

    Grey levels are the values of the 0-255 scale rounded to the nearest integer;
    for ``uint8`` images this equals ``skimage.measure.shannon_entropy(image, base=2)``
    (Shannon, Bell Syst. Tech. J. 27, 1948; Roberts et al., J. Appl. Remote Sens.
    2(1), 2008). A constant image has EN = 0. Higher means more information.
    Range [0, 8].

    :param image: 2D grey or RGB image.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _entropy(prepare_single(image, data_range))


def _entropy(image: np.ndarray) -> float:
    return entropy_of(histogram(image), base=2.0)


def _group_entropy(group: ScoredGroup) -> float:
    counts = group.histogram("F")
    return entropy_of(counts / counts.sum(), base=2.0)


def _mutual_information_scaled(first: np.ndarray, second: np.ndarray, base: float) -> float:
    return _mutual_information_of(joint_histogram(first, second), base)


def _mutual_information_of(joint: np.ndarray, base: float) -> float:
    """``H(X) + H(Y) - H(X, Y)`` from a normalised joint histogram (rows: X)."""
    h_first = entropy_of(joint.sum(axis=1), base)
    h_second = entropy_of(joint.sum(axis=0), base)
    # Clamp the ~1e-16 negative round-off of H(A) + H(B) - H(A,B) for independent images.
    return max(0.0, h_first + h_second - entropy_of(joint, base))


def mutual_information(
    first: object,
    second: object,
    *,
    base: float = np.e,
    data_range: DataRange = None,
) -> float:
    """Mutual information ``I(X;Y) = H(X) + H(Y) - H(X,Y)`` of two images' grey levels.

    From the 256x256 joint histogram; natural log by default (nats), ``base=2``
    for bits. Symmetric, ``I(X;X) = H(X)``, 0 for independent images.

    :param first: 2D grey or RGB image.
    :param second: 2D image of the same shape.
    :param base: logarithm base (``np.e`` for nats, 2 for bits).
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    group = ScoredGroup.from_inputs(first, target=second, data_range=data_range)
    return _mutual_information_scaled(group.fused, group.image("T"), base)


def fusion_mutual_information(
    fused: object,
    sources: Sequence[object],
    *,
    base: float = np.e,
    data_range: DataRange = None,
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
    return _fusion_mutual_information(ScoredGroup.from_inputs(fused, sources, data_range=data_range), base)


def _fusion_mutual_information(group: ScoredGroup, base: float = np.e) -> float:
    return float(sum(_mutual_information_of(_normalised(group.joint_histogram(k, "F")), base)
                     for k in range(len(group.sources))))


def _normalised(counts: np.ndarray) -> np.ndarray:
    return counts / counts.sum()


def cross_entropy(
    fused: object,
    target: object,
    *,
    data_range: DataRange = None,
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
    return _cross_entropy(ScoredGroup.from_inputs(fused, target=target, data_range=data_range))


def _cross_entropy(group: ScoredGroup) -> float:
    p_t = _smoothed_histogram(group.histogram("T"))
    p_f = _smoothed_histogram(group.histogram("F"))
    return float(max(0.0, np.sum(p_t * np.log2(p_t / p_f))))


def _smoothed_histogram(counts: np.ndarray) -> np.ndarray:
    smoothed = counts + 1.0
    return smoothed / smoothed.sum()


def conditional_entropy(
    fused: object,
    target: object,
    *,
    data_range: DataRange = None,
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
    return _conditional_entropy(ScoredGroup.from_inputs(fused, target=target, data_range=data_range))


def _conditional_entropy(group: ScoredGroup) -> float:
    joint = _normalised(group.joint_histogram("T", "F"))
    value = entropy_of(joint, 2.0) - entropy_of(joint.sum(axis=0), 2.0)
    return float(min(max(0.0, value), np.log2(N_BINS)))
