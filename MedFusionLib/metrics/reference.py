"""Full-reference metrics of a fused image against a target image T (the papers' supervised setting).

RMSE, PSNR, SSIM and REL. All on the 0-255 scoring scale.  The papers' RMSE in
paper 002 is on a [0, 1] scale (RMSE 0.37 <-> PSNR 8.6 dB): divide ours by 255 to compare.

These are scikit-image's formulas, and the NumPy backend calls scikit-image for them
(``skimage.metrics.mean_squared_error``, ``peak_signal_noise_ratio``,
``normalized_root_mse(normalization="euclidean")`` -- which is REL -- and
``structural_similarity``); the compiled backend computes the same sums in one pass over
the images (``_kernels.error_sums``, ``gaussian_structure_sums``), which the tests check against it.
"""

from __future__ import annotations

import numpy as np
from skimage import metrics as skimage_metrics

from ._common import SCORE_MAX, DataRange
from ._group import ScoredGroup
from .structural import ssim_between


def _target_group(fused: object, target: object, data_range: DataRange) -> ScoredGroup:
    return ScoredGroup.from_inputs(fused, target=target, data_range=data_range)


def _error_sums(group: ScoredGroup) -> tuple[float, float]:
    """``sum (F - T)^2`` and ``sum T^2``, shared by RMSE, PSNR and REL.

    The compiled kernel sums without forming any image; ``einsum`` at least without
    the squared one, and without BLAS, whose thread start-up costs more than this sum.
    """
    def compute():
        target = group.image("T")
        if group.kernels is not None:
            return group.kernels.error_sums(np.ascontiguousarray(group.fused), np.ascontiguousarray(target))
        difference = group.fused - target
        return float(np.einsum("ij,ij->", difference, difference)), float(np.einsum("ij,ij->", target, target))

    return group.memo(("error_sums",), compute)


def _mean_squared_error(group: ScoredGroup) -> float:
    if group.kernels is None:
        return float(skimage_metrics.mean_squared_error(group.image("T"), group.fused))
    return _error_sums(group)[0] / group.fused.size


def _root_mean_squared_error(group: ScoredGroup) -> float:
    return float(np.sqrt(_mean_squared_error(group)))


def _peak_signal_to_noise_ratio(group: ScoredGroup) -> float:
    mse = _mean_squared_error(group)
    if mse == 0.0:
        return float("inf")  # scikit-image divides by zero here
    if group.kernels is None:
        return float(skimage_metrics.peak_signal_noise_ratio(group.image("T"), group.fused, data_range=SCORE_MAX))
    return float(10.0 * np.log10(SCORE_MAX**2 / mse))


def _structural_similarity(group: ScoredGroup) -> float:
    return ssim_between(group, "T", "F")


def _relative_error(group: ScoredGroup) -> float:
    if group.kernels is None:
        target = group.image("T")
        if not np.any(target):  # scikit-image divides by zero here
            return 0.0 if not np.any(group.fused) else float("inf")
        return float(skimage_metrics.normalized_root_mse(target, group.fused, normalization="euclidean"))
    error_sum, target_sum = _error_sums(group)
    error = float(np.sqrt(error_sum))
    norm = float(np.sqrt(target_sum))
    if norm == 0.0:
        return 0.0 if error == 0.0 else float("inf")
    return error / norm


def root_mean_squared_error(
    fused: object, target: object, *, data_range: DataRange = None
) -> float:
    """RMSE: ``sqrt((1/MN) sum (F - T)^2)`` on the 0-255 scale. Lower is better. Range [0, 255].

    :param fused: the fused 2D image.
    :param target: the target image, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _root_mean_squared_error(_target_group(fused, target, data_range))


def peak_signal_to_noise_ratio(
    fused: object, target: object, *, data_range: DataRange = None
) -> float:
    """PSNR: ``10 log10(255^2 / MSE)`` in dB; ``inf`` when F equals T exactly.

    Equals ``skimage.metrics.peak_signal_noise_ratio(T, F, data_range=255)`` where
    that is finite. Higher is better. Range [0, inf] (0 dB needs every pixel off by 255).

    :param fused: the fused 2D image.
    :param target: the target image, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _peak_signal_to_noise_ratio(_target_group(fused, target, data_range))


def structural_similarity(
    fused: object, target: object, *, data_range: DataRange = None
) -> float:
    """SSIM of the fused image against the target (Wang et al., IEEE TIP 13(4), 2004).

    ``skimage.metrics.structural_similarity``'s computation with the paper's settings: 11x11
    Gaussian window, sigma = 1.5, K = (0.01, 0.03), L = 255, population statistics.
    Images smaller than the window use one global window. Higher is better.
    Range [-1, 1], 1 when F = T.

    :param fused: the fused 2D image.
    :param target: the target image, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _structural_similarity(_target_group(fused, target, data_range))


def relative_error(
    fused: object, target: object, *, data_range: DataRange = None
) -> float:
    """REL: relative error ``||F - T||_2 / ||T||_2`` (Frobenius norms on the 0-255 scale).

    The papers print REL without a definition; MedFusion uses the standard relative
    L2 error (e.g. Golub & Van Loan, Matrix Computations, 4th ed., section 2.2.3).
    A zero target gives 0 when F is also zero and ``inf`` otherwise.
    Lower is better. Range [0, inf).

    :param fused: the fused 2D image.
    :param target: the target image, same shape.
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    """
    return _relative_error(_target_group(fused, target, data_range))
