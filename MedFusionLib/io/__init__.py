"""Reading and writing images and volumes through SimpleITK, safely.

Reading (:func:`read_image`) accepts 2D PNG/TIFF/JPEG/BMP images (grey, RGB,
RGBA with the alpha dropped), 3D NIfTI, NRRD and MetaImage volumes, a single
DICOM file and a DICOM series given as a directory. Every failure, including
the ones SimpleITK reports as a multi-line ``RuntimeError``, becomes one
:class:`~MedFusionLib.errors.InputError` line naming the path. Input files are
only ever opened for reading.

SimpleITK reads some damaged files *without* any error (a truncated NIfTI or
BMP is padded, a truncated JPEG is filled in, a multi-page TIFF cut short
silently loses its last slices), so :func:`read_image` has them checked first
(:mod:`.integrity`: SimpleITK's NIfTI header fields, Pillow, tifffile).

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

One module per job:

- :mod:`.images` -- :class:`LoadedImage`, the pixels + geometry every reader returns;
- :mod:`.reading` -- :func:`read_image`, DICOM series;
- :mod:`.integrity` -- damage SimpleITK does not report;
- :mod:`.writing` -- :func:`write_image`, :func:`cast_array`;
- :mod:`.atomic` -- :func:`atomic_output`, :func:`check_output_path`, :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

from .atomic import atomic_output, check_output_path, remove_stale_temporaries
from .images import DicomSeries, LoadedImage, PathLike
from .reading import list_dicom_series, read_image
from .writing import CAST_RULES, cast_array, write_image

__all__ = [
    "LoadedImage",
    "DicomSeries",
    "PathLike",
    "read_image",
    "write_image",
    "atomic_output",
    "check_output_path",
    "remove_stale_temporaries",
    "list_dicom_series",
    "cast_array",
    "CAST_RULES",
]
