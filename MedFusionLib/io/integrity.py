"""Damage SimpleITK reads without complaint: a truncated NIfTI or BMP is padded, a truncated JPEG is
filled in, a multi-page TIFF cut short silently loses its last pages.

Each check asks a library that parses the format anyway -- SimpleITK's own NIfTI header fields,
Pillow's BMP and JPEG decoders, tifffile's page directory -- and returns a one-line description
of the damage, or None. A file a checker's library cannot make sense of at all is left to
SimpleITK, whose error is the one the user sees.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import zlib
from typing import Callable, Iterator, Optional

import SimpleITK as sitk


def damage(name: str, size: int, reader: sitk.ImageFileReader) -> Optional[str]:
    """What is missing from ``name``, or None.

    :param name: the file.
    :param size: its size in bytes.
    :param reader: a SimpleITK reader of it, after ``ReadImageInformation()`` (its header fields).
    """
    check = _CHECKS.get(sitk.ImageFileReader.GetImageIOFromFileName(name))
    return check(name, size, reader) if check is not None else None


def _nifti(name: str, size: int, reader: sitk.ImageFileReader) -> Optional[str]:
    """Fewer data bytes than the header (as ITK's NIfTI reader parsed it) announces."""
    keys = set(reader.GetMetaDataKeys())
    if not {"vox_offset", "bitpix", "dim[0]"} <= keys:
        return None
    if "nifti_type" in keys and reader.GetMetaData("nifti_type") not in ("1", "4"):
        return None  # a .hdr/.img pair or ANALYZE: the data is in another file
    ndim = int(reader.GetMetaData("dim[0]"))
    dims = [int(reader.GetMetaData(f"dim[{i}]")) for i in range(1, ndim + 1)]
    bitpix = int(reader.GetMetaData("bitpix"))
    expected = int(float(reader.GetMetaData("vox_offset"))) + math.prod(dims) * bitpix // 8
    with open(name, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    if compressed:
        actual, error = _gzip_length(name)
        if error:
            return f"gzip stream: {error}"
    else:
        actual = size
    if actual < expected:
        return f"{actual} bytes of data where the header announces {expected}"
    return None


def _gzip_length(name: str) -> tuple[int, Optional[str]]:
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


def _pillow(name: str, size: int, reader: sitk.ImageFileReader) -> Optional[str]:
    """Pillow's decoder says "image file is truncated" where ITK's BMP and JPEG readers pad."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(name) as image:
            image.load()
    except UnidentifiedImageError:
        return None  # a variant Pillow does not know: SimpleITK decides
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's decoders raise these on bad data
        text = str(exc)
        return text if "truncated" in text or "broken" in text else None
    return None


@contextlib.contextmanager
def _warnings_of(logger: str) -> Iterator[list[str]]:
    """What a library logs as warnings while the block runs (tifffile reports damage that way)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    target = logging.getLogger(logger)
    handler, propagate = Collect(logging.WARNING), target.propagate
    target.addHandler(handler)
    target.propagate = False  # the damage becomes our error; no stray log lines
    try:
        yield messages
    finally:
        target.removeHandler(handler)
        target.propagate = propagate


def _tiff(name: str, size: int, reader: sitk.ImageFileReader) -> Optional[str]:
    """Every page tifffile finds, and all their strips or tiles, must lie inside the file."""
    import tifffile

    with _warnings_of("tifffile") as warnings:
        try:
            with tifffile.TiffFile(name) as tiff:
                for page in tiff.pages:
                    ends = [offset + count for offset, count in zip(page.dataoffsets, page.databytecounts)]
                    if ends and max(ends) > size:
                        return f"pixel data runs to byte {max(ends)}, the file has {size}"
        except tifffile.TiffFileError as exc:
            return f"malformed TIFF directory ({exc})"
    if warnings:
        return warnings[0].split("> ", 1)[-1]  # drop tifffile's "<TiffPages @8>" object prefix
    return None


_CHECKS: dict[str, Callable[[str, int, sitk.ImageFileReader], Optional[str]]] = {
    "NiftiImageIO": _nifti,
    "BMPImageIO": _pillow,
    "JPEGImageIO": _pillow,
    "TIFFImageIO": _tiff,
}
