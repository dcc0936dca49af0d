"""Reading and writing images and volumes through SimpleITK, safely.

Reading (:func:`read_image`) accepts 2D PNG/TIFF/JPEG/BMP images (grey, RGB,
RGBA with the alpha dropped), 3D NIfTI, NRRD and MetaImage volumes, a single
DICOM file and a DICOM series given as a directory. Every failure, including
the ones SimpleITK reports as a multi-line ``RuntimeError``, becomes one
:class:`~MedFusionLib.errors.InputError` line naming the path. Input files are
only ever opened for reading.

SimpleITK reads some damaged files *without* any error (a truncated NIfTI or
BMP is padded, a truncated JPEG is filled in, a multi-page TIFF cut short
silently loses its last slices), so :func:`read_image` checks the structure of
those formats itself before trusting the pixels.

Writing (:func:`write_image`, :func:`atomic_output`) is atomic: the file is
written into a private temporary folder next to the destination, flushed to
disk, then renamed into place, so a crash or an error never leaves a partial
file at the destination (SimpleITK itself leaves a broken file behind when a
write fails). An output never replaces an input (``protected_paths``), nor an
existing file unless ``overwrite=True``.

Float to integer rule (formats that only store some integer types: PNG holds
``uint8``/``uint16``, JPEG and BMP ``uint8``): with ``cast="clip"`` (the
default) values are rounded to the nearest integer (halves to even, as
:func:`numpy.rint`) and clipped to the target range, so nothing wraps around;
``cast="rescale"`` maps the data range linearly onto the full target range;
``cast="error"`` refuses any conversion that would change a value. NaN or
infinite values are always refused for integer targets. See :func:`cast_array`.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import re
import shutil
import struct
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError, MedFusionError

PathLike = Union[str, os.PathLike]

__all__ = [
    "LoadedImage",
    "DicomSeries",
    "read_image",
    "write_image",
    "atomic_output",
    "check_output_path",
    "remove_stale_temporaries",
    "list_dicom_series",
    "cast_array",
    "CAST_RULES",
]

#: Accepted values of the ``cast`` argument of :func:`write_image` and :func:`cast_array`.
CAST_RULES = ("clip", "rescale", "error")

# Integer-only 2D formats and the pixel types ITK's writers accept for them.
_RESTRICTED_DTYPES: dict[str, tuple[np.dtype, ...]] = {
    ".png": (np.dtype(np.uint8), np.dtype(np.uint16)),
    ".jpg": (np.dtype(np.uint8),),
    ".jpeg": (np.dtype(np.uint8),),
    ".bmp": (np.dtype(np.uint8),),
    ".tif": tuple(
        np.dtype(t)
        for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32)
    ),
}
_RESTRICTED_DTYPES[".tiff"] = _RESTRICTED_DTYPES[".tif"]
# Formats whose ITK writers only take 2D images (ITK's PNG writer silently
# writes the first slice of a volume, so it must be refused here).
_TWO_D_ONLY = {".png", ".jpg", ".jpeg", ".bmp"}
# Pixel types SimpleITK converts from numpy; others are converted losslessly first.
_LOSSLESS_PROMOTION = {np.dtype(bool): np.dtype(np.uint8), np.dtype(np.float16): np.dtype(np.float32)}


# --------------------------------------------------------------------------- container


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


# --------------------------------------------------------------------------- reading


def read_image(path: PathLike, series_id: str | None = None) -> LoadedImage:
    """Read a 2D image, a 3D volume, a DICOM file or a DICOM series directory.

    Grey images give ``(H, W)`` arrays, RGB and RGBA images ``(H, W, 3)``
    arrays (alpha dropped, not composited), volumes ``(Z, Y, X)`` arrays. A
    single DICOM file is a volume with one slice, as SimpleITK reads it. The
    file is never modified.

    :param path: an image file, or a directory holding a DICOM series.
    :param series_id: which series to read when the directory holds several
        (see :func:`list_dicom_series`); only valid for directories.
    :raises InputError: missing path, directory without DICOM series, several
        series and no ``series_id``, unreadable, truncated or corrupt file,
        4D image, vector volume, empty image.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise InputError(f"{name}: no such file or directory")
    if os.path.isdir(name):
        image = _read_dicom_directory(name, series_id)
    else:
        if series_id is not None:
            raise InputError(f"{name}: series_id is only used with a DICOM directory, not a file")
        image = _read_file(name)
    return _to_loaded(image, name)


def list_dicom_series(directory: PathLike) -> list[DicomSeries]:
    """List the DICOM series directly inside ``directory`` (subfolders are not searched).

    :param directory: the folder to scan.
    :raises InputError: if ``directory`` does not exist or is not a folder.
    """
    name = os.fspath(directory)
    if not os.path.isdir(name):
        raise InputError(f"{name}: not a directory" if os.path.exists(name) else f"{name}: no such directory")
    # GDCM prints "No Series were found" warnings to stderr; an empty result says it already.
    with _itk_warnings_off():
        try:
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(name)
        except RuntimeError as exc:
            raise InputError(f"{name}: cannot scan for DICOM series: {_itk_message(exc)}") from None
        series = []
        for uid in ids:
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(name, uid))
            series.append(DicomSeries(uid, files, *_dicom_labels(files[0] if files else None)))
    return series


def _dicom_labels(first_file: str | None) -> tuple[str, str]:
    """Modality and series description of a series, read from its first file's header."""
    if first_file is None:
        return "", ""
    reader = sitk.ImageFileReader()
    reader.SetFileName(first_file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return "", ""  # labels are only cosmetic; the real read reports real problems
    labels = []
    for key in ("0008|0060", "0008|103e"):
        labels.append(reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else "")
    return labels[0], labels[1]


def _read_dicom_directory(name: str, series_id: str | None) -> sitk.Image:
    series = list_dicom_series(name)
    if not series:
        raise InputError(
            f"{name}: is a directory but holds no DICOM series (subfolders are not searched); "
            "give an image file or a folder of DICOM slices"
        )
    if series_id is None:
        if len(series) > 1:
            listing = "; ".join(s.summary() for s in series)
            raise InputError(
                f"{name}: holds {len(series)} DICOM series, pass series_id= one of: {listing}"
            )
        chosen = series[0]
    else:
        matches = [s for s in series if s.series_id == series_id]
        if not matches:
            listing = "; ".join(s.summary() for s in series)
            raise InputError(f"{name}: no DICOM series {series_id!r}; available: {listing}")
        chosen = matches[0]
    _refuse_unreadable_slices(name, series, chosen)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    reader.MetaDataDictionaryArrayUpdateOn()  # keep each slice's position for the check below
    try:
        # ITK's own spacing warning goes to stderr; ours below is a Python warning.
        with _itk_warnings_off():
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(
            f"{name}: cannot read DICOM series {chosen.series_id}: {_itk_message(exc)}"
        ) from None
    # ITK still builds a volume when slices are missing or unevenly spaced; the
    # geometry is then only approximate, which the caller must hear about. (ITK's
    # "ITK_non_uniform_sampling_deviation" tag cannot serve: it is set even for
    # 1e-14 mm rounding differences and its value is unreadable from Python.)
    deviation = _slice_spacing_deviation(reader, image, len(chosen.files))
    if deviation is not None and deviation > _SLICE_SPACING_REL_TOL:
        warnings.warn(
            f"{name}: DICOM series {chosen.series_id} has missing or unevenly spaced slices "
            f"(spacing varies by {deviation:.1%}); its slice spacing is approximate",
            stacklevel=3,
        )
    return image


def _refuse_unreadable_slices(name: str, series: Sequence[DicomSeries], chosen: DicomSeries) -> None:
    """Refuse a series with a slice file that GDCM could not take (truncated or corrupt).

    GDCM leaves a file it cannot parse out of the series without a word, so the volume would
    silently miss that slice. A file is counted as such a slice when no series took it yet its
    header names the chosen series' UID (a copy cut short loses its pixel data, not its header).
    Other DICOM objects in the folder (dose reports, presentation states, other series) are left alone.
    """
    listed = {os.path.realpath(f) for s in series for f in s.files}
    uid = chosen.series_id.encode("ascii", "ignore")
    for entry in sorted(os.listdir(name)):
        path = os.path.join(name, entry)
        if not uid or not os.path.isfile(path) or os.path.realpath(path) in listed:
            continue
        try:
            with open(path, "rb") as handle:
                head = handle.read(65536)
        except OSError as exc:
            raise InputError(f"{name}: cannot read {entry} ({exc.strerror})") from None
        if head[128:132] == b"DICM" and uid in head:
            raise InputError(
                f"{name}: the DICOM file {entry} of series {chosen.series_id} cannot be read (truncated or "
                "corrupt), so the volume would miss a slice; replace or remove that file"
            )


#: Relative variation of the DICOM slice spacing above which :func:`read_image` warns.
_SLICE_SPACING_REL_TOL = 1e-3


def _slice_spacing_deviation(reader: sitk.ImageSeriesReader, image: sitk.Image, count: int) -> float | None:
    """Largest relative departure of the slice gaps from their median, ``None`` if unknown."""
    if count < 3 or image.GetDimension() != 3:
        return None
    direction = image.GetDirection()
    normal = np.array([direction[2], direction[5], direction[8]])
    heights = []
    for index in range(count):
        if not reader.HasMetaDataKey(index, "0020|0032"):
            return None
        try:
            position = [float(v) for v in reader.GetMetaData(index, "0020|0032").split("\\")]
        except ValueError:
            return None
        if len(position) != 3:
            return None
        heights.append(float(np.dot(position, normal)))
    gaps = np.abs(np.diff(heights))
    typical = float(np.median(gaps))
    if typical == 0.0:
        return math.inf  # duplicated slice positions
    return float(np.max(np.abs(gaps - typical)) / typical)


def _read_file(name: str) -> sitk.Image:
    if not os.access(name, os.R_OK):
        raise InputError(f"{name}: permission denied (cannot read the file)")
    size = os.path.getsize(name)
    if size == 0:
        raise InputError(f"{name}: the file is empty (0 bytes)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(name)
    try:
        # Header first: refuse 4D and vector volumes before loading their pixels.
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(_read_failure(name, exc)) from None
    _check_header(name, reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize())
    io_name = sitk.ImageFileReader.GetImageIOFromFileName(name)
    checker = _STRUCTURE_CHECKS.get(io_name)
    if checker is not None:
        problem = checker(name, size)
        if problem:
            raise InputError(f"{name}: the file is truncated or corrupt ({problem})")
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(_read_failure(name, exc)) from None


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


def _read_failure(name: str, exc: RuntimeError) -> str:
    text = str(exc)
    if "Unable to determine ImageIO reader" in text:
        return (
            f"{name}: not a readable image (unknown format, or a corrupt or truncated header); "
            "supported: PNG, TIFF, JPEG, BMP, NIfTI, NRRD, MetaImage, DICOM"
        )
    if "Unknown PixelType" in text:
        return (
            f"{name}: pixel layout not supported by SimpleITK (e.g. a grey+alpha PNG); "
            "save it as grey or RGB"
        )
    return f"{name}: cannot read the image: {_itk_message(exc)}"


@contextlib.contextmanager
def _itk_warnings_off() -> Iterator[None]:
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


# ------------------------------------------------------------- structure checks
# Each takes (path, file size) and returns a problem description or None. They
# exist because SimpleITK reads these damaged files without raising.


def _check_nifti(name: str, size: int) -> str | None:
    with open(name, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    try:
        with opener(name, "rb") as handle:
            header = handle.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        return f"gzip stream: {exc}"
    if len(header) < 348:
        return f"header has {len(header)} bytes, a NIfTI header needs 348"
    layout = None
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
        if sizeof_hdr == 348:
            if header[344:347] != b"n+1":
                return None  # .hdr/.img pair or ANALYZE: the data is elsewhere
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            vox_offset = struct.unpack(endian + "f", header[108:112])[0]
            layout = (dims, bitpix, vox_offset)
        elif sizeof_hdr == 540 and len(header) == 540:
            if header[4:7] != b"n+2":
                return None
            dims = struct.unpack(endian + "8q", header[16:80])
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
            layout = (dims, bitpix, vox_offset)
        if layout:
            break
    if layout is None:
        return None  # not a header layout we know; leave the verdict to ITK
    dims, bitpix, vox_offset = layout
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1 : ndim + 1]) or bitpix <= 0:
        return None  # nonsensical header; ITK reports it better
    expected = int(vox_offset) + math.prod(dims[1 : ndim + 1]) * bitpix // 8
    if compressed:
        actual, error = _gzip_length(name)
        if error:
            return f"gzip stream: {error}"
    else:
        actual = size
    if actual < expected:
        return f"{actual} bytes of data where the header announces {expected}"
    return None


def _gzip_length(name: str) -> tuple[int, str | None]:
    """Decompressed length of a gzip file, streaming; an error text if the stream is cut or damaged."""
    total = 0
    try:
        with gzip.open(name, "rb") as handle:
            while True:
                chunk = handle.read(1 << 22)
                if not chunk:
                    return total, None
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        return total, str(exc)


def _check_bmp(name: str, size: int) -> str | None:
    with open(name, "rb") as handle:
        header = handle.read(54)
    if len(header) < 34 or header[:2] != b"BM":
        return None
    file_size, data_offset = struct.unpack("<I4xI", header[2:14])
    width, height, _planes, bits, compression = struct.unpack("<iiHHI", header[18:34])
    if compression == 0 and bits > 0:  # BI_RGB: rows padded to 4 bytes
        expected = data_offset + ((abs(width) * bits + 31) // 32) * 4 * abs(height)
    else:
        expected = file_size
    if size < expected:
        return f"{size} bytes where the header announces {expected}"
    return None


def _check_jpeg(name: str, size: int) -> str | None:
    with open(name, "rb") as handle:
        data = handle.read()
    if data[:2] != b"\xff\xd8":
        return None
    # In entropy-coded data 0xFF is always followed by 0x00 or a restart marker,
    # so an end-of-image marker after the last start-of-scan means the scan is whole.
    if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        return "the image data stops before the JPEG end-of-image marker"
    return None


def _check_tiff(name: str, size: int) -> str | None:
    """Walk the IFD chain: every directory and every strip/tile must lie inside the file."""
    with open(name, "rb") as handle:
        data = handle.read()
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        big = False
    elif data[:4] in (b"II+\x00", b"MM\x00+"):
        big = True
    else:
        return None
    endian = "<" if data[:2] == b"II" else ">"
    count_fmt, entry_size, value_fmt, offset_fmt = ("Q", 20, "Q", "Q") if big else ("H", 12, "I", "I")
    type_sizes = {
        1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8
    }
    int_formats = {3: "H", 4: "I", 16: "Q"}

    def unpack(fmt: str, offset: int) -> tuple:
        return struct.unpack_from(endian + fmt, data, offset)

    try:
        offset = unpack("Q", 8)[0] if big else unpack("I", 4)[0]
        seen: set[int] = set()
        while offset:
            if offset in seen:
                return "its directory chain loops"
            seen.add(offset)
            if offset + struct.calcsize(count_fmt) > size:
                return f"image directory at byte {offset} lies past the end ({size} bytes)"
            (count,) = unpack(count_fmt, offset)
            entries = offset + struct.calcsize(count_fmt)
            end = entries + count * entry_size + struct.calcsize(offset_fmt)
            if end > size:
                return f"image directory at byte {offset} runs past the end ({size} bytes)"
            values: dict[int, list[int]] = {}
            for i in range(count):
                at = entries + i * entry_size
                tag, kind = unpack("HH", at)
                if tag not in (273, 279, 324, 325) or kind not in int_formats:
                    continue
                (n,) = unpack(value_fmt, at + 4)
                inline = entries + i * entry_size + 4 + struct.calcsize(value_fmt)
                nbytes = n * type_sizes[kind]
                where = inline if nbytes <= struct.calcsize(value_fmt) else unpack(value_fmt, inline)[0]
                if where + nbytes > size:
                    return f"a strip table at byte {where} lies past the end ({size} bytes)"
                values[tag] = list(unpack(f"{n}{int_formats[kind]}", where))
            for offsets_tag, counts_tag in ((273, 279), (324, 325)):
                starts, lengths = values.get(offsets_tag), values.get(counts_tag)
                if starts and lengths and len(starts) == len(lengths):
                    last = max(s + c for s, c in zip(starts, lengths))
                    if last > size:
                        return f"pixel data runs to byte {last}, the file has {size}"
            (offset,) = unpack(offset_fmt, end - struct.calcsize(offset_fmt))
    except struct.error as exc:
        return f"malformed TIFF directory ({exc})"
    return None


_STRUCTURE_CHECKS = {
    "NiftiImageIO": _check_nifti,
    "BMPImageIO": _check_bmp,
    "JPEGImageIO": _check_jpeg,
    "TIFFImageIO": _check_tiff,
}


# --------------------------------------------------------------------------- writing


def cast_array(
    array: np.ndarray, dtype: np.dtype | type, cast: str = "clip", name: str = "image"
) -> np.ndarray:
    """Convert ``array`` to ``dtype`` without wrap-around, by an explicit rule.

    For an integer ``dtype``:

    - ``"clip"``: round to the nearest integer (halves to even, :func:`numpy.rint`),
      then clip to ``[iinfo.min, iinfo.max]``; e.g. -1.7 -> 0, 254.6 -> 255, 300.2 -> 255 for uint8.
    - ``"rescale"``: map ``[min, max]`` of the data linearly onto ``[iinfo.min, iinfo.max]``
      of the target, then round; a constant image maps to ``iinfo.min``.
    - ``"error"``: refuse (``InputError``) if any value is not an integer in range.

    NaN and infinite values are refused for integer targets. For a float
    ``dtype`` values are clipped to its finite range (no overflow to infinity),
    except with ``"error"``, which refuses values beyond it.

    :param array: the values; left unchanged.
    :param dtype: the target numpy dtype.
    :param cast: one of :data:`CAST_RULES`.
    :param name: how the array is called in error messages.
    """
    if cast not in CAST_RULES:
        raise InputError(f"cast: expected one of {CAST_RULES}, got {cast!r}")
    target = np.dtype(dtype)
    source = np.asarray(array)
    if source.dtype == target:
        return source.copy()
    if np.iscomplexobj(source) or not (np.issubdtype(source.dtype, np.number) or source.dtype == bool):
        raise InputError(f"{name}: cannot store dtype {source.dtype} as {target}")
    if source.dtype == bool:
        source = source.astype(np.uint8)
    if np.issubdtype(target, np.floating):
        limit = float(np.finfo(target).max)
        values = source.astype(np.float64)
        if cast == "error" and np.any(np.abs(values[np.isfinite(values)]) > limit):
            raise InputError(f"{name}: values exceed the range of {target}")
        return np.clip(values, -limit, limit).astype(target)
    info = np.iinfo(target)
    values = source.astype(np.float64) if np.issubdtype(source.dtype, np.floating) else source
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
        raise InputError(f"{name}: contains NaN or infinite values, which {target} cannot hold")
    if cast == "error":
        exact = values == np.rint(values) if np.issubdtype(values.dtype, np.floating) else True
        if not np.all(exact) or values.min() < info.min or values.max() > info.max:
            raise InputError(
                f"{name}: values in [{values.min()}, {values.max()}] are not all integers "
                f"in the {target} range [{info.min}, {info.max}]; pass cast='clip' or 'rescale'"
            )
        return values.astype(target)
    if cast == "rescale":
        low, high = float(values.min()), float(values.max())
        out_low = float(info.min)
        if high == low:
            return np.full(values.shape, info.min, dtype=target)
        scaled = (values.astype(np.float64) - low) / (high - low) * (float(info.max) - out_low) + out_low
        return np.clip(np.rint(scaled), info.min, info.max).astype(target)
    # "clip": integers are clipped exactly (float64 would lose precision beyond 2**53).
    if np.issubdtype(values.dtype, np.integer):
        # Bounds representable in the source type, so the comparison is exact.
        source_info = np.iinfo(values.dtype)
        low, high = max(info.min, source_info.min), min(info.max, source_info.max)
        return np.clip(values, values.dtype.type(low), values.dtype.type(high)).astype(target)
    return np.clip(np.rint(values), info.min, info.max).astype(target)


def _output_extension(name: str) -> str:
    """Lower-case extension, keeping ``.nii.gz``-style compound ones whole."""
    lower = name.lower()
    for compound in (".nii.gz", ".hdr.gz", ".img.gz"):
        if lower.endswith(compound):
            return compound
    return os.path.splitext(lower)[1]


def _default_storage_dtype(source: np.dtype, allowed: tuple[np.dtype, ...]) -> np.dtype:
    """Pick the stored type for a dtype the format cannot hold, from the dtype alone."""
    if np.issubdtype(source, np.floating) and np.dtype(np.float32) in allowed:
        return np.dtype(np.float32)
    if np.issubdtype(source, np.integer) and source.itemsize >= 2:
        # Keep the signedness and as many bits as the format has.
        for candidate in sorted(allowed, key=lambda d: -d.itemsize):
            if np.issubdtype(candidate, np.integer) and (
                np.issubdtype(candidate, np.signedinteger) == np.issubdtype(source, np.signedinteger)
            ):
                return candidate
        for candidate in sorted(allowed, key=lambda d: -d.itemsize):
            if np.issubdtype(candidate, np.integer):
                return candidate
    return allowed[0]  # uint8: floats, bool, int8 for PNG/JPEG/BMP


def write_image(
    image: LoadedImage | sitk.Image | np.ndarray,
    path: PathLike,
    reference: LoadedImage | None = None,
    overwrite: bool = False,
    protected_paths: Iterable[PathLike] = (),
    *,
    cast: str = "clip",
    dtype: np.dtype | type | None = None,
    is_color: bool | None = None,
    use_compression: bool = True,
) -> Path:
    """Write an image or volume atomically through SimpleITK; return the path written.

    The format follows the extension (``.nii.gz``, ``.nrrd``, ``.mha``, ``.png``...).
    Integer-only formats get the pixels converted by :func:`cast_array` with
    ``cast`` (default: round and clip, never wrap around): PNG stores uint8 or
    uint16, JPEG and BMP uint8, TIFF no 64-bit types. Without ``dtype`` the
    stored type depends only on the input dtype: a type the format holds is
    kept; otherwise floats become float32 (TIFF) or uint8, 16-64-bit integers
    become the widest integer type the format holds (uint16 for PNG), and
    bool/int8 become uint8.

    :param image: a :class:`LoadedImage`, a ``SimpleITK.Image`` or a numpy array.
    :param path: the destination file.
    :param reference: image whose spacing, origin and direction are copied
        (its grid must have the same shape); default the image's own geometry,
        or unit spacing for a bare array.
    :param overwrite: replace an existing file at ``path``; refused otherwise.
    :param protected_paths: the inputs; ``path`` may never be (a link to) one
        of them, nor an existing file inside a protected directory (DICOM series).
    :param cast: float/large-integer conversion rule, one of :data:`CAST_RULES`.
    :param dtype: stored pixel type; must be one the format holds.
    :param is_color: for an array, whether its last axis holds RGB channels;
        default: ``True`` for ``(H, W, 3)`` arrays written to PNG/JPEG/BMP or
        with a colour ``reference``.
    :param use_compression: ask SimpleITK to compress (NRRD, MetaImage; ``.nii.gz`` always is).
    :raises InputError: refused destination, unwritable or missing folder,
        unsupported format or pixel type, mismatched reference, SimpleITK failure.
    """
    name = os.fspath(path)
    extension = _output_extension(name)
    loaded = _as_loaded(image, name, extension, reference, is_color)
    if reference is not None:
        if reference.spatial_shape != loaded.spatial_shape:
            raise InputError(
                f"reference: its grid {reference.spatial_shape} differs from the image shape "
                f"{loaded.spatial_shape} to write to {name}"
            )
        loaded = LoadedImage(
            loaded.array, reference.spacing, reference.origin, reference.direction, name, loaded.is_color
        )
    if extension in _TWO_D_ONLY and loaded.dimension != 2:
        raise InputError(
            f"{name}: {extension} holds 2D images only, got a {loaded.dimension}D volume of shape "
            f"{loaded.spatial_shape}; use .nii.gz, .nrrd or .mha"
        )
    if loaded.is_color and loaded.array.shape[-1] != 3:
        raise InputError(f"{name}: colour images must have 3 channels, got {loaded.array.shape[-1]}")
    array = _storable_array(loaded.array, extension, cast, dtype, name)
    sitk_image = LoadedImage(
        array, loaded.spacing, loaded.origin, loaded.direction, name, loaded.is_color
    ).to_sitk()
    with atomic_output(name, overwrite=overwrite, protected_paths=protected_paths) as temporary:
        try:
            sitk.WriteImage(sitk_image, os.fspath(temporary), use_compression)
        except RuntimeError as exc:
            text = str(exc)
            if "Unable to determine ImageIO writer" in text:
                raise InputError(
                    f"{name}: unsupported output format {extension or '(no extension)'!r}; "
                    "use .nii.gz, .nrrd, .mha, .png, .tif, .jpg or .bmp"
                ) from None
            raise InputError(f"{name}: cannot write the image: {_itk_message(exc)}") from None
    return Path(name)


def _as_loaded(
    image: LoadedImage | sitk.Image | np.ndarray,
    name: str,
    extension: str,
    reference: LoadedImage | None,
    is_color: bool | None,
) -> LoadedImage:
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, sitk.Image):
        return _to_loaded(image, f"image to write to {name}")
    array = np.asarray(image)
    if is_color is None:
        is_color = (
            array.ndim == 3
            and array.shape[-1] == 3
            and (extension in _TWO_D_ONLY or (reference is not None and reference.is_color))
        )
    if array.size == 0:
        raise InputError(f"image to write to {name}: the image is empty (shape {array.shape})")
    try:
        return LoadedImage.from_array(array, is_color=is_color, path=name)
    except InputError as exc:
        raise InputError(f"image to write to {name}: {exc}") from None


def _storable_array(
    array: np.ndarray, extension: str, cast: str, dtype: np.dtype | type | None, name: str
) -> np.ndarray:
    if cast not in CAST_RULES:
        raise InputError(f"cast: expected one of {CAST_RULES}, got {cast!r}")
    if np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(f"image to write to {name}: dtype {array.dtype} cannot be written")
    allowed = _RESTRICTED_DTYPES.get(extension)
    if dtype is not None:
        target = np.dtype(dtype)
        if allowed is not None and target not in allowed:
            raise InputError(
                f"{name}: {extension} cannot store {target}; it holds {', '.join(map(str, allowed))}"
            )
    elif allowed is None:
        target = _LOSSLESS_PROMOTION.get(array.dtype, array.dtype)
    elif array.dtype in allowed:
        target = array.dtype
    else:
        target = _default_storage_dtype(_LOSSLESS_PROMOTION.get(array.dtype, array.dtype), allowed)
    if target == array.dtype:
        return array
    return cast_array(array, target, cast, name=f"image to write to {name}")


# ------------------------------------------------------------------ atomic output


def _resolve(name: str) -> str:
    return os.path.realpath(os.path.abspath(name))


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)  # also catches hard links
    except OSError:
        return _resolve(a) == _resolve(b)


def _check_destination(destination: str, overwrite: bool, protected: Sequence[str], label: str) -> None:
    """Refuse a destination that is protected, a folder, or (without ``overwrite``) existing."""
    for guarded in protected:
        if _same_file(destination, guarded):
            raise InputError(
                f"{label}: refusing to write over the input {guarded} (it is the same file)"
            )
        if os.path.isdir(guarded) and os.path.lexists(destination):
            parent = os.path.dirname(_resolve(destination))
            if _same_file(parent, guarded):
                raise InputError(
                    f"{label}: refusing to replace a file inside the input folder {guarded}"
                )
    if os.path.isdir(destination):
        raise InputError(f"{label}: is a directory, expected a file name")
    if os.path.lexists(destination) and not overwrite:
        raise InputError(f"{label}: already exists; pass overwrite=True to replace it")


def _fsync_file(name: str) -> None:
    with open(name, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(folder: str) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _move_into_place(source: str, destination: str, overwrite: bool) -> None:
    if overwrite:
        os.replace(source, destination)
        return
    # A hard link fails if the destination appeared meanwhile, so no file
    # created by someone else after our check is ever clobbered.
    try:
        os.link(source, destination)
    except FileExistsError:
        raise InputError(f"{destination}: already exists; pass overwrite=True to replace it") from None
    except OSError:
        if os.path.lexists(destination):
            raise InputError(f"{destination}: already exists; pass overwrite=True to replace it") from None
        os.replace(source, destination)  # file system without hard links
        return
    os.unlink(source)


def check_output_path(path: PathLike, overwrite: bool = False, protected_paths: Iterable[PathLike] = ()) -> str:
    """Check, before any long work, that ``path`` can be written; return its folder.

    The same checks :func:`atomic_output` makes when it starts, so a caller can refuse a
    bad destination before spending minutes on a fusion whose result could not be kept.

    :param path: the file to write.
    :param overwrite: whether an existing file at ``path`` may be replaced.
    :param protected_paths: inputs that ``path`` may never be.
    :raises InputError: folder path, missing/unwritable folder, an input, or existing without ``overwrite``.
    """
    name = os.fspath(path)
    if not os.path.basename(name):
        raise InputError(f"{name}: expected a file name, got a folder path")
    folder = os.path.dirname(os.path.abspath(name))
    if not os.path.isdir(folder):
        raise InputError(
            f"{folder}: the output folder does not exist"
            if not os.path.exists(folder)
            else f"{folder}: the output folder is not a directory"
        )
    _check_destination(name, overwrite, [os.fspath(p) for p in protected_paths], name)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{folder}: the output folder is not writable")
    return folder


def _temporary_prefix(name: str) -> str:
    """Prefix of :func:`atomic_output`'s private folders for ``name``: ``.<basename>.<pid>.``."""
    return f".{os.path.basename(name)}.{os.getpid()}."


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: PathLike) -> list[str]:
    """Remove the hidden temporary folders that killed writers of ``path`` left behind.

    :func:`atomic_output` writes into ``.<name>.<pid>.<random>.tmp/`` next to ``path``; a
    process killed mid-write (SIGKILL, power cut) cannot remove it. ``medfusion fuse`` and
    :func:`~MedFusionLib.batch.run_batch` call this first, so a re-run leaves only finished
    files. Only folders of exactly that form for this file name whose process no longer runs
    (on this machine) are removed, so a concurrent writer of the same file is never disturbed.

    :param path: the final file whose leftovers to remove.
    :returns: the names removed.
    """
    name = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(name))
    pattern = re.compile(rf"^\.{re.escape(os.path.basename(name))}\.(\d+)\.[A-Za-z0-9_]+\.tmp$")
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry)
        candidate = os.path.join(folder, entry)
        if match is None or not os.path.isdir(candidate) or os.path.islink(candidate):
            continue
        if _process_alive(int(match.group(1))):
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_output(
    path: PathLike,
    overwrite: bool = False,
    protected_paths: Iterable[PathLike] = (),
) -> Iterator[Path]:
    """Context manager giving a temporary path to write ``path`` atomically.

    The yielded path has the same file name as ``path`` (so writers that pick
    the format from the extension, or that add side files such as a MetaImage
    ``.raw``, behave as for the real name) but lies in a private hidden folder
    created next to ``path``, on the same file system. On normal exit every
    file written there is flushed to disk and renamed into the destination
    folder (side files first, ``path`` last); on an exception the temporary
    folder is removed and nothing appears at ``path``. If the process is
    killed, at most a hidden ``.<name>.<pid>.*.tmp`` folder remains (see
    :func:`remove_stale_temporaries`).

    Example::

        with atomic_output("scores.csv") as temporary:
            temporary.write_text(table)

    :param path: the final file.
    :param overwrite: allow replacing an existing file at ``path`` (or a side file).
    :param protected_paths: files that may never be replaced (the inputs).
    :raises InputError: refused destination, missing or unwritable folder.
    """
    name = os.fspath(path)
    protected = [os.fspath(p) for p in protected_paths]
    folder = check_output_path(name, overwrite, protected)
    try:
        work = tempfile.mkdtemp(prefix=_temporary_prefix(name), suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"{folder}: cannot create a file in the output folder ({exc.strerror})") from None
    temporary = os.path.join(work, os.path.basename(name))
    try:
        yield Path(temporary)
        if not os.path.exists(temporary):
            raise MedFusionError(f"{name}: the writer produced no file")
        produced = sorted(os.listdir(work), key=lambda f: f == os.path.basename(name))
        destinations = [os.path.join(folder, f) for f in produced]
        for destination in destinations:  # side files must pass the same checks
            _check_destination(destination, overwrite, protected, destination)
        for produced_name, destination in zip(produced, destinations):
            source = os.path.join(work, produced_name)
            _fsync_file(source)
            _move_into_place(source, destination, overwrite)
        _fsync_directory(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
