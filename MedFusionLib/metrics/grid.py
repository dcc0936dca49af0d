"""A diagnostic of block artefacts: how much stronger the jumps between pixels are on a regular grid.

Block-based fusion (the DBM of paper 000 fuses overlapping n x n blocks at stride n/2) can leave
a faint grid where blocks meet: the jumps between neighbouring pixels are larger on the grid
lines than elsewhere. This is not a fusion-quality metric of the literature, so it is not in
:data:`~MedFusionLib.metrics.METRICS`; the block-size study and the quality benchmark report it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError


def block_grid_index(image: np.ndarray, periods: Sequence[int] = (4, 8)) -> float:
    """The block-grid index: the largest ratio of the mean jump on a grid of boundaries to the mean jump.

    For every boundary between two neighbouring columns (at position j, between columns j and
    j + 1) and two neighbouring rows, the mean absolute difference across it is taken over the
    image. For each period p and phase k, the boundaries at positions j = k (mod p), rows and
    columns together, give a mean; the index is the largest of these means divided by the mean
    over all boundaries:

    .. math:: G = \\max_{p, k} \\frac{\\overline{|\\Delta|}_{j \\equiv k \\ (p)}}{\\overline{|\\Delta|}}

    1.0 means no preferred grid; a block artefact of period p raises it (1.3 is a visible grid).
    Upsampled images (PET, SPECT) also score above 1: compare fused images with their sources.
    A constant image (no jumps at all) scores 1.0.

    :param image: a 2D grey image (not modified).
    :param periods: the grid periods looked for (the stride of the blocks: n / 2, and n).
    :returns: the index, >= 1 up to rounding.
    """
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2:
        raise InputError(f"image: expected a 2D grey image, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InputError("image: contains NaN or infinite values")
    periods = [int(p) for p in periods]
    if not periods or any(p < 2 for p in periods):
        raise InputError(f"periods: expected grid periods >= 2, got {periods!r}")
    across_columns = np.abs(np.diff(array, axis=1)).mean(axis=0)  # one value per column boundary
    across_rows = np.abs(np.diff(array, axis=0)).mean(axis=1)  # one value per row boundary
    everything = np.concatenate([across_columns, across_rows]).mean() if array.size > 1 else 0.0
    if everything == 0.0:
        return 1.0
    worst = 1.0
    for period in periods:
        for phase in range(period):
            on_grid = np.concatenate([across_columns[phase::period], across_rows[phase::period]])
            if on_grid.size:
                worst = max(worst, float(on_grid.mean() / everything))
    return worst
