"""Writing images and volumes through SimpleITK, atomically (:mod:`.atomic`), with the float-to-integer
rule of integer-only formats (:func:`cast_array`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .atomic import atomic_output
from .images import _LOSSLESS_PROMOTION, LoadedImage, PathLike, _itk_message, _to_loaded

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
