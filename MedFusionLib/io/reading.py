"""Reading images, volumes and DICOM series through SimpleITK; every failure becomes one
:class:`~MedFusionLib.errors.InputError` line naming the path. Files are only opened for reading."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .images import DicomSeries, LoadedImage, PathLike, _check_header, _itk_message, _to_loaded
from .integrity import damage



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
    problem = damage(name, size, reader)
    if problem:
        raise InputError(f"{name}: the file is truncated or corrupt ({problem})")
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(_read_failure(name, exc)) from None


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
