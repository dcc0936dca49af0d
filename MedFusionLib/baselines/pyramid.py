"""Laplacian-pyramid fusion (Burt & Adelson), the speed reference of the benchmarks.

Each input is decomposed into a Laplacian pyramid: band-pass detail images
``L_i = G_i - EXPAND(G_{i+1})`` plus the coarsest Gaussian level (the base),
where ``G_{i+1} = REDUCE(G_i)``.  Details are fused by max-absolute selection
across the K inputs (the strongest edge wins), the base is averaged, and the
fused pyramid is collapsed.  Collapsing uses the very same ``EXPAND`` as the
decomposition, so an un-fused pyramid reconstructs its image exactly (up to
floating-point rounding) whatever the image size.

REDUCE and EXPAND use the separable 5-tap binomial kernel ``[1, 4, 6, 4, 1] / 16``
(Burt & Adelson's generating kernel with a = 0.375), applied with
``scipy.ndimage.convolve1d``:

- REDUCE blurs (``'reflect'`` borders), then keeps every second row and
  column, so a side of n pixels becomes ``ceil(n / 2)``;
- EXPAND inserts zeros to the exact finer shape (so odd sizes work) and blurs
  with twice the kernel per axis, which restores the mean brightness lost to
  the zeros.  Its borders are ``'mirror'`` so that a constant image expands
  to the same constant (see :func:`_expand`); a constant image therefore has
  all-zero detail levels.

The number of levels is clipped to ``floor(log2(min(H, W)))``
(:func:`max_pyramid_levels`), so a 1x1 image gets none and is just averaged.

References:

- P. J. Burt and E. H. Adelson, "The Laplacian pyramid as a compact image
  code", *IEEE Trans. Communications* 31(4):532-540, 1983.
- P. J. Burt and E. H. Adelson, "Merging images through pattern
  decomposition", *Proc. SPIE* 575:173-181, 1985.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.ndimage import convolve1d

from ..contributions import combine_scales, intensity_floor
from .pixel import FusionBaseline, check_non_negative_int, one_hot, select_max_abs

#: Burt-Adelson 5-tap binomial generating kernel.
BINOMIAL_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
# EXPAND interpolates from 1 sample in 2 per axis, so the kernel is doubled per
# axis (4x in 2D) to keep a constant image constant.
_EXPAND_KERNEL = 2.0 * BINOMIAL_KERNEL


def max_pyramid_levels(shape: Sequence[int]) -> int:
    """The largest number of pyramid levels an image of this shape allows.

    One level is allowed per halving of the smaller side that still starts from
    at least 2 pixels, i.e. ``floor(log2(min(H, W)))``: 0 for a 1-pixel-wide
    image, 1 for 2x3, 5 for 37x53, 8 for 256x256.

    :param shape: image shape; the last two entries are (H, W).
    """
    return int(min(shape[-2:])).bit_length() - 1


def _reduce(image: np.ndarray) -> np.ndarray:
    """Blur with the binomial kernel and keep every second row and column (last two axes)."""
    # Filtering one axis, subsampling it, then filtering the other gives exactly
    # blur-then-subsample (the passes act on different axes) while the second
    # pass filters half as much.  The column (contiguous) pass goes first and
    # its subsampled result is made contiguous, because scipy's filters are
    # markedly slower on strided input and the strided row pass then only sees
    # half the data.
    columns = convolve1d(image, BINOMIAL_KERNEL, axis=-1, mode="reflect")
    columns = np.ascontiguousarray(columns[..., ::2])
    rows = convolve1d(columns, BINOMIAL_KERNEL, axis=-2, mode="reflect")
    return np.ascontiguousarray(rows[..., ::2, :])


def _expand(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Zero-insert ``image`` up to ``shape`` (last two axes) and blur with twice the kernel.

    :param image: coarse level, ``(..., ceil(H/2), ceil(W/2))``.
    :param shape: the finer level's shape ``(..., H, W)``.
    """
    height, width = shape[-2:]
    lead = image.shape[:-2]
    # The border mode is 'mirror' (whole-sample symmetric, ``c b | a b c``),
    # not 'reflect': the zero-inserted signal has a real sample at index 0
    # and alternates real/zero, and only mirroring keeps that alternation
    # across the border.  With 'reflect' the edge sample is duplicated, so
    # EXPAND of a constant image is off by up to 3/8 at the borders and every
    # detail level carries a spurious border ridge.  With 'mirror' a constant
    # expands to the same constant for odd and even sizes alike.
    # Zero insertion and blur are done one axis at a time: the columns that the
    # second insertion adds are all zero, so the first pass needs to touch
    # only the coarse columns; the result is identical to 2D zero insertion
    # followed by the separable blur.  Each pass filters in place (scipy's
    # 1D filters buffer every line, as its own multi-axis filters rely on),
    # which avoids a fresh output array per pass.
    tall = np.zeros(lead + (height, image.shape[-1]))
    tall[..., ::2, :] = image
    convolve1d(tall, _EXPAND_KERNEL, axis=-2, mode="mirror", output=tall)
    full = np.zeros(lead + (height, width))
    full[..., ::2] = tall
    convolve1d(full, _EXPAND_KERNEL, axis=-1, mode="mirror", output=full)
    return full


def laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Decompose an image (or a stack of images) into a Laplacian pyramid.

    :param image: ``(H, W)`` image, or ``(..., H, W)`` stack decomposed image by image.
    :param levels: number of detail levels wanted; clipped to
        :func:`max_pyramid_levels` so tiny images work (0 gives just the image).
    :return: ``[L_0, ..., L_{n-1}, base]``: n detail levels from finest to
        coarsest, then the coarsest Gaussian level; all new ``float64`` arrays.
    """
    levels = check_non_negative_int(levels, "levels")
    current = np.array(image, dtype=np.float64)  # a copy: the caller's array is left alone
    pyramid: list[np.ndarray] = []
    for _ in range(min(levels, max_pyramid_levels(current.shape))):
        coarse = _reduce(current)
        pyramid.append(current - _expand(coarse, current.shape))
        current = coarse
    pyramid.append(current)
    return pyramid


def reconstruct_laplacian_pyramid(pyramid: Sequence[np.ndarray]) -> np.ndarray:
    """Collapse a Laplacian pyramid made by :func:`laplacian_pyramid` (inverse of it).

    :param pyramid: ``[L_0, ..., L_{n-1}, base]`` as returned by :func:`laplacian_pyramid`.
    :return: the reconstructed image, a new ``float64`` array of ``L_0``'s shape.
    """
    image = np.array(pyramid[-1], dtype=np.float64)
    for detail in reversed(pyramid[:-1]):
        image = _expand(image, detail.shape)
        image += detail
    return image


class LaplacianPyramidFusion(FusionBaseline):
    """Laplacian-pyramid fusion: max-abs selection of details, averaged base.

    :param levels: number of detail levels (default 4).  Clipped per call to
        ``floor(log2(min(H, W)))`` (see :func:`max_pyramid_levels`), so a 1x1 or
        1-pixel-wide image gets 0 levels, which is plain averaging.
    """

    name = "laplacian"

    def __init__(self, levels: int = 4) -> None:
        self.levels = check_non_negative_int(levels, "levels")

    def _params(self) -> dict[str, object]:
        return {"levels": self.levels}

    def _fuse_stack(self, stack: np.ndarray, contributions: bool = False) -> Any:
        # The K inputs are filtered together as one (K, H, W) stack, and each
        # detail level is fused as soon as it is made, so only the fused
        # details are kept rather than K whole pyramids.
        current = stack
        fused_details: list[np.ndarray] = []
        selections: list[tuple[np.ndarray, np.ndarray]] = []  # (one-hot winners, fused detail) per level
        for _ in range(min(self.levels, max_pyramid_levels(stack.shape))):
            coarse = _reduce(current)
            detail = current - _expand(coarse, current.shape)
            if contributions:
                best, winner = select_max_abs(detail, return_index=True)
                selections.append((one_hot(winner, stack.shape[0]), best[None]))
            else:
                best = select_max_abs(detail)
            fused_details.append(best)
            current = coarse
        fused = current.mean(axis=0)
        for detail in reversed(fused_details):
            fused = _expand(fused, detail.shape)
            fused += detail
        if not contributions:
            return fused
        base_weights = np.full(current.shape, 1.0 / stack.shape[0])
        return fused, combine_scales(selections, base_weights, _expand, floor=intensity_floor(stack),
                                     size=stack.shape[-2:])


def gaussian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """``[G_0, ..., G_levels]`` with ``G_0`` the image and ``G_{i+1} = REDUCE(G_i)``.

    The levels have the shapes of :func:`laplacian_pyramid`'s, so a Gaussian pyramid
    of a blending mask weights a Laplacian pyramid level by level (Burt & Adelson's
    multiresolution spline).

    :param image: ``(H, W)`` image or ``(..., H, W)`` stack.
    :param levels: number of reductions; clipped to :func:`max_pyramid_levels`.
    """
    levels = check_non_negative_int(levels, "levels")
    current = np.array(image, dtype=np.float64)
    pyramid = [current]
    for _ in range(min(levels, max_pyramid_levels(current.shape))):
        current = _reduce(current)
        pyramid.append(current)
    return pyramid
