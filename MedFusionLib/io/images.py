"""The image container every reader returns: :class:`LoadedImage` (pixels + physical geometry), and
:class:`DicomSeries`, one series of a DICOM folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

PathLike = Union[str, os.PathLike]

# Pixel types SimpleITK converts from numpy; others are converted losslessly first.
_LOSSLESS_PROMOTION = {np.dtype(bool): np.dtype(np.uint8), np.dtype(np.float16): np.dtype(np.float32)}


@dataclass
class LoadedImage:
    """An image or volume with its physical geometry, as read by :func:`read_image`.

    :param array: pixels; ``(H, W)`` grey, ``(H, W, 3)`` RGB (``is_color``) or
        ``(Z, Y, X)`` volume, in the index order of ``sitk.GetArrayFromImage``.
    :param spacing: pixel spacing per axis in SimpleITK (x, y[, z]) order, mm.
    :param origin: physical position of the first pixel, SimpleITK order, mm.
    :param direction: row-major direction cosine matrix, flattened, SimpleITK order.
    :param path: the file or DICOM directory it was read from, ``None`` if built in memory.
    :param is_color: ``True`` for a 2D RGB image (last array axis holds the channels).
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    path: str | None = None
    is_color: bool = False

    @property
    def dimension(self) -> int:
        """Number of spatial axes (2 or 3); the colour axis does not count."""
        return self.array.ndim - (1 if self.is_color else 0)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Array shape without the colour axis (numpy order: ``(H, W)`` or ``(Z, Y, X)``)."""
        return tuple(self.array.shape[: self.dimension])

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        spacing: Sequence[float] | None = None,
        origin: Sequence[float] | None = None,
        direction: Sequence[float] | None = None,
        is_color: bool = False,
        path: str | None = None,
    ) -> "LoadedImage":
        """Wrap an array, with unit spacing, zero origin and identity direction by default.

        :param array: the pixels (see the class docstring for the layouts).
        :param spacing: spacing in SimpleITK order; default all ones.
        :param origin: origin in SimpleITK order; default all zeros.
        :param direction: flattened direction matrix; default identity.
        :param is_color: whether the last axis holds RGB channels.
        :param path: optional path to remember.
        """
        array = np.asarray(array)
        dim = array.ndim - (1 if is_color else 0)
        if dim not in (2, 3):
            raise InputError(f"image: expected a 2D or 3D array, got shape {array.shape}")
        spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * dim
        origin = tuple(float(o) for o in origin) if origin is not None else (0.0,) * dim
        direction = (
            tuple(float(d) for d in direction)
            if direction is not None
            else tuple(float(v) for v in np.eye(dim).ravel())
        )
        return cls(array, spacing, origin, direction, path, is_color)

    @classmethod
    def from_sitk(cls, image: sitk.Image, name: str = "image") -> "LoadedImage":
        """The pixels and geometry of a ``SimpleITK.Image`` (copied), checked as :func:`read_image` checks files.

        :param image: a 2D or 3D grey image, or a 2D RGB/RGBA one.
        :param name: how messages name it.
        """
        return _to_loaded(image, name)

    def to_sitk(self) -> sitk.Image:
        """Return a new ``SimpleITK.Image`` with these pixels and this geometry."""
        dim = self.dimension
        if len(self.spacing) != dim or len(self.origin) != dim or len(self.direction) != dim * dim:
            raise InputError(
                f"{self.path or 'image'}: geometry does not fit a {dim}D image "
                f"(spacing {self.spacing}, origin {self.origin}, direction {self.direction})"
            )
        array = self.array
        promoted = _LOSSLESS_PROMOTION.get(array.dtype)
        if promoted is not None:
            array = array.astype(promoted)
        try:
            image = sitk.GetImageFromArray(array, isVector=self.is_color)
            image.SetSpacing(tuple(float(s) for s in self.spacing))
            image.SetOrigin(tuple(float(o) for o in self.origin))
            image.SetDirection(tuple(float(d) for d in self.direction))
        except (RuntimeError, TypeError, ValueError) as exc:
            raise InputError(
                f"{self.path or 'image'}: cannot build a SimpleITK image: {_itk_message(exc)}"
            ) from None
        return image

    def geometry_matches(self, other: "LoadedImage", tol: float = 1e-5) -> bool:
        """Whether ``other`` lies on the same grid: shape, spacing, origin and direction.

        :param other: the image to compare with (its colour-ness does not matter).
        :param tol: relative and absolute tolerance for spacing and origin (mm)
            and direction cosines; the default absorbs the float32 rounding of NIfTI headers.
        """
        if self.spatial_shape != other.spatial_shape:
            return False
        return all(
            len(a) == len(b) and np.allclose(a, b, rtol=tol, atol=tol)
            for a, b in (
                (self.spacing, other.spacing),
                (self.origin, other.origin),
                (self.direction, other.direction),
            )
        )


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found in a directory by :func:`list_dicom_series`.

    :param series_id: the SeriesInstanceUID, to pass as ``read_image(..., series_id=)``.
    :param files: its files, in the slice order GDCM sorted them into.
    :param modality: DICOM Modality (0008,0060), ``""`` if absent.
    :param description: SeriesDescription (0008,103E), ``""`` if absent.
    """

    series_id: str
    files: tuple[str, ...]
    modality: str = ""
    description: str = ""

    def summary(self) -> str:
        """One-line description used in error messages."""
        described = repr(self.description) if self.description else ""
        parts = (self.modality, described, f"{len(self.files)} files")
        details = ", ".join(part for part in parts if part)
        return f"{self.series_id} ({details})"


def _check_header(name: str, dimension: int, components: int, size: Sequence[int]) -> None:
    """Refuse image layouts MedFusion cannot handle, from the header alone."""
    if dimension > 3:
        raise InputError(
            f"{name}: {dimension}D images (e.g. time series) are not supported, size {tuple(size)}; "
            "extract one 3D volume first"
        )
    if dimension < 2:
        raise InputError(f"{name}: {dimension}D images are not supported, size {tuple(size)}")
    if components > 1:
        single_slice = dimension == 3 and size[2] == 1
        if dimension == 3 and not single_slice:
            raise InputError(
                f"{name}: vector volumes ({components} components per voxel) are not supported; "
                "only 2D RGB/RGBA images may have several components"
            )
        if components not in (3, 4):
            raise InputError(
                f"{name}: images with {components} components per pixel are not supported "
                "(expected grey, RGB or RGBA)"
            )
    if any(int(s) == 0 for s in size):
        raise InputError(f"{name}: the image is empty (size {tuple(size)})")


def _to_loaded(image: sitk.Image, name: str) -> LoadedImage:
    """Validate a SimpleITK image and convert it into a :class:`LoadedImage`."""
    size = image.GetSize()
    components = image.GetNumberOfComponentsPerPixel()
    _check_header(name, image.GetDimension(), components, size)
    if components > 1 and image.GetDimension() == 3:
        # A one-slice colour volume (e.g. an RGB DICOM secondary capture) is a 2D colour image.
        image = image[:, :, 0]
    if "complex" in image.GetPixelIDTypeAsString():
        raise InputError(f"{name}: complex-valued images are not supported")
    array = sitk.GetArrayFromImage(image)  # a copy: never a view into ITK memory
    is_color = components > 1
    if components == 4:
        array = np.ascontiguousarray(array[..., :3])  # drop alpha; not composited
    return LoadedImage(
        array=array,
        spacing=tuple(image.GetSpacing()),
        origin=tuple(image.GetOrigin()),
        direction=tuple(image.GetDirection()),
        path=name,
        is_color=is_color,
    )


def _itk_message(exc: BaseException) -> str:
    """Reduce a multi-line SimpleITK/ITK exception text to its informative line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    for index, line in enumerate(lines):
        if "ERROR:" in line:
            text = line.split("ERROR:", 1)[1].strip()
            # Drop ITK's "ClassName(0x55d3...): " object prefix.
            head, sep, rest = text.partition("): ")
            if sep and "(0x" in head:
                text = rest
            # Details after a trailing colon are on the last line (e.g. NRRD's reader).
            if text.endswith(":") and index + 1 < len(lines):
                text = f"{text} {lines[-1]}"
            break
    else:
        text = lines[-1]
    return text if len(text) <= 300 else text[:297] + "..."
