"""Small images, volumes, damaged files and model files for the robustness catalogue.

Files are written with SimpleITK, Pillow and torch directly rather than with
``MedFusionLib.io`` so that a case tests MedFusion's reader against files made by
someone else. Everything is tiny (tens of pixels a side) so the catalogue runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch
from PIL import Image

SHAPE_2D = (40, 48)
SHAPE_3D = (6, 32, 28)


def phantom(shape: Sequence[int] = SHAPE_2D, kind: str = "ct", seed: int = 0) -> np.ndarray:
    """A float64 head-like phantom in [0, 1]: a bright ring ("ct") or soft tissue with texture ("mri")."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids[-2:]) + (0.3 * grids[0] ** 2 if len(shape) == 3 else 0))
    if kind == "ct":
        image = np.where((radius > 0.7) & (radius < 0.85), 0.95, np.where(radius < 0.7, 0.35, 0.0))
    else:
        image = np.where(radius < 0.75, 0.5 + 0.3 * np.cos(6 * grids[-1]) * np.sin(5 * grids[-2]), 0.05)
    return np.clip(image + rng.normal(0, 0.01, shape), 0, 1)


def pair(shape: Sequence[int] = SHAPE_2D) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like and an MRI-like phantom of one shape, float64 in [0, 1]."""
    return phantom(shape, "ct", 1), phantom(shape, "mri", 2)


def as_dtype(image: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """``image`` in [0, 1] spread over a useful part of ``dtype``'s range."""
    dtype = np.dtype(dtype)
    if dtype == bool:
        return image > 0.5
    if dtype.kind == "f":
        return image.astype(dtype)
    info = np.iinfo(dtype)
    top = min(info.max, 4000)  # large types: realistic scanner values, not 2^63
    bottom = max(info.min, -1000) if info.min < 0 else 0
    return np.rint(bottom + image * (top - bottom)).astype(dtype)


def write_sitk(
    path: Path,
    array: np.ndarray,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    vector: bool = False,
) -> Path:
    """Write ``array`` (z, y, x) or (y, x) with SimpleITK, with optional geometry."""
    image = sitk.GetImageFromArray(array, isVector=vector)
    if spacing is not None:
        image.SetSpacing([float(v) for v in spacing])
    if origin is not None:
        image.SetOrigin([float(v) for v in origin])
    if direction is not None:
        image.SetDirection([float(v) for v in direction])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Write a PNG with Pillow: grey 8/16-bit, RGB, RGBA, LA or palette (``mode="P"``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        Image.fromarray(np.asarray(array, np.uint8), "RGB").convert("P", palette=Image.ADAPTIVE, colors=64).save(path)
    elif mode == "I;16":
        Image.fromarray(np.asarray(array, np.uint16)).save(path)  # Pillow writes uint16 as a 16-bit PNG
    else:
        Image.fromarray(np.asarray(array, np.uint8), mode).save(path)
    return path


def grey_png_pair(folder: Path, shape: Sequence[int] = SHAPE_2D) -> list[Path]:
    a, b = pair(shape)
    return [write_png(folder / "ct.png", np.rint(a * 255)), write_png(folder / "mri.png", np.rint(b * 255))]


def volume_pair(folder: Path, shape: Sequence[int] = SHAPE_3D, suffix: str = ".nii.gz", **geometry) -> list[Path]:
    """Two float32 volumes with the same (given) geometry."""
    a, b = pair(shape)
    return [write_sitk(folder / f"ct{suffix}", a.astype(np.float32), **geometry),
            write_sitk(folder / f"mri{suffix}", b.astype(np.float32), **geometry)]


def pseudo_colour(image: np.ndarray) -> np.ndarray:
    """A hot-iron-like RGB uint8 rendering of a [0, 1] image (what PET/SPECT exports look like)."""
    return np.rint(np.stack([np.clip(3 * image, 0, 1), np.clip(3 * image - 1, 0, 1), np.clip(3 * image - 2, 0, 1)],
                            axis=-1) * 255).astype(np.uint8)


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its length (a copy interrupted half-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def garbage(path: Path, size: int = 2000, seed: int = 0) -> Path:
    """A file of random bytes under a real image name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


# ----------------------------------------------------------------------------- model files


def small_model_file(path: Path, family: str = "cnn", n_inputs: int = 2, block_size: int = 16) -> Path:
    """A real (untrained, tiny) MedFusion model file written by :meth:`FusionModel.save`."""
    from MedFusionLib.engine.model import FusionModel

    config = {"width": 4, "hidden": 8, "levels": 2} if family == "cnn" else {"layer_sizes": (32,)}
    model = FusionModel.create(family, n_inputs=n_inputs, block_size=block_size, **config)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def edited_model_file(path: Path, edit: str) -> Path:
    """A model file whose payload was changed after saving: ``family``, ``version`` or ``weights``."""
    small_model_file(path)
    payload = torch.load(path, weights_only=True)
    info = json.loads(payload["info"])
    if edit == "family":
        info["family"] = "gan"
    elif edit == "version":
        payload["format_version"] = 99
    elif edit == "weights":  # right tags, weights of another network
        first = next(iter(payload["state_dict"]))
        payload["state_dict"][first] = torch.zeros(3, 3)
    else:
        raise ValueError(edit)
    payload["info"] = json.dumps(info)
    torch.save(payload, path)
    return path


class _RunsCodeWhenUnpickled:
    """Unpickling this creates ``marker`` (a harmless stand-in for any code an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_model_file(path: Path, marker: Path) -> Path:
    """A ``.pt`` file whose pickle would create ``marker`` if it were loaded with full unpickling."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "medfusion-model", "payload": _RunsCodeWhenUnpickled(marker)}, path)
    return path
