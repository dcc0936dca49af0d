"""Pixel-wise fusion baselines and the interface shared by every baseline.

Every baseline is a small class with a ``name`` attribute and a
``fuse(images)`` method (also reachable by calling the object), so it can be
used exactly like a learned model in comparisons and benchmarks.  ``fuse``
accepts any number K >= 2 of co-registered 2D images (grey or RGB/RGBA, which
are fused on BT.601 luminance), never modifies them, and returns a new
``float64`` array of the same shape in the intensity units of the inputs.

The two pixel rules here are the textbook references of the fusion literature,
e.g. in the survey of

- A. P. James and B. V. Dasarathy, "Medical image fusion: A survey of the
  state of the art", *Information Fusion* 19:4-19, 2014.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..validation import as_grey_group


class FusionBaseline:
    """Base class of the classical fusion methods: validation, ``__call__`` and ``repr``.

    Subclasses set :attr:`name` and implement :meth:`_fuse_stack`, which gets
    the validated inputs as one ``(K, H, W)`` ``float64`` stack that it may
    overwrite (it is a private copy), and returns the fused ``(H, W)`` image --
    or, called with ``contributions=True``, the fused image and its ``(K, H, W)``
    contribution map.
    """

    #: Registry name of the method (the key of :data:`MedFusionLib.baselines.BASELINES`).
    name: str = ""

    def fuse(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Fuse co-registered images into one.

        :param images: K >= 2 images of one height and width, 2D grey or
            ``(H, W, 3|4)`` colour (fused on luminance); never modified.
        :return: a new ``float64`` ``(H, W)`` array in the inputs' intensity units.
        :raises InputError: fewer than two images, mismatched shapes, non-finite values.
        """
        # as_grey_group returns fresh float64 copies, so stacking them (one
        # more copy, but one contiguous block for vectorised filtering) can
        # never touch the caller's arrays.
        stack = np.stack(as_grey_group(images))
        return self._fuse_stack(stack)

    def fuse_with_contributions(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Fuse as :meth:`fuse` does, and say how much each input supplied at every pixel.

        :param images: see :meth:`fuse`.
        :return: the fused image and a ``(K, H, W)`` ``float64`` map in [0, 1] summing to 1 over
            the inputs, derived from the method's own rule (see
            :mod:`MedFusionLib.contributions`).
        :raises InputError: as :meth:`fuse`, or the method has no contribution rule.
        """
        stack = np.stack(as_grey_group(images))
        try:
            fused, contributions = self._fuse_stack(stack, contributions=True)
        except TypeError:  # a subclass written before contribution maps: _fuse_stack(stack) only
            raise InputError(f"contributions: the {self.name or type(self).__name__} method has no contribution map")
        return fused, contributions

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Alias of :meth:`fuse`, so a baseline can stand where a model callable is expected.

        :param images: see :meth:`fuse`.
        """
        return self.fuse(images)

    def _fuse_stack(self, stack: np.ndarray, contributions: bool = False) -> Any:
        raise NotImplementedError

    def _params(self) -> dict[str, object]:
        """Constructor parameters, for :meth:`__repr__`; subclasses with parameters override."""
        return {}

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self._params().items())
        return f"{type(self).__name__}({params})"


def check_non_negative_int(value: object, name: str) -> int:
    """Return ``value`` as ``int`` if it is a non-negative integer (``bool`` excluded), else raise.

    :param value: the parameter value.
    :param name: the parameter name for the error message.
    :raises InputError: ``value`` is not an integer >= 0.
    """
    # bool is an Integral, but levels=True is certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise InputError(f"{name}: expected a non-negative integer, got {value!r}")
    return int(value)


def check_positive_float(value: object, name: str) -> float:
    """Return ``value`` as ``float`` if it is a finite number > 0, else raise.

    :param value: the parameter value.
    :param name: the parameter name for the error message.
    :raises InputError: ``value`` is not a finite positive real number.
    """
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not np.isfinite(number) or number <= 0:
        raise InputError(f"{name}: expected a finite number > 0, got {value!r}")
    return number


class AverageFusion(FusionBaseline):
    """Pixel-wise mean of the inputs: the simplest fusion rule and the usual lower bound."""

    name = "average"

    def _fuse_stack(self, stack: np.ndarray, contributions: bool = False) -> Any:
        fused = stack.mean(axis=0)
        return (fused, np.full(stack.shape, 1.0 / stack.shape[0])) if contributions else fused


class MaximumFusion(FusionBaseline):
    """Pixel-wise maximum of the inputs: keeps the brightest structure of each modality."""

    name = "maximum"

    def _fuse_stack(self, stack: np.ndarray, contributions: bool = False) -> Any:
        if not contributions:
            return stack.max(axis=0)
        winner = stack.argmax(axis=0)  # ties: the earliest input, as everywhere in MedFusion
        return np.take_along_axis(stack, winner[None], axis=0)[0], one_hot(winner, stack.shape[0])


def one_hot(index: np.ndarray, count: int) -> np.ndarray:
    """``(count, ...)`` ``float64``: 1 where ``index`` names the input, else 0 (a selection rule's weights).

    :param index: integer array of input numbers.
    :param count: K.
    """
    return (np.arange(count).reshape((count,) + (1,) * index.ndim) == index).astype(np.float64)


def select_max_abs(stack: np.ndarray, return_index: bool = False) -> Any:
    """Per position, the value of largest magnitude along axis 0 (the "max-abs" detail rule).

    Used for pyramid and wavelet detail coefficients, where a larger magnitude
    means a stronger edge or texture.  Exact magnitude ties (in practice equal
    values) go to the earliest input.

    :param stack: ``(K, ...)`` array of K coefficient arrays.
    :param return_index: also return which input won, an ``int`` array of shape ``stack.shape[1:]``.
    :return: a new array of shape ``stack.shape[1:]`` (and the winners' indices).
    """
    # A running comparison over the K inputs (a loop over K, not over pixels)
    # reads each array once contiguously; argmax/take_along_axis over axis 0
    # was about 3x slower for K = 2..4.
    best = stack[0].copy()
    best_magnitude = np.abs(best)
    winner = np.zeros(best.shape, dtype=np.intp) if return_index else None
    for number, candidate in enumerate(stack[1:], start=1):
        magnitude = np.abs(candidate)
        larger = magnitude > best_magnitude  # strict: ties keep the earlier input
        np.copyto(best, candidate, where=larger)
        np.copyto(best_magnitude, magnitude, where=larger)
        if winner is not None:
            winner[larger] = number
    return (best, winner) if return_index else best
