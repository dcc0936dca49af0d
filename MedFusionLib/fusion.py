"""The user-facing fusion API: :func:`fuse` for a 2D group, :func:`fuse_volume` for 3D volumes,
:func:`fuse_files` from image/volume files to an output file.

Both accept the shipped default model (``model="default"``), a model file, a
:class:`~MedFusionLib.engine.model.FusionModel`, or a built-in baseline by name
(``"laplacian"``, ``"guided_filter"``, ...), and take care of what every caller
needs: input checks with clear messages, intensity standardisation to [0, 1],
colour (PET/SPECT pseudo-colour is fused on luminance and its colour put back),
device choice, progress and cancellation. Inputs are never modified.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch

from .baselines import BASELINES, FusionBaseline, get_baseline
from .engine.devices import inference_context, resolve_device
from .engine.model import FusionModel
from .errors import Cancelled, InputError
from .io import LoadedImage, PathLike, check_output_path, read_image, remove_stale_temporaries, write_image
from .preprocessing import (
    Chroma,
    merge_luminance,
    percentile_normalise,
    split_luminance,
    standardise,
)
from .progress import CancelFlag, ProgressCallback
from .validation import check_int, source_name

#: The shipped default model (trained by ``medfusion train --recipe default``; see the README).
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "models" / "default_cnn.pt"

Method = Union[str, Path, FusionModel, FusionBaseline]


class FusionCancelled(Cancelled):
    """Raised when a fusion is cancelled; nothing was written and nothing is returned."""


@dataclass
class FusionResult:
    """A fused 2D image.

    :param image: the fused luminance / grey image, ``float32`` in [0, 1].
    :param colour: ``(H, W, 3)`` ``float32`` RGB in [0, 1] when an input was colour, else None.
    :param seconds: wall time of the fusion itself (after loading and standardisation).
    :param method: what fused it.
    """

    image: np.ndarray
    colour: np.ndarray | None
    seconds: float
    method: str


_MODEL_CACHE: dict[tuple[str, float], FusionModel] = {}


def load_method(method: Method = "default") -> FusionModel | FusionBaseline:
    """Resolve ``method``: ``"default"``, a baseline name, a model path, a model or a baseline.

    :param method: what to fuse with.
    """
    if isinstance(method, (FusionModel, FusionBaseline)):
        return method
    if isinstance(method, str) and method.strip().lower() in BASELINES:
        return get_baseline(method)
    if isinstance(method, str) and method.strip().lower() == "default":
        path = DEFAULT_MODEL_PATH
        if not path.is_file():
            raise InputError(f"the default model file is missing from the installation ({path})")
    else:
        path = Path(method)
        if not path.exists() and not path.suffix:
            raise InputError(
                f"method {method!r}: not a model file, 'default', or a baseline ({', '.join(sorted(BASELINES))})"
            )
    key = (str(path.resolve()), path.stat().st_mtime if path.exists() else 0.0)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = FusionModel.load(path)
    return _MODEL_CACHE[key]


def method_name(method: FusionModel | FusionBaseline) -> str:
    return f"{method.family} model" if isinstance(method, FusionModel) else method.name


def unit_to_uint8(image: np.ndarray) -> np.ndarray:
    """A [0, 1] result as 8-bit grey levels (``round(x * 255)``, clipped), for PNG/JPEG/BMP files and pictures."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_unit_range(image: np.ndarray, modality: str | None = None, name: str = "image") -> np.ndarray:
    """Standardise one grey image or volume to ``float32`` in [0, 1].

    With a ``modality`` (``"CT"``, ``"MRI"``, ``"PET"``, ``"SPECT"``):
    :func:`~MedFusionLib.preprocessing.standardise` (CT brain window, percentiles for
    the rest). Without: ``uint8`` is divided by 255, ``bool`` taken as 0/1, data already
    in [0, 1] kept, anything else percentile-normalised (1st to 99th percentile).

    :param image: the image (not modified).
    :param modality: optional modality name.
    :param name: for error messages.
    """
    array = np.asarray(image)
    if array.size == 0:
        raise InputError(f"{name}: the image is empty")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise InputError(f"{name}: expected a numeric image, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name}: contains NaN or infinite values")
    if modality is not None:
        return np.asarray(standardise(array, modality), dtype=np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.min() >= 0.0 and array.max() <= 1.0:
        return array.astype(np.float32)
    return np.asarray(percentile_normalise(array), dtype=np.float32)


#: What the fusion functions take as an image or volume, for messages.
ACCEPTED_INPUTS = "a NumPy array, a SimpleITK.Image or a MedFusionLib LoadedImage"


def _supported(item: object, name: str) -> LoadedImage | object:
    """A :class:`LoadedImage` (kept, or converted from ``SimpleITK.Image`` with its geometry) or an
    array-like (returned as is). Anything else is refused at once, before NumPy could try to iterate
    it element by element (a ``SimpleITK.Image`` given to ``np.asarray`` takes seconds).

    :param item: the input.
    :param name: how messages name it ("source A", "volume B", ...).
    """
    if isinstance(item, LoadedImage):
        return item
    if isinstance(item, sitk.Image):
        return LoadedImage.from_sitk(item, name)
    if isinstance(item, (np.ndarray, list, tuple)) or hasattr(item, "__array__"):
        return item
    raise InputError(f"{name}: expected {ACCEPTED_INPUTS}, got {type(item).__name__}")


def as_loaded_image(item: object, name: str) -> LoadedImage:
    """An input image as a :class:`LoadedImage` (see :func:`_supported`); arrays get unit geometry.

    :param item: the input.
    :param name: how messages name it ("source A", "volume B", ...).
    """
    item = _supported(item, name)
    if isinstance(item, LoadedImage):
        return item
    array = np.asarray(item)
    if array.dtype == object:
        raise InputError(f"{name}: expected {ACCEPTED_INPUTS}, got a {type(item).__name__} of objects")
    if array.ndim not in (2, 3):
        raise InputError(f"{name}: expected a 2D or 3D image, got shape {array.shape}")
    return LoadedImage.from_array(array)


def _prepare_group(
    images: Sequence[object], modalities: Sequence[str | None] | None
) -> tuple[list[np.ndarray], Chroma | None]:
    """Validated, standardised 2D luminance inputs and the chroma of the first colour input."""
    if isinstance(images, (np.ndarray, str, bytes)) or not isinstance(images, Sequence):
        raise InputError("images: expected a list or tuple of images")
    if len(images) < 2:
        raise InputError(f"images: at least 2 images are needed, got {len(images)}")
    if modalities is not None and len(modalities) != len(images):
        raise InputError(f"modalities: {len(modalities)} given for {len(images)} images")
    prepared: list[np.ndarray] = []
    chroma: Chroma | None = None
    for index, image in enumerate(images):
        name = source_name(index)
        image = _supported(image, name)
        array = image.array if isinstance(image, LoadedImage) else np.asarray(image)
        is_colour = image.is_color if isinstance(image, LoadedImage) else (array.ndim == 3 and array.shape[-1] in (3, 4))
        if is_colour:
            luminance, colour = split_luminance(image if isinstance(image, LoadedImage) else array)
            chroma = chroma if chroma is not None else colour  # the first colour input lends its colour
            prepared.append(np.asarray(luminance, dtype=np.float32))
            continue
        if array.ndim != 2:
            raise InputError(f"{name}: expected a 2D image (or an RGB image), got shape {array.shape}")
        modality = modalities[index] if modalities is not None else None
        prepared.append(to_unit_range(array, modality, name))
    for index, array in enumerate(prepared[1:], start=1):
        if array.shape != prepared[0].shape:
            raise InputError(
                f"{source_name(index)}: shape {array.shape} differs from source A shape {prepared[0].shape}; "
                "register the images onto one grid first (medfusion fuse --register)"
            )
    return prepared, chroma


#: Default of the deprecated ``model=`` keyword (the old name of ``method=``): "not given".
_UNSET: Any = object()


def _chosen_method(method: Method, model: Method, function: str) -> Method:
    """``method``, or the deprecated ``model=`` (one release, with a :class:`DeprecationWarning`)."""
    if model is _UNSET:
        return method
    if not (isinstance(method, str) and method == "default"):
        raise InputError(f"{function}: give the fusion method once, as method= (model= is its old name)")
    warnings.warn(f"{function}(model=...) is deprecated: use method=..., the name the CLI (--method) and the "
                  "Slicer module use", DeprecationWarning, stacklevel=3)
    return model


def _off(value: str | None, name: str, function: str) -> str | None:
    """None for "off"; the old spelling ``"none"`` still works for one release, with a :class:`DeprecationWarning`."""
    if isinstance(value, str) and value.strip().lower() == "none":
        warnings.warn(f'{function}({name}="none") is deprecated: use {name}=None', DeprecationWarning, stacklevel=3)
        return None
    return value


def _check_inputs_fit(method: FusionModel | FusionBaseline, count: int) -> None:
    if isinstance(method, FusionModel) and not method.accepts(count):
        raise InputError(f"the {method_name(method)} fuses {method.n_inputs} images, got {count}")


def fuse(
    images: Sequence[object],
    method: Method = "default",
    *,
    block_size: int | None = None,
    stride: int | None = None,
    device: str | torch.device | None = None,
    modalities: Sequence[str | None] | None = None,
    model: Method = _UNSET,
) -> FusionResult:
    """Fuse a group of K >= 2 registered 2D images.

    :param images: arrays (grey, or RGB/RGBA pseudo-colour) or 2D :class:`LoadedImage`, one shape.
    :param method: ``"default"``, a model file, a :class:`FusionModel`, a baseline name or instance.
    :param block_size: None (model default: the CNN fuses the whole image in one pass)
        or n = 2^i to fuse overlapping n x n blocks.
    :param stride: block step (default n / 2).
    :param device: ``"auto"``/None (CUDA when present), ``"cpu"``, ``"cuda"``.
    :param modalities: optional modality per image (``"CT"``, ``"MRI"``, ``"PET"``, ``"SPECT"``)
        for standardisation; default: automatic (see :func:`to_unit_range`).
    :param model: the old name of ``method`` (deprecated; one release).
    :returns: a :class:`FusionResult`.
    """
    method = load_method(_chosen_method(method, model, "fuse"))
    prepared, chroma = _prepare_group(images, modalities)
    _check_inputs_fit(method, len(prepared))
    torch_device = resolve_device(device)  # checked for baselines too: a wrong device is a mistake
    if not isinstance(method, FusionModel) and (block_size is not None or stride is not None):
        raise InputError(f"block_size/stride: {method_name(method)} fuses whole images; blocks apply to learned models")
    start = time.perf_counter()
    if isinstance(method, FusionModel):
        fused = method.fuse(prepared, block_size=block_size, stride=stride, device=torch_device)
    else:
        fused = method.fuse(prepared).astype(np.float32)
    seconds = time.perf_counter() - start
    fused = np.clip(fused, 0.0, 1.0)
    colour = merge_luminance(fused, chroma).astype(np.float32) if chroma is not None else None
    return FusionResult(fused, colour, seconds, method_name(method))


def fuse_volume(
    volumes: Sequence[object],
    method: Method = "default",
    *,
    axis: int = 0,
    batch_size: int | None = None,
    block_size: int | None = None,
    device: str | torch.device | None = None,
    modalities: Sequence[str | None] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    model: Method = _UNSET,
) -> object:
    """Fuse K registered 3D volumes slice by slice and reassemble a volume on the first one's grid.

    Each volume is standardised as a whole (so slices stay comparable), cut into 2D
    slices along ``axis`` (array axis: 0 is the slowest, i.e. axial for a usual
    NIfTI/NRRD), fused in batches of ``batch_size`` slices, and stacked back. The
    result has exactly the first volume's origin, spacing and direction.

    :param volumes: ``SimpleITK.Image`` or :class:`LoadedImage` volumes (geometry checked) or 3D arrays
        (shape checked); anything else is refused at once, naming what is accepted.
    :param method: as in :func:`fuse`.
    :param axis: the array axis to slice along (0, 1 or 2).
    :param batch_size: slices per forward pass; default 4 on the CPU (larger batches fall out of
        the CPU caches and get slower per slice) and 32 on a GPU.
    :param block_size: as in :func:`fuse`.
    :param device: as in :func:`fuse`.
    :param modalities: as in :func:`fuse`.
    :param progress: ``progress(fraction, message)`` after every batch.
    :param cancel: ``cancel.is_set()`` is checked between batches; raises :class:`FusionCancelled`.
    :param model: the old name of ``method`` (deprecated; one release).
    :returns: float32 in [0, 1] on the first volume's grid, of the first volume's kind: a
        ``SimpleITK.Image`` for a ``SimpleITK.Image`` (origin, spacing and direction exactly its),
        else a :class:`LoadedImage`.
    """
    method = load_method(_chosen_method(method, model, "fuse_volume"))
    if isinstance(volumes, (np.ndarray, str, bytes)) or not isinstance(volumes, Sequence) or len(volumes) < 2:
        raise InputError("volumes: expected a list of at least 2 volumes")
    if isinstance(axis, bool) or axis not in (0, 1, 2):
        raise InputError(f"axis: expected 0, 1 or 2, got {axis!r}")
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size")
    if modalities is not None and len(modalities) != len(volumes):
        raise InputError(f"modalities: {len(modalities)} given for {len(volumes)} volumes")
    loaded = [as_loaded_image(v, f"volume {source_name(i)}") for i, v in enumerate(volumes)]
    # Geometry is compared where both volumes carry one (an array has none of its own).
    carries_geometry = [isinstance(v, LoadedImage) or isinstance(v, sitk.Image) for v in volumes]
    for index, volume in enumerate(loaded):
        if volume.is_color or volume.array.ndim != 3:
            raise InputError(
                f"volume {source_name(index)}: expected a grey 3D volume, got shape {volume.array.shape}"
                + (" (colour)" if volume.is_color else "")
            )
    reference = loaded[0]
    for index, volume in enumerate(loaded[1:], start=1):
        if volume.array.shape != reference.array.shape:
            raise InputError(
                f"volume {source_name(index)}: shape {volume.array.shape} differs from {reference.array.shape}; "
                "resample it onto source A's grid first (medfusion fuse --register)"
            )
        if carries_geometry[index] and carries_geometry[0]:
            if not volume.geometry_matches(reference):
                raise InputError(
                    f"volume {source_name(index)}: origin, spacing or direction differ from source A; "
                    "register/resample it onto source A's grid first (medfusion fuse --register)"
                )
    _check_inputs_fit(method, len(loaded))
    standardised = np.stack(
        [
            to_unit_range(v.array, modalities[i] if modalities else None, f"volume {source_name(i)}")
            for i, v in enumerate(loaded)
        ]
    )  # (K, D, H, W)
    slices = np.moveaxis(standardised, axis + 1, 1)  # (K, S, h, w): slices along the chosen axis
    count = slices.shape[1]
    fused = np.empty(slices.shape[1:], dtype=np.float32)
    resolved = resolve_device(device)
    torch_device = resolved if isinstance(method, FusionModel) else None
    if torch_device is None and block_size is not None:
        raise InputError(f"block_size: {method_name(method)} fuses whole images; blocks apply to learned models")
    if torch_device is not None:
        method.network.to(torch_device)
    if batch_size is None:
        batch_size = 32 if torch_device is not None and torch_device.type == "cuda" else 4
    with inference_context():
        for start in range(0, count, batch_size):
            if cancel is not None and cancel.is_set():
                raise FusionCancelled("fusion cancelled")
            stop = min(start + batch_size, count)
            if isinstance(method, FusionModel):
                batch = torch.from_numpy(np.ascontiguousarray(slices[:, start:stop].transpose(1, 0, 2, 3)))
                out = method.fuse_tensor(batch.to(torch_device), block_size=block_size)
                fused[start:stop] = out[:, 0].float().cpu().numpy()
            else:
                for s in range(start, stop):
                    fused[s] = method.fuse(list(slices[:, s]))
            if progress is not None:
                progress(stop / count, f"fused slices {stop}/{count}")
    np.clip(fused, 0.0, 1.0, out=fused)  # in place: a second volume-sized array would cost memory
    result = LoadedImage(np.moveaxis(fused, 0, axis), reference.spacing, reference.origin, reference.direction)
    return result.to_sitk() if isinstance(volumes[0], sitk.Image) else result  # the kind of the first input


#: File extensions written as 8-bit grey levels (``round(255 * fused)``); others hold float32 in [0, 1].
EIGHT_BIT_OUTPUTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class WrittenFusion:
    """What :func:`fuse_files` wrote.

    :param path: the output file.
    :param method: what fused it.
    :param seconds: wall time of the fusion itself.
    :param dimension: 2 (an image) or 3 (a volume).
    """

    path: Path
    method: str
    seconds: float
    dimension: int


def fuse_files(
    inputs: Sequence[PathLike],
    output: PathLike,
    method: Method = "default",
    *,
    modalities: Sequence[str | None] | None = None,
    axis: int = 0,
    register: str | None = None,
    denoise: str | None = None,
    block_size: int | None = None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    model: Method = _UNSET,
) -> WrittenFusion:
    """Read K >= 2 registered images or volumes, fuse them, write the result atomically.

    What ``medfusion fuse`` does, for scripts. The output is checked before any work
    (never an input, never an existing file unless ``overwrite``, folder writable), the
    inputs are only read, and the output appears whole or not at all: a failure or a
    cancel leaves the disk as it was.

    2D inputs go through :func:`fuse` (a colour input is fused on luminance and the
    result written in colour); 3D inputs through :func:`fuse_volume`, the output on
    the first input's grid. PNG/JPEG/BMP/TIFF outputs hold ``uint8 = round(255 * fused)``,
    NIfTI/NRRD/MHA ``float32`` in [0, 1].

    :param inputs: image files (PNG, TIFF, JPEG, ...), volume files (NIfTI, NRRD, MHA) or DICOM series folders.
    :param output: the file to write; its extension picks the format.
    :param method: as in :func:`fuse`.
    :param modalities: optional modality per input for standardisation (see :func:`fuse`).
    :param axis: for volumes, the array axis to slice along.
    :param register: None (off), ``"rigid"`` or ``"affine"``: register inputs 2.. onto input 1 first.
    :param denoise: None (off) or a :func:`~MedFusionLib.preprocessing.denoise` method, applied to grey inputs.
    :param block_size: as in :func:`fuse`.
    :param device: as in :func:`fuse`.
    :param overwrite: replace an existing output file.
    :param progress: ``progress(fraction, message)`` (volumes: after every slice batch).
    :param cancel: ``cancel.is_set()`` is polled; raises :class:`FusionCancelled`, nothing written.
    :returns: a :class:`WrittenFusion`.
    :param model: the old name of ``method`` (deprecated; one release).
    :raises InputError: unreadable input, mismatched inputs, bad option, refused output.
    """
    from .preprocessing import RegistrationCancelled, align_to_first

    chosen = _chosen_method(method, model, "fuse_files")
    register, denoise = _off(register, "register", "fuse_files"), _off(denoise, "denoise", "fuse_files")

    if isinstance(inputs, (str, bytes, Path)):
        raise InputError("inputs: expected a list of at least 2 input files, got one path")
    inputs = list(inputs)
    if len(inputs) < 2:
        raise InputError("inputs: give at least 2 input files")
    if modalities is not None and len(modalities) != len(inputs):
        raise InputError(f"modalities: {len(modalities)} given for {len(inputs)} inputs")
    protected = [Path(p) for p in inputs]
    check_output_path(output, overwrite, protected)  # refuse a bad destination before the work
    remove_stale_temporaries(output)  # what a killed earlier run of this command left
    method = load_method(chosen)
    images = [read_image(path) for path in inputs]
    if len({image.dimension for image in images}) > 1:
        shapes = ", ".join(f"{Path(p).name}: {image.dimension}D" for p, image in zip(inputs, images))
        raise InputError(f"inputs: mixed 2D images and 3D volumes ({shapes})")
    try:
        images = align_to_first(images, denoise_method=denoise, register_transform=register, cancel=cancel)
    except RegistrationCancelled:
        raise FusionCancelled("fusion cancelled (pre-processing)") from None
    if cancel is not None and cancel.is_set():
        raise FusionCancelled("fusion cancelled")
    if images[0].dimension == 3:
        start = time.perf_counter()
        volume = fuse_volume(images, method, axis=axis, block_size=block_size, device=device,
                             modalities=modalities, progress=progress, cancel=cancel)
        seconds, name = time.perf_counter() - start, method_name(method)
        to_write, reference, is_colour = volume, None, False
    else:
        result = fuse([image.array if not image.is_color else image for image in images], method,
                      block_size=block_size, device=device, modalities=modalities)
        seconds, name = result.seconds, result.method
        is_colour = result.colour is not None
        to_write = result.colour if is_colour else result.image
        reference = None if is_colour else images[0]
        if Path(output).suffix.lower() in EIGHT_BIT_OUTPUTS:
            to_write = unit_to_uint8(to_write)
        if progress is not None:
            progress(1.0, "fused")
    if cancel is not None and cancel.is_set():
        raise FusionCancelled("fusion cancelled before writing; nothing was written")
    path = write_image(to_write, output, reference=reference, overwrite=overwrite, protected_paths=protected,
                       is_color=is_colour)
    return WrittenFusion(Path(path), name, seconds, images[0].dimension)
