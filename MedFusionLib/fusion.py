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

import contextlib
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
from .io import (
    LoadedImage,
    PathLike,
    atomic_output,
    check_output_path,
    read_image,
    remove_stale_temporaries,
    write_image,
)
from .preprocessing import (
    Chroma,
    UnitMapping,
    merge_luminance,
    percentile_normalisation,
    split_luminance,
    standardisation,
)
from .progress import CancelFlag, ProgressCallback
from .validation import check_int, source_name

#: The shipped default model (trained by ``medfusion train --recipe default``; see the README).
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "models" / "default_cnn.pt"
#: The shipped models by the name ``method`` takes: the default CNN and paper 000's DBM
#: (``medfusion train --recipe dbm``), so both papers' systems fuse without training first.
SHIPPED_MODELS = {"default": DEFAULT_MODEL_PATH, "dbm": DEFAULT_MODEL_PATH.with_name("dbm.pt")}

Method = Union[str, Path, FusionModel, FusionBaseline]


class FusionCancelled(Cancelled):
    """Raised when a fusion is cancelled; nothing was written and nothing is returned."""


@dataclass
class FusionResult:
    """What every fusion function returns: the fused image, what made it, how long it took.

    The same type for :func:`fuse` (2D), :func:`fuse_volume` (3D) and :func:`fuse_files`.

    :param image: the fused image, ``float32`` in [0, 1]: an array for :func:`fuse`; for
        :func:`fuse_volume` and :func:`fuse_files` of volumes, the kind of the first input
        (``SimpleITK.Image`` or :class:`LoadedImage`) on its grid.
    :param colour: ``(H, W, 3)`` ``float32`` RGB in [0, 1] when a 2D input was colour, else None.
    :param seconds: wall time of the fusion itself (after loading and standardisation).
    :param method: what fused it.
    :param contributions: with ``contributions=True``, each input's share of the fused value
        (in [0, 1], summing to 1 over the inputs; see :mod:`MedFusionLib.contributions`):
        a ``(K, H, W)`` array for 2D, a list of K volumes of ``image``'s kind for 3D. Else None.
    :param path: the file :func:`fuse_files` wrote, else None.
    :param contributions_path: the contribution file :func:`fuse_files` wrote, else None.
    """

    image: Any
    colour: np.ndarray | None
    seconds: float
    method: str
    contributions: Any = None
    path: Path | None = None
    contributions_path: Path | None = None

    @property
    def array(self) -> np.ndarray:
        """The fused image as a NumPy array (a volume in SimpleITK's ``(z, y, x)`` order)."""
        return _as_array(self.image)

    @property
    def dimension(self) -> int:
        """2 for an image, 3 for a volume."""
        return self.array.ndim


def _as_array(image: object) -> np.ndarray:
    """The pixels of a result's image or map, whatever its kind (array, LoadedImage, SimpleITK.Image)."""
    if isinstance(image, sitk.Image):
        return sitk.GetArrayFromImage(image)
    return image.array if isinstance(image, LoadedImage) else np.asarray(image)


#: :func:`fuse_files`' result had its own type before the API was unified; the name stays for one release.
WrittenFusion = FusionResult


_MODEL_CACHE: dict[tuple[str, float], FusionModel] = {}


def load_method(method: Method = "default") -> FusionModel | FusionBaseline:
    """Resolve ``method``: a shipped model's name (``"default"``, ``"dbm"``), a baseline name, a model
    path, a model or a baseline.

    :param method: what to fuse with.
    """
    if isinstance(method, (FusionModel, FusionBaseline)):
        return method
    if isinstance(method, str) and method.strip().lower() in BASELINES:
        return get_baseline(method)
    if isinstance(method, str) and method.strip().lower() in SHIPPED_MODELS:
        path = SHIPPED_MODELS[method.strip().lower()]
        if not path.is_file():
            raise InputError(f"the {method.strip().lower()!r} model file is missing from the installation ({path})")
    else:
        path = Path(method)
        if not path.exists() and not path.suffix:
            raise InputError(
                f"method {method!r}: not a model file, a shipped model ({', '.join(SHIPPED_MODELS)}), "
                f"or a baseline ({', '.join(sorted(BASELINES))})"
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
    return unit_range_mapping(array, modality, name)(array)


def unit_range_mapping(image: np.ndarray, modality: str | None = None, name: str = "image") -> UnitMapping:
    """:func:`to_unit_range` in two steps: the statistics of the whole ``image`` (validated), taken now,
    and the returned mapping of the image or any part of it -- a batch of a volume's slices -- to
    ``float32`` in [0, 1], with the same numbers as :func:`to_unit_range` of the whole.
    """
    array = np.asarray(image)
    if array.size == 0:
        raise InputError(f"{name}: the image is empty")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise InputError(f"{name}: expected a numeric image, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name}: contains NaN or infinite values")
    if modality is not None:
        mapping = standardisation(array, modality)
    elif array.dtype == np.uint8:
        return lambda part: part.astype(np.float32) / 255.0
    elif array.dtype == bool or (array.min() >= 0.0 and array.max() <= 1.0):
        return lambda part: part.astype(np.float32)
    else:
        mapping = percentile_normalisation(array)
    return lambda part: np.asarray(mapping(part), dtype=np.float32)


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
    contributions: bool = False,
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
    :param contributions: also compute each input's share of every fused pixel (``result.contributions``,
        ``(K, H, W)``; see :mod:`MedFusionLib.contributions`). The DBM model has none.
    :param model: the old name of ``method`` (deprecated; one release).
    :returns: a :class:`FusionResult`.
    """
    method = load_method(_chosen_method(method, model, "fuse"))
    prepared, chroma = _prepare_group(images, modalities)
    _check_inputs_fit(method, len(prepared))
    torch_device = resolve_device(device)  # checked for baselines too: a wrong device is a mistake
    if not isinstance(method, FusionModel) and (block_size is not None or stride is not None):
        raise InputError(f"block_size/stride: {method_name(method)} fuses whole images; blocks apply to learned models")
    check_contributions(method, contributions)
    start = time.perf_counter()
    shares = None
    if isinstance(method, FusionModel):
        fused = method.fuse(prepared, block_size=block_size, stride=stride, device=torch_device,
                            contributions=contributions)
        if contributions:
            fused, shares = fused
    elif contributions:
        fused, shares = method.fuse_with_contributions(prepared)
        fused, shares = fused.astype(np.float32), shares.astype(np.float32)
    else:
        fused = method.fuse(prepared).astype(np.float32)
    seconds = time.perf_counter() - start
    fused = np.clip(fused, 0.0, 1.0)
    colour = merge_luminance(fused, chroma).astype(np.float32) if chroma is not None else None
    return FusionResult(fused, colour, seconds, method_name(method), contributions=shares)


def check_contributions(method: FusionModel | FusionBaseline, contributions: object,
                        name: str = "contributions") -> None:
    """Refuse a contribution map before the work where the method has none (see
    :meth:`FusionModel.check_contributions`), and anything but True or False as the switch.

    :param method: a resolved method.
    :param contributions: the switch as given.
    :param name: how messages name the switch.
    """
    if not isinstance(contributions, bool):
        raise InputError(f"{name}: expected True or False, got {contributions!r}")
    if contributions and isinstance(method, FusionModel):
        method.check_contributions()


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
    contributions: bool = False,
    model: Method = _UNSET,
) -> FusionResult:
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
    :param contributions: also compute each input's share of every fused voxel
        (``result.contributions``: K volumes like ``result.image``; costs K more float32 volumes).
    :param model: the old name of ``method`` (deprecated; one release).
    :returns: a :class:`FusionResult` whose ``image`` is float32 in [0, 1] on the first volume's grid,
        of the first volume's kind: a ``SimpleITK.Image`` for a ``SimpleITK.Image`` (origin, spacing
        and direction exactly its), else a :class:`LoadedImage`.
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
    check_contributions(method, contributions)
    # Each volume's statistics are taken once, over the whole volume; the slices are standardised a
    # batch at a time from them (same numbers), so no standardised copy of the volumes is ever made.
    mappings = [unit_range_mapping(v.array, modalities[i] if modalities else None, f"volume {source_name(i)}")
                for i, v in enumerate(loaded)]

    def standardised(start: int, stop: int) -> np.ndarray:
        """Slices ``[start, stop)`` along ``axis`` of every volume on [0, 1]: ``(stop - start, K, h, w)``."""
        return np.stack([np.moveaxis(mapping(np.take(v.array, range(start, stop), axis=axis)), axis, 0)
                         for mapping, v in zip(mappings, loaded)], axis=1)

    count = reference.array.shape[axis]
    plane = tuple(n for a, n in enumerate(reference.array.shape) if a != axis)
    fused = np.empty((count, *plane), dtype=np.float32)
    shares = np.empty((len(loaded), count, *plane), dtype=np.float32) if contributions else None  # (K, S, h, w)
    resolved = resolve_device(device)
    torch_device = resolved if isinstance(method, FusionModel) else None
    if torch_device is None and block_size is not None:
        raise InputError(f"block_size: {method_name(method)} fuses whole images; blocks apply to learned models")
    if torch_device is not None:
        method.to(torch_device)
    if batch_size is None:
        batch_size = 32 if torch_device is not None and torch_device.type == "cuda" else 4
    clock = time.perf_counter()
    with inference_context():
        for start in range(0, count, batch_size):
            if cancel is not None and cancel.is_set():
                raise FusionCancelled("fusion cancelled")
            stop = min(start + batch_size, count)
            group = standardised(start, stop)  # (b, K, h, w)
            if isinstance(method, FusionModel):
                out = method.fuse_tensor(torch.from_numpy(group).to(torch_device), block_size=block_size,
                                         contributions=contributions)
                if contributions:
                    out, batch_shares = out
                    shares[:, start:stop] = batch_shares.float().cpu().numpy().transpose(1, 0, 2, 3)
                fused[start:stop] = out[:, 0].float().cpu().numpy()
            else:
                for s in range(start, stop):
                    if contributions:
                        fused[s], shares[:, s] = method.fuse_with_contributions(list(group[s - start]))
                    else:
                        fused[s] = method.fuse(list(group[s - start]))
            if progress is not None:
                progress(stop / count, f"fused slices {stop}/{count}")
    seconds = time.perf_counter() - clock
    np.clip(fused, 0.0, 1.0, out=fused)  # in place: a second volume-sized array would cost memory
    as_input = isinstance(volumes[0], sitk.Image)  # results are of the first input's kind

    def on_grid(array: np.ndarray) -> object:
        volume = LoadedImage(np.moveaxis(array, 0, axis), reference.spacing, reference.origin, reference.direction)
        return volume.to_sitk() if as_input else volume

    maps = None if shares is None else [on_grid(share) for share in shares]
    return FusionResult(on_grid(fused), None, seconds, method_name(method), contributions=maps)


#: File extensions written as 8-bit grey levels (``round(255 * fused)``); others hold float32 in [0, 1].
EIGHT_BIT_OUTPUTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: File extensions a contribution map can be written to (K float32 components per pixel).
CONTRIBUTION_OUTPUTS = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".tif", ".tiff")


def prepare_inputs(
    images: Sequence[LoadedImage],
    *,
    register: str | None = None,
    denoise: str | None = None,
    cancel: CancelFlag | None = None,
) -> list[LoadedImage]:
    """A group's pre-processing, as ``medfusion fuse`` and every case of ``medfusion batch`` run it:
    one dimension for all, then denoising and registration of inputs 2.. onto input 1's grid when asked
    (:func:`~MedFusionLib.preprocessing.align_to_first`). Then :func:`fuse_prepared`.

    :param images: K >= 2 :class:`LoadedImage` (as :func:`~MedFusionLib.io.read_image` gives); not modified.
    :param register: None (off), ``"rigid"`` or ``"affine"``.
    :param denoise: None (off) or a :func:`~MedFusionLib.preprocessing.denoise` method, for grey inputs.
    :param cancel: polled; raises :class:`FusionCancelled`.
    """
    from .preprocessing import RegistrationCancelled, align_to_first

    images = list(images)
    if len({image.dimension for image in images}) > 1:
        shapes = ", ".join(f"{Path(image.path).name if image.path else source_name(i)}: {image.dimension}D"
                           for i, image in enumerate(images))
        raise InputError(f"inputs: mixed 2D images and 3D volumes ({shapes})")
    if register or denoise:
        try:
            images = align_to_first(images, denoise_method=denoise, register_transform=register, cancel=cancel)
        except RegistrationCancelled:
            raise FusionCancelled("fusion cancelled (pre-processing)") from None
    if cancel is not None and cancel.is_set():
        raise FusionCancelled("fusion cancelled")
    return images


def fuse_prepared(
    images: Sequence[LoadedImage],
    method: Method = "default",
    *,
    axis: int = 0,
    batch_size: int | None = None,
    block_size: int | None = None,
    stride: int | None = None,
    device: str | torch.device | None = None,
    modalities: Sequence[str | None] | None = None,
    contributions: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> FusionResult:
    """A group from :func:`prepare_inputs`, fused: 2D images by :func:`fuse`, volumes by :func:`fuse_volume`.

    :param images: K >= 2 :class:`LoadedImage` of one dimension.
    :param method: as in :func:`fuse`.
    :param axis: for volumes, the array axis to slice along.
    :param batch_size: for volumes, slices per forward pass (see :func:`fuse_volume`).
    :param block_size: as in :func:`fuse`.
    :param stride: for 2D images, as in :func:`fuse`.
    :param device: as in :func:`fuse`.
    :param modalities: as in :func:`fuse`.
    :param contributions: as in :func:`fuse`.
    :param progress: ``progress(fraction, message)``.
    :param cancel: polled; raises :class:`FusionCancelled`.
    :returns: a :class:`FusionResult` (``image`` a :class:`LoadedImage` for volumes).
    """
    if images[0].dimension == 3:
        result = fuse_volume(images, method, axis=axis, batch_size=batch_size, block_size=block_size, device=device,
                             modalities=modalities, contributions=contributions, progress=progress, cancel=cancel)
    else:
        result = fuse([image.array if not image.is_color else image for image in images], method,
                      block_size=block_size, stride=stride, device=device, modalities=modalities,
                      contributions=contributions)
        if progress is not None:
            progress(1.0, "fused")
    if cancel is not None and cancel.is_set():
        raise FusionCancelled("fusion cancelled")
    return result


def contribution_image(result: FusionResult, reference: LoadedImage) -> sitk.Image:
    """A result's contribution map as one ``SimpleITK`` vector image on ``reference``'s grid:
    component k is input k's share (float32 in [0, 1]).

    :param result: a result computed with ``contributions=True``.
    :param reference: the image whose geometry the map takes (input 1).
    """
    if result.contributions is None:
        raise InputError("contributions: this result was computed without contributions=True")
    maps = result.contributions
    if not isinstance(maps, np.ndarray):  # volumes: one image per input
        maps = np.stack([_as_array(m) for m in maps])
    image = sitk.GetImageFromArray(np.moveaxis(maps.astype(np.float32), 0, -1), isVector=True)
    # The reference's geometry itself (not a SimpleITK copy of all its pixels made to read it back).
    image.SetSpacing(tuple(float(v) for v in reference.spacing))
    image.SetOrigin(tuple(float(v) for v in reference.origin))
    image.SetDirection(tuple(float(v) for v in reference.direction))
    return image


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
    contributions: PathLike | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    model: Method = _UNSET,
) -> FusionResult:
    """Read K >= 2 registered images or volumes, fuse them, write the result atomically.

    What ``medfusion fuse`` does, for scripts. The outputs are checked before any work
    (never an input, never an existing file unless ``overwrite``, folder writable), the
    inputs are only read, and the outputs appear whole or not at all: a failure or a
    cancel leaves the disk as it was.

    The group goes through :func:`prepare_inputs` and :func:`fuse_prepared` (:func:`fuse` for 2D --
    a colour input is fused on luminance and the result written in colour -- or
    :func:`fuse_volume` for 3D, the output on the first input's grid). PNG/JPEG/BMP/TIFF
    outputs hold ``uint8 = round(255 * fused)``, NIfTI/NRRD/MHA ``float32`` in [0, 1].

    :param inputs: image files (PNG, TIFF, JPEG, ...), volume files (NIfTI, NRRD, MHA) or DICOM series folders.
    :param output: the file to write; its extension picks the format.
    :param method: as in :func:`fuse`.
    :param modalities: optional modality per input for standardisation (see :func:`fuse`).
    :param axis: for volumes, the array axis to slice along.
    :param register: None (off), ``"rigid"`` or ``"affine"``: register inputs 2.. onto input 1 first.
    :param denoise: None (off) or a :func:`~MedFusionLib.preprocessing.denoise` method, applied to grey inputs.
    :param block_size: as in :func:`fuse`.
    :param device: as in :func:`fuse`.
    :param overwrite: replace existing output files.
    :param contributions: also write the contribution map here (NIfTI, NRRD, MHA or TIFF): one float32
        component per input, its share of each fused pixel (see :mod:`MedFusionLib.contributions`).
    :param progress: ``progress(fraction, message)`` (volumes: after every slice batch).
    :param cancel: ``cancel.is_set()`` is polled; raises :class:`FusionCancelled`, nothing written.
    :param model: the old name of ``method`` (deprecated; one release).
    :returns: a :class:`FusionResult` with ``path`` (and ``contributions_path``) set.
    :raises InputError: unreadable input, mismatched inputs, bad option, refused output.
    """
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
    if contributions is not None:
        if not str(contributions).lower().endswith(CONTRIBUTION_OUTPUTS):
            raise InputError(f"contributions: {contributions}: write the map to one of {', '.join(CONTRIBUTION_OUTPUTS)}")
        check_output_path(contributions, overwrite, protected)
        if Path(contributions).resolve() == Path(output).resolve():
            raise InputError("contributions: give it a file of its own, not the fused output")
        remove_stale_temporaries(contributions)
    remove_stale_temporaries(output)  # what a killed earlier run of this command left
    method = load_method(chosen)
    images = prepare_inputs([read_image(path) for path in inputs], register=register, denoise=denoise, cancel=cancel)
    result = fuse_prepared(images, method, axis=axis, block_size=block_size, device=device, modalities=modalities,
                           contributions=contributions is not None, progress=progress, cancel=cancel)
    is_colour = result.colour is not None
    to_write = result.colour if is_colour else result.image
    if result.dimension == 2 and Path(output).suffix.lower() in EIGHT_BIT_OUTPUTS:
        to_write = unit_to_uint8(to_write)
    reference = None if (is_colour or result.dimension == 3) else images[0]
    if cancel is not None and cancel.is_set():
        raise FusionCancelled("fusion cancelled before writing; nothing was written")
    with contextlib.ExitStack() as outputs:
        # The map is written to a private temporary folder and renamed into place only once
        # the fused output is written, so a failure of either leaves neither.
        if contributions is not None:
            map_temporary = outputs.enter_context(atomic_output(contributions, overwrite, protected))
            try:
                sitk.WriteImage(contribution_image(result, images[0]), str(map_temporary), True)
            except RuntimeError as exc:
                raise InputError(f"contributions: cannot write {contributions}: {str(exc).strip()[-200:]}") from None
            result.contributions_path = Path(contributions)
        write_image(to_write, output, reference=reference, overwrite=overwrite, protected_paths=protected,
                    is_color=is_colour)
    result.path = Path(output)
    return result
