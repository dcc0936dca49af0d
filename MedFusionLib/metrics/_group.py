"""One evaluation's images on the 0-255 scale, with the intermediate results metrics share.

SSIM and QW need the same Gaussian moments of every image, QW and QE the same
QW of the images, the image statistics (MEAN, STD, SF, GRAD, EOG) one pass over the
fused image, the information metrics the same grey levels and histograms.  A
:class:`ScoredGroup` computes each of these once, on first use, so
:func:`~MedFusionLib.metrics.evaluate` pays for them once however many metrics ask; it
also tells the group which metrics it will ask for (:attr:`ScoredGroup.requested`), so
that the first of two metrics sharing a pass can compute the other's part in it.  Every
metric's public function builds a group for its own call; nothing is kept from one group
to the next.

Images are addressed by role: ``"F"`` (fused), ``0 .. K-1`` (sources), ``"T"`` (target).

Two interchangeable backends compute the windowed and filtered metrics: compiled
kernels (:mod:`MedFusionLib.metrics._kernels`, numba, the ``fast`` extra) and plain
NumPy/SciPy, used when numba is missing or when a group is made with
``backend="numpy"``. They agree to rounding; the tests check every metric on both.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Callable, Sequence, TypeVar, Union

import numpy as np
from scipy import ndimage

from ..optional import optional_module
from ..errors import InputError
from ..validation import source_name
from ._common import N_BINS, VARIANCE_FLOOR, grey_levels, to_score_scale, valid_window_mean, window_shape

#: An image's role in the group: "F" (fused), a source index, or "T" (target).
Role = Union[str, int]
_T = TypeVar("_T")

#: Side of the sliding window of Q0, QW and QE (Wang & Bovik 2002 use 8x8).
QUALITY_WINDOW = 8
#: Names accepted for ``backend``: None picks numba when it is installed.
BACKENDS = ("numba", "numpy")

def compiled_kernels() -> ModuleType | None:
    """The numba-compiled kernels (:mod:`._kernels`), or None when numba is not installed (imported on first use)."""
    return optional_module("MedFusionLib.metrics._kernels")


_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
#: Fewest rows of work worth a thread of their own (below, thread hand-over costs more than it saves).
_ROWS_PER_THREAD = 32


def in_row_bands(
    work: Callable[..., _T],
    rows: int,
    kernels: ModuleType | None,
    scratch: Callable[[], object] | None = None,
) -> list[_T]:
    """``work(first, end)`` over consecutive bands of ``range(rows)``, one band per thread.

    The compiled kernels release the GIL (and NumPy does in its array loops), so the
    bands run in parallel on as many threads as numba is set to use
    (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``); the NumPy backend, and work too
    small to share, run in one band on the calling thread. The pool of threads is
    made on first use and kept; nothing computed is kept.

    :param scratch: if given, ``work(first, end, scratch())`` with each band's scratch
        made here, on the calling thread: memory a worker thread allocates comes from
        its own allocator arena, which hands it back to the system when freed, so the
        next call would pay for fresh pages again.
    """
    global _POOL, _POOL_SIZE
    parts = 1 if kernels is None else max(1, min(kernels.thread_count(), rows // _ROWS_PER_THREAD))
    edges = [rows * i // parts for i in range(parts + 1)]
    extra = [() if scratch is None else (scratch(),) for _ in range(parts)]
    if parts == 1:
        return [work(0, rows, *extra[0])]
    if _POOL is None or _POOL_SIZE < parts:  # grow the pool if numba's setting grew
        _POOL, _POOL_SIZE = ThreadPoolExecutor(parts, thread_name_prefix="medfusion-metrics"), parts
    return list(_POOL.map(lambda i: work(edges[i], edges[i + 1], *extra[i]), range(parts)))


def metrics_backend() -> str:
    """Which implementation computes the windowed and filtered metrics by default: ``"numba"`` or ``"numpy"``."""
    return "numba" if compiled_kernels() is not None else "numpy"


class ScoredGroup:
    """The fused image, its sources and an optional target, validated and on the 0-255 scale.

    :param backend: ``"numba"``, ``"numpy"`` or None (numba when installed). Asking
        for numba without it installed falls back to NumPy, as :func:`metrics_backend` tells.
    """

    def __init__(
        self,
        fused: np.ndarray,
        sources: Sequence[np.ndarray],
        target: np.ndarray | None = None,
        backend: str | None = None,
    ):
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS} or None, got {backend!r}")
        self.fused = fused
        self.sources = list(sources)
        self.target = target
        #: The compiled kernels this group uses, or None for the NumPy path.
        self.kernels = compiled_kernels() if backend in (None, "numba") else None
        #: Keys of the metrics this group will be asked for (set by :func:`~MedFusionLib.metrics.evaluate`;
        #: empty for one metric's own call): see :meth:`wants`.
        self.requested: frozenset[str] = frozenset()
        self._cache: dict[tuple, object] = {}

    @property
    def backend(self) -> str:
        """``"numba"`` or ``"numpy"``: the implementation this group's metrics use."""
        return "numba" if self.kernels is not None else "numpy"

    @classmethod
    def from_inputs(
        cls,
        fused: object,
        sources: Sequence[object] | None = None,
        target: object | None = None,
        data_range: tuple[float, float] | None = None,
        backend: str | None = None,
    ) -> "ScoredGroup":
        """Validate user images (see :func:`~MedFusionLib.metrics._common.to_score_scale`) and group them.

        :param fused: the fused image.
        :param sources: the K >= 2 sources, or None for metrics of the fused image alone.
        :param target: optional target image.
        :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
        :param backend: ``"numba"``, ``"numpy"`` or None (see :class:`ScoredGroup`).
        """
        sources = [] if sources is None else _check_sources(sources)
        names = ["fused image"] + [source_name(i) for i in range(len(sources))]
        images = [fused, *sources]
        if target is not None:
            names.append("target image")
            images.append(target)
        scaled = to_score_scale(images, names, data_range)
        return cls(scaled[0], scaled[1 : 1 + len(sources)], scaled[-1] if target is not None else None, backend)

    # ------------------------------------------------------------------ plumbing

    def image(self, role: Role) -> np.ndarray:
        if role == "F":
            return self.fused
        if role == "T":
            if self.target is None:
                raise InputError("this metric needs a target image")
            return self.target
        return self.sources[role]

    def wants(self, *keys: str) -> bool:
        """Whether one of these metrics will be asked of this group: a pass it shares can compute its part too."""
        return not self.requested.isdisjoint(keys)

    def memo(self, key: tuple, compute: Callable[[], _T]) -> _T:
        """``compute()`` once per key for the life of the group."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]  # type: ignore[return-value]

    def with_fused_last(self) -> tuple[np.ndarray, ...]:
        """``(S_0, ..., S_{K-1}, F)`` as C-contiguous arrays: the layout every kernel takes."""
        return tuple(np.ascontiguousarray(x) for x in (*self.sources, self.fused))

    # ------------------------------------------------------------------ grey levels

    def grey_levels(self, role: Role) -> np.ndarray:
        """The image quantised to integer grey levels 0..255 (see :func:`~._common.grey_levels`)."""
        return self.memo(("grey_levels", role), lambda: grey_levels(self.image(role)))

    def histogram(self, role: Role) -> np.ndarray:
        """Grey-level counts (256 bins, ``int64``)."""
        def compute():
            if self.kernels is not None:  # counted straight from the image, no level image
                return self.kernels.grey_histogram(np.ascontiguousarray(self.image(role)), N_BINS)
            return np.bincount(self.grey_levels(role).ravel(), minlength=N_BINS)

        return self.memo(("histogram", role), compute)

    def joint_histogram(self, first: Role, second: Role) -> np.ndarray:
        """Joint grey-level counts, 256 x 256 (``int64``), rows indexing ``first``.

        Not kept: no two metrics share a pair, and each table is half a MiB.
        """
        if self.kernels is not None:
            return self.kernels.grey_joint_histogram(
                np.ascontiguousarray(self.image(first)), np.ascontiguousarray(self.image(second)), N_BINS)
        codes = self.grey_levels(first).ravel() * N_BINS + self.grey_levels(second).ravel()
        return np.bincount(codes, minlength=N_BINS * N_BINS).reshape(N_BINS, N_BINS)

    # ------------------------------------------------------------------ gradients

    def window_moments(self, role: Role) -> tuple[np.ndarray, np.ndarray]:
        """Mean and population variance over every valid 8x8 window (floored like ``VARIANCE_FLOOR``)."""
        def compute():
            x = self.image(role)
            shape = window_shape(x.shape, QUALITY_WINDOW)
            mean = valid_window_mean(x, shape)
            variance = valid_window_mean(x * x, shape) - mean**2
            variance[variance < VARIANCE_FLOOR] = 0.0
            return mean, variance

        return self.memo(("window_moments", role), compute)

    def quality_map(self, source: int) -> np.ndarray:
        """Wang & Bovik's Q(source, fused) for every valid 8x8 window, with ``qindex.m``'s zero rules.

        ``Q = 4 s_xy m_x m_y / ((s_x^2 + s_y^2)(m_x^2 + m_y^2))``; where both windows are
        constant Q = ``2 m_x m_y / (m_x^2 + m_y^2)`` (1 if both are also zero).
        """
        def compute():
            x = self.image(source)
            y = self.image("F")
            mean_x, var_x = self.window_moments(source)
            mean_y, var_y = self.window_moments("F")
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

        return self.memo(("quality_map", source), compute)


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
