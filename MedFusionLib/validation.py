"""Checks shared by every entry point that takes images.

They never modify their inputs: arrays are converted to new ``float64`` arrays.
Each failure raises :class:`~MedFusionLib.errors.InputError` naming the input.
"""

from __future__ import annotations

from numbers import Integral
from typing import Sequence

import numpy as np

from .errors import InputError

#: ITU-R BT.601 luma weights, used to score and fuse colour images on luminance.
BT601_LUMA = np.array([0.299, 0.587, 0.114])


def is_integer(value: object) -> bool:
    """An integer of any kind (Python or NumPy), but not ``bool``: ``True`` as a size is always a bug."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_int(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value`` as ``int`` if it is an integer >= ``minimum``, else raise :class:`InputError`.

    :param value: the parameter value.
    :param name: the parameter name for the error message.
    :param minimum: the smallest value accepted.
    """
    if not is_integer(value) or value < minimum:
        wanted = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise InputError(f"{name}: expected {wanted}, got {value!r}")
    return int(value)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luminance ``Y = 0.299 R + 0.587 G + 0.114 B`` of an ``(H, W, 3|4)`` image (alpha ignored)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., :3] @ BT601_LUMA


def as_grey_image(image: object, name: str = "image") -> np.ndarray:
    """Return ``image`` as a new 2D ``float64`` array, or raise :class:`InputError`.

    Accepted: 2D grey arrays of any integer, bool or float dtype, and colour
    arrays of shape ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA), which are
    reduced to BT.601 luminance.

    :param image: array-like image.
    :param name: how the image is called in error messages (e.g. ``"source B"``).
    """
    array = np.asarray(image)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == bool
    ):
        raise InputError(f"{name}: expected a numeric image array, got dtype {array.dtype}")
    if np.iscomplexobj(array):
        raise InputError(f"{name}: complex-valued images are not supported")
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = luminance(array)
    elif array.ndim != 2:
        raise InputError(
            f"{name}: expected a 2D grey image or an (H, W, 3|4) colour image, got shape {array.shape}"
        )
    if array.size == 0:
        raise InputError(f"{name}: the image is empty (shape {array.shape})")
    result = np.array(array, dtype=np.float64, copy=True)
    if not np.all(np.isfinite(result)):
        raise InputError(f"{name}: contains NaN or infinite values")
    return result


def as_grey_group(
    images: Sequence[object],
    names: Sequence[str] | None = None,
    min_count: int = 2,
) -> list[np.ndarray]:
    """Validate a group of co-registered images and return them as 2D ``float64`` arrays.

    :param images: the images (2D grey or RGB/RGBA), all of the same height and width.
    :param names: names for error messages; default ``"source A"``, ``"source B"``, ...
    :param min_count: the smallest number of images accepted.
    """
    if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
        raise InputError("images: expected a list or tuple of images")
    if len(images) < min_count:
        raise InputError(f"images: at least {min_count} images are needed, got {len(images)}")
    if names is None:
        names = [source_name(i) for i in range(len(images))]
    arrays = [as_grey_image(image, name) for image, name in zip(images, names)]
    reference_shape = arrays[0].shape
    for array, name in zip(arrays[1:], names[1:]):
        if array.shape != reference_shape:
            raise InputError(
                f"{name}: shape {array.shape} differs from {names[0]} shape {reference_shape}; "
                "register and resample the images onto one grid first"
            )
    return arrays


def source_name(index: int) -> str:
    """``"source A"``, ``"source B"``, ... (``"source 27"`` past Z)."""
    return f"source {chr(ord('A') + index)}" if index < 26 else f"source {index + 1}"
