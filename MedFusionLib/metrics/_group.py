"""One evaluation's images on the 0-255 scale, with the intermediate results metrics share.

Q0 and QW need the same windowed statistics, QE and Q^AB/F the same Sobel
gradients, SSIM and VIF the same filtered fused image for every source.  A
:class:`ScoredGroup` computes each of these once, on first use, so
:func:`~MedFusionLib.metrics.evaluate` pays for them once however many metrics
ask.  Every metric's public function builds a group for its own call.

Images are addressed by role: ``"F"`` (fused), ``0 .. K-1`` (sources), ``"T"`` (target).
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar, Union

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..validation import source_name
from ._common import VARIANCE_FLOOR, to_score_scale, valid_window_mean, window_shape

#: An image's role in the group: "F" (fused), a source index, or "T" (target).
Role = Union[str, int]
_T = TypeVar("_T")

#: Side of the sliding window of Q0, QW and QE (Wang & Bovik 2002 use 8x8).
QUALITY_WINDOW = 8


class ScoredGroup:
    """The fused image, its sources and an optional target, validated and on the 0-255 scale."""

    def __init__(self, fused: np.ndarray, sources: Sequence[np.ndarray], target: np.ndarray | None = None):
        self.fused = fused
        self.sources = list(sources)
        self.target = target
        self._cache: dict[tuple, object] = {}

    @classmethod
    def from_inputs(
        cls,
        fused: object,
        sources: Sequence[object] | None = None,
        target: object | None = None,
        data_range: tuple[float, float] | None = None,
    ) -> "ScoredGroup":
        """Validate user images (see :func:`~MedFusionLib.metrics._common.to_score_scale`) and group them.

        :param fused: the fused image.
        :param sources: the K >= 2 sources, or None for metrics of the fused image alone.
        :param target: optional target image.
        :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
        """
        sources = [] if sources is None else _check_sources(sources)
        names = ["fused image"] + [source_name(i) for i in range(len(sources))]
        images = [fused, *sources]
        if target is not None:
            names.append("target image")
            images.append(target)
        scaled = to_score_scale(images, names, data_range)
        return cls(scaled[0], scaled[1 : 1 + len(sources)], scaled[-1] if target is not None else None)

    # ------------------------------------------------------------------ plumbing

    def image(self, role: Role) -> np.ndarray:
        if role == "F":
            return self.fused
        if role == "T":
            if self.target is None:
                raise InputError("this metric needs a target image")
            return self.target
        return self.sources[role]

    def memo(self, key: tuple, compute: Callable[[], _T]) -> _T:
        """``compute()`` once per key for the life of the group."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]  # type: ignore[return-value]

    # ------------------------------------------------------------------ gradients

    def sobel(self, role: Role) -> tuple[np.ndarray, np.ndarray]:
        """Horizontal and vertical 3x3 Sobel responses; borders replicate the edge pixel.

        Replicating (not zero-padding, as MATLAB's ``conv2(..., 'same')`` does) keeps a
        constant image free of artificial border edges.
        """
        def compute():
            image = self.image(role)
            return ndimage.sobel(image, axis=1, mode="nearest"), ndimage.sobel(image, axis=0, mode="nearest")

        return self.memo(("sobel", role), compute)

    def edge(self, role: Role) -> np.ndarray:
        """Sobel gradient magnitude."""
        return self.memo(("edge", role), lambda: np.hypot(*self.sobel(role)))

    def orientation(self, role: Role) -> np.ndarray:
        """Edge orientation in [0, pi): an edge has no direction, so angles are taken modulo pi."""
        def compute():
            gx, gy = self.sobel(role)
            return np.mod(np.arctan2(gy, gx), np.pi)

        return self.memo(("orientation", role), compute)

    # ------------------------------------------------------------------ 8x8 window statistics

    def _window_input(self, role: Role, edges: bool) -> np.ndarray:
        return self.edge(role) if edges else self.image(role)

    def window_moments(self, role: Role, edges: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Mean and population variance over every valid 8x8 window (floored like ``VARIANCE_FLOOR``)."""
        def compute():
            x = self._window_input(role, edges)
            shape = window_shape(x.shape, QUALITY_WINDOW)
            mean = valid_window_mean(x, shape)
            variance = valid_window_mean(x * x, shape) - mean**2
            variance[variance < VARIANCE_FLOOR] = 0.0
            return mean, variance

        return self.memo(("window_moments", role, edges), compute)

    def quality_map(self, source: int, edges: bool = False) -> np.ndarray:
        """Wang & Bovik's Q(source, fused) for every valid 8x8 window, with ``qindex.m``'s zero rules.

        ``Q = 4 s_xy m_x m_y / ((s_x^2 + s_y^2)(m_x^2 + m_y^2))``; where both windows are
        constant Q = ``2 m_x m_y / (m_x^2 + m_y^2)`` (1 if both are also zero).
        """
        def compute():
            x = self._window_input(source, edges)
            y = self._window_input("F", edges)
            mean_x, var_x = self.window_moments(source, edges)
            mean_y, var_y = self.window_moments("F", edges)
            cov = valid_window_mean(x * y, window_shape(x.shape, QUALITY_WINDOW)) - mean_x * mean_y
            variance_sum = var_x + var_y
            mean_sq_sum = mean_x**2 + mean_y**2
            quality = np.ones_like(mean_x)
            flat = (variance_sum == 0) & (mean_sq_sum > 0)
            quality[flat] = 2.0 * mean_x[flat] * mean_y[flat] / mean_sq_sum[flat]
            general = (variance_sum > 0) & (mean_sq_sum > 0)
            quality[general] = (4.0 * cov * mean_x * mean_y)[general] / (variance_sum * mean_sq_sum)[general]
            # Windows with zero mean but variance (only possible off the 0-255 scale,
            # e.g. never for images, but for signed inputs): Q's luminance term is 0/0,
            # and the structure/contrast part 2 s_xy / (s_x^2 + s_y^2) is what remains.
            dark = (variance_sum > 0) & (mean_sq_sum == 0)
            quality[dark] = 2.0 * cov[dark] / variance_sum[dark]
            return np.clip(quality, -1.0, 1.0)

        return self.memo(("quality_map", source, edges), compute)

    # ------------------------------------------------------------------ SSIM statistics

    def gaussian_moments(self, role: Role) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian-weighted local mean and mean of squares (sigma 1.5, 11 taps), as in SSIM."""
        def compute():
            x = self.image(role)
            return gaussian_11(x), gaussian_11(x * x)

        return self.memo(("gaussian_moments", role), compute)


def gaussian_11(image: np.ndarray) -> np.ndarray:
    """SSIM's window: Gaussian sigma 1.5 truncated at 3.5 sigma (11 taps), ``'reflect'`` borders.

    These are exactly ``skimage.metrics.structural_similarity``'s settings with
    ``gaussian_weights=True``.
    """
    return ndimage.gaussian_filter(image, sigma=1.5, truncate=3.5, mode="reflect")


def _check_sources(sources: object) -> list:
    if isinstance(sources, (np.ndarray, str, bytes)) or not isinstance(sources, Sequence):
        raise InputError("sources: expected a list or tuple of source images")
    if len(sources) < 2:
        raise InputError(f"sources: at least 2 source images are needed, got {len(sources)}")
    return list(sources)
