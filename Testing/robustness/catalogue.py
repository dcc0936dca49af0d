"""The catalogue of bad inputs and faults, with the expected behaviour per entry point.

Each :class:`Case` builds its inputs in a fresh folder and says, for every entry point it
applies to (``api``, ``cli``, ``batch``, ``slicer``; see :mod:`robustness.runners`), whether
MedFusion must succeed, refuse with one clear error matching a pattern (the input and the
problem), or stop cleanly on cancel. Whatever the outcome, inputs stay byte-identical and no
partial output is left: the runners check that for every case.

``docs/robustness.md`` is generated from this list (``python benchmarks/robustness_report.py
--markdown docs/robustness.md``) and a test keeps the two in step.
"""

from __future__ import annotations

import contextlib
import locale
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import SimpleITK as sitk
import torch

from . import builders as b
from .runners import CANCELLED, OK, Expect, Scenario, error

ALL = ("api", "cli", "batch", "slicer")
FILES = ("api", "cli", "batch")  # entry points that read files themselves


@dataclass(frozen=True)
class Case:
    """One bad input or fault.

    :param id: short unique name.
    :param category: geometry, values, types, formats, files, outputs, models, options, scene, runtime, security.
    :param title: what is wrong with the input, in a few words.
    :param build: ``build(inputs_folder) -> Scenario``.
    :param entries: entry point -> what it must do.
    :param custom: for cases that need more than one run (a killed batch restarted):
        ``custom(work, scenario) -> (status, message)`` replaces the generic runner; the
        scenario's inputs are built (and hashed) first.
    :param unavailable: ``unavailable() -> reason`` when the case means nothing on this machine
        (e.g. a permission test run as root); empty when it can run.
    """

    id: str
    category: str
    title: str
    build: Callable[[Path], Scenario]
    entries: dict[str, Expect]
    custom: Callable[[Path, Scenario], tuple[str, str]] | None = None
    unavailable: Callable[[], str] = lambda: ""


def _every(expect: Expect, entries: tuple[str, ...] = ALL, **overrides: Expect) -> dict[str, Expect]:
    return {entry: overrides.get(entry, expect) for entry in entries}


CASES: list[Case] = []


def case(id: str, category: str, title: str, entries: dict[str, Expect],
         custom: Callable[[Path, Scenario], tuple[str, str]] | None = None,
         unavailable: Callable[[], str] = lambda: "") -> Callable:
    """Register the decorated builder as a catalogue case."""

    def register(build: Callable[[Path], Scenario]) -> Callable[[Path], Scenario]:
        CASES.append(Case(id, category, title, build, entries, custom, unavailable))
        return build

    return register


# ============================================================================ geometry

@case("shape-mismatch-2d", "geometry", "2D inputs of different shapes", _every(error(r"shape|dimension")))
def _(folder: Path) -> Scenario:
    a, _ = b.pair((40, 48))
    _, other = b.pair((40, 44))
    return Scenario([b.write_png(folder / "ct.png", a * 255), b.write_png(folder / "mri.png", other * 255)],
                    output_name="fused.png")


@case("shape-mismatch-3d", "geometry", "volumes of different shapes", _every(error(r"shape|dimension")))
def _(folder: Path) -> Scenario:
    a, _ = b.pair((6, 32, 28))
    _, other = b.pair((5, 32, 28))
    return Scenario([b.write_sitk(folder / "ct.nii.gz", a.astype(np.float32)),
                     b.write_sitk(folder / "mri.nii.gz", other.astype(np.float32))])


def _geometry_mismatch(**second: object) -> Callable[[Path], Scenario]:
    def build(folder: Path) -> Scenario:
        a, c = b.pair(b.SHAPE_3D)
        return Scenario([b.write_sitk(folder / "ct.nii.gz", a.astype(np.float32)),
                         b.write_sitk(folder / "mri.nii.gz", c.astype(np.float32), **second)])

    return build


_ROTATED = tuple(np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]).ravel())
case("spacing-mismatch", "geometry", "same shape, different voxel spacing",
     _every(error(r"spacing|geometry|grid")))(_geometry_mismatch(spacing=(1.0, 1.0, 2.0)))
case("origin-mismatch", "geometry", "same shape, different origin",
     _every(error(r"origin|geometry|grid")))(_geometry_mismatch(origin=(5.0, 0.0, 0.0)))
case("direction-mismatch", "geometry", "same shape, different orientation",
     _every(error(r"direction|geometry|grid")))(_geometry_mismatch(direction=_ROTATED))


@case("mixed-2d-3d", "geometry", "a 2D image with a 3D volume", _every(error(r"2D|3D|dimension"), FILES))
def _(folder: Path) -> Scenario:
    a, _ = b.pair((32, 28))
    _, c = b.pair(b.SHAPE_3D)
    return Scenario([b.write_png(folder / "ct.png", a * 255), b.write_sitk(folder / "mri.nii.gz", c.astype(np.float32))])


# ============================================================================ values

def _with_value(value: float) -> Callable[[Path], Scenario]:
    def build(folder: Path) -> Scenario:
        a, c = b.pair(b.SHAPE_3D)
        c = c.astype(np.float32)
        c[2, 10, 10] = value
        # NRRD, not NIfTI: ITK's NIfTI reader turns NaN into 0 before MedFusion could see it
        return Scenario([b.write_sitk(folder / "ct.nrrd", a.astype(np.float32)), b.write_sitk(folder / "mri.nrrd", c)])

    return build


case("nan-voxel", "values", "one NaN voxel in a volume", _every(error(r"NaN")))(_with_value(np.nan))
case("inf-voxel", "values", "one infinite voxel in a volume", _every(error(r"NaN|infinite")))(_with_value(np.inf))


@case("constant-input", "values", "one input constant everywhere", _every(OK))
def _(folder: Path) -> Scenario:
    a, _ = b.pair(b.SHAPE_3D)
    return Scenario([b.write_sitk(folder / "ct.nii.gz", a.astype(np.float32)),
                     b.write_sitk(folder / "mri.nii.gz", np.full(b.SHAPE_3D, 7.5, np.float32))])


@case("all-zero", "values", "every input all zeros", _every(OK))
def _(folder: Path) -> Scenario:
    zeros = np.zeros(b.SHAPE_3D, np.int16)
    return Scenario([b.write_sitk(folder / "ct.nii.gz", zeros), b.write_sitk(folder / "mri.nii.gz", zeros)])


@case("empty-array", "values", "0x0 arrays", {"api": error(r"empty")})
def _(folder: Path) -> Scenario:
    return Scenario(arrays=[np.zeros((0, 0)), np.zeros((0, 0))])


@case("one-pixel", "values", "1x1 images", _every(OK))
def _(folder: Path) -> Scenario:
    return Scenario([b.write_png(folder / "ct.png", np.array([[200]])), b.write_png(folder / "mri.png", np.array([[40]]))],
                    output_name="fused.png")


@case("one-row", "values", "1x64 strip images", _every(OK))
def _(folder: Path) -> Scenario:
    a, c = b.pair((1, 64))
    return Scenario([b.write_png(folder / "ct.png", a * 255), b.write_png(folder / "mri.png", c * 255)],
                    output_name="fused.png")


@case("very-large", "values", "a 2048x2048 pair", {"api": OK})
def _(folder: Path) -> Scenario:
    a, c = b.pair((2048, 2048))
    return Scenario(arrays=[a.astype(np.float32), c.astype(np.float32)])


@case("extreme-intensities", "values", "float64 values near +-1e300", {"api": OK, "slicer": OK})
def _(folder: Path) -> Scenario:
    a, c = b.pair(b.SHAPE_2D)
    return Scenario(arrays=[(a - 0.5) * 1e300, c * 1e-300])


@case("negative-ct", "values", "int16 CT in Hounsfield units (-1024..3071) with modalities", _every(OK))
def _(folder: Path) -> Scenario:
    a, c = b.pair(b.SHAPE_3D)
    ct = np.rint(-1024 + a * 4095).astype(np.int16)
    return Scenario([b.write_sitk(folder / "ct.nrrd", ct), b.write_sitk(folder / "mri.nrrd", np.rint(c * 900).astype(np.uint16))],
                    options={"modalities": ["CT", "MRI"]})


# ============================================================================ types

_NRRD_TYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "uint64", "float32", "float64"]
for _dtype in [*_NRRD_TYPES, "float16", "bool"]:
    def _build(folder: Path, dtype: str = _dtype) -> Scenario:
        a, c = b.pair(b.SHAPE_2D)
        arrays = [b.as_dtype(a, dtype), b.as_dtype(c, dtype)]
        if dtype not in _NRRD_TYPES:  # NRRD/NIfTI cannot hold it: arrays only
            return Scenario(arrays=arrays)
        return Scenario([b.write_sitk(folder / "ct.nrrd", arrays[0]), b.write_sitk(folder / "mri.nrrd", arrays[1])])

    # NRRD stores every integer and float type but float16 and bool; Slicer's volume nodes hold
    # neither those nor 64-bit integers (slicer.util refuses them), so those run through fewer entry points
    entries = FILES if _dtype in ("int64", "uint64") else ALL if _dtype in _NRRD_TYPES else ("api",)
    case(f"dtype-{_dtype}", "types", f"{_dtype} pixels", _every(OK, entries))(_build)


@case("mixed-dtypes", "types", "uint8 with float32 and int16 in one group of three", {"api": OK, "slicer": OK})
def _(folder: Path) -> Scenario:
    a, c = b.pair(b.SHAPE_2D)
    return Scenario(arrays=[b.as_dtype(a, "uint8"), c.astype(np.float32), b.as_dtype(c, "int16")])


# ============================================================================ formats

@case("png-16-bit", "formats", "16-bit grey PNGs", _every(OK, FILES))
def _(folder: Path) -> Scenario:
    a, c = b.pair(b.SHAPE_2D)
    return Scenario([b.write_png(folder / "ct.png", a * 65535, "I;16"), b.write_png(folder / "mri.png", c * 65535, "I;16")],
                    output_name="fused.png")


def _colour(mode: str) -> Callable[[Path], Scenario]:
    def build(folder: Path) -> Scenario:
        a, c = b.pair(b.SHAPE_2D)
        rgb = b.pseudo_colour(c)
        if mode == "RGBA":
            rgb = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
        return Scenario([b.write_png(folder / "mri.png", a * 255), b.write_png(folder / "pet.png", rgb, None if mode == "P" else mode)
                         if mode != "P" else b.write_png(folder / "pet.png", rgb, "P")], output_name="fused.png")

    return build


case("rgb-png", "formats", "pseudo-colour RGB PET beside grey MRI",
     _every(OK, slicer=error(r"vector|colour|scalar")))(_colour("RGB"))
case("rgba-png", "formats", "RGBA PNG (alpha channel)", _every(OK, slicer=error(r"vector|colour|scalar")))(_colour("RGBA"))
case("palette-png", "formats", "palette (indexed-colour) PNG", _every(OK, FILES))(_colour("P"))


@case("grey-alpha-png", "formats", "grey + alpha PNG (2 channels; SimpleITK cannot read it)",
      _every(error(r"mri\.png.*grey\+alpha.*save it as grey or RGB"), FILES))
def _(folder: Path) -> Scenario:
    a, c = b.pair(b.SHAPE_2D)
    la = np.stack([np.rint(c * 255), np.full(c.shape, 255)], axis=-1)
    return Scenario([b.write_png(folder / "ct.png", a * 255), b.write_png(folder / "mri.png", la, "LA")],
                    output_name="fused.png")


@case("vector-volume", "formats", "3-component vector volume", _every(error(r"vector|component|colour|grey")))
def _(folder: Path) -> Scenario:
    a, c = b.pair(b.SHAPE_3D)
    vector = np.stack([c, c, c], axis=-1).astype(np.float32)
    return Scenario([b.write_sitk(folder / "ct.nrrd", a.astype(np.float32)), b.write_sitk(folder / "mri.nrrd", vector, vector=True)])


@case("volume-4d", "formats", "4D NIfTI (a time series)", _every(error(r"4D|vector|component|dimension")))
def _(folder: Path) -> Scenario:
    a, c = b.pair(b.SHAPE_3D)
    series = sitk.JoinSeries([sitk.GetImageFromArray(c.astype(np.float32))] * 3)
    sitk.WriteImage(series, str(folder / "mri.nii.gz"))
    return Scenario([b.write_sitk(folder / "ct.nii.gz", a.astype(np.float32)), folder / "mri.nii.gz"])


def _as_label_map(scene, nodes):
    """Replace the second input by a label map node on the same grid (a segmentation)."""
    import slicer
    import vtk

    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "segmentation")
    matrix = vtk.vtkMatrix4x4()
    nodes[1].GetIJKToRASMatrix(matrix)
    label.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(label, (slicer.util.arrayFromVolume(nodes[1]) > 0.5).astype(np.int16))
    return [nodes[0], label], {}


@case("label-map", "scene", "a label map node as an input", {"slicer": error(r"label")})
def _(folder: Path) -> Scenario:
    return Scenario(b.volume_pair(folder), slicer=_as_label_map)


@case("empty-volume-node", "scene", "a volume node without image data", {"slicer": error(r"empty|no image|no voxel")})
def _(folder: Path) -> Scenario:
    def empty_second(scene, nodes):
        return [nodes[0], scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")], {}

    return Scenario(b.volume_pair(folder), slicer=empty_second)


def _filled_output_node(scene, nodes):
    """An output volume node that already holds an earlier result, which a failed run must keep."""
    import slicer

    earlier = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "earlier result")
    slicer.util.updateVolumeFromArray(earlier, np.full((3, 8, 8), 0.25, np.float32))
    earlier.CreateDefaultDisplayNodes()
    return nodes, {"outputVolumeNode": earlier}


@case("error-keeps-output-node", "scene", "a bad input (NaN) with an existing output volume chosen",
      {"slicer": error(r"NaN")})
def _(folder: Path) -> Scenario:
    return Scenario(_with_value(np.nan)(folder).inputs, slicer=_filled_output_node)


@case("cancel-keeps-output-node", "scene", "cancel half-way with an existing output volume chosen",
      {"slicer": CANCELLED})
def _(folder: Path) -> Scenario:
    return Scenario(b.volume_pair(folder, shape=(12, 32, 28)), cancel_at=0.3, slicer=_filled_output_node)


@case("no-input", "scene", "no input volume selected", {"slicer": error(r"at least 2 volumes are needed, got 0")})
def _(folder: Path) -> Scenario:
    return Scenario(b.volume_pair(folder), slicer=lambda scene, nodes: ([], {}))


@case("same-node-twice", "scene", "the same volume node as both inputs", {"slicer": error(r"same|twice|duplicate")})
def _(folder: Path) -> Scenario:
    return Scenario(b.volume_pair(folder), slicer=lambda scene, nodes: ([nodes[0], nodes[0]], {}))


@case("output-node-is-input", "scene", "output volume node is one of the inputs", {"slicer": error(r"output.*input|input.*output")})
def _(folder: Path) -> Scenario:
    return Scenario(b.volume_pair(folder), slicer=lambda scene, nodes: (nodes, {"outputVolumeNode": nodes[1]}))


# ============================================================================ files

def _damaged(name: str, damage: Callable[[Path], object]) -> Callable[[Path], Scenario]:
    def build(folder: Path) -> Scenario:
        paths = b.grey_png_pair(folder) if name.endswith(".png") else b.volume_pair(folder, suffix=name[name.index("."):])
        damage(paths[0])
        return Scenario(paths, output_name="fused.png" if name.endswith(".png") else "fused.nii.gz")

    return build


_UNREADABLE = r"ct\.(png|nii\.gz|nrrd).*(read|corrupt|truncat|damaged|empty|not an? )"
case("truncated-png", "files", "PNG cut in half", _every(error(_UNREADABLE), FILES))(
    _damaged("ct.png", b.truncate))
case("corrupt-png", "files", "random bytes named .png", _every(error(_UNREADABLE), FILES))(
    _damaged("ct.png", lambda p: b.garbage(p)))
case("zero-byte-file", "files", "an empty (0-byte) image file", _every(error(_UNREADABLE), FILES))(
    _damaged("ct.png", lambda p: p.write_bytes(b"")))
case("truncated-nifti", "files", "NIfTI cut in half", _every(error(_UNREADABLE), FILES))(
    _damaged("ct.nii.gz", b.truncate))
case("corrupt-nifti", "files", "random bytes named .nii.gz", _every(error(_UNREADABLE), FILES))(
    _damaged("ct.nii.gz", lambda p: b.garbage(p, 5000)))


@case("empty-volume-file", "files", "an NRRD volume with a zero-length axis", _every(error(_UNREADABLE), FILES))
def _(folder: Path) -> Scenario:
    paths = b.volume_pair(folder, suffix=".nrrd")
    paths[0].write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 28 32 0\nencoding: raw\nendian: little\n\n")
    return Scenario(paths)


@case("corrupt-nrrd-header", "files", "NRRD header promising more data than the file holds",
      _every(error(_UNREADABLE), FILES))
def _(folder: Path) -> Scenario:
    paths = b.volume_pair(folder, suffix=".nrrd")
    data = paths[0].read_bytes()
    header_end = data.index(b"\n\n") + 2
    header = data[:header_end].replace(b"sizes: 28 32 6", b"sizes: 28 32 60").replace(b"encoding: gzip", b"encoding: raw")
    paths[0].write_bytes(header + data[header_end:][:100])
    return Scenario(paths)


def _dicom_series(folder: Path, array: np.ndarray) -> Path:
    series = folder / "ct_dicom"
    series.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with _locale_kept():  # GDCM's DICOM writer switches the process locale to "C"
        _write_slices(writer, series, array)
    return series


@contextlib.contextmanager
def _locale_kept() -> Iterator[None]:
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(writer: sitk.ImageFileWriter, series: Path, array: np.ndarray) -> None:
    for z in range(array.shape[0]):
        image = sitk.GetImageFromArray(array[z])
        for tag, value in (("0008|0060", "CT"), ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.99"),
                           ("0020|000d", "1.2.826.0.1.3680043.2.1125.1.98"),
                           ("0020|0013", str(z + 1)), ("0020|0032", f"0\\0\\{z}"), ("0028|0030", "1\\1")):
            image.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"slice{z:03d}.dcm"))
        writer.Execute(image)


@case("truncated-dicom", "files", "DICOM series with one slice file cut short",
      _every(error(r"ct_dicom.*(read|corrupt|truncat|damaged|slice|DICOM)"), FILES))
def _(folder: Path) -> Scenario:
    a, c = b.pair(b.SHAPE_3D)
    series = _dicom_series(folder, np.rint(a * 1000).astype(np.int16))
    b.truncate(series / "slice002.dcm", 0.7)  # a copy cut short: header kept, pixel data cut
    return Scenario([series, b.write_sitk(folder / "mri.nii.gz", c.astype(np.float32))])


@case("dicom-series", "formats", "a CT DICOM series folder (int16 HU) with an MRI NIfTI", _every(OK, FILES))
def _(folder: Path) -> Scenario:
    a, c = b.pair(b.SHAPE_3D)
    return Scenario([_dicom_series(folder, np.rint(-1000 + a * 3000).astype(np.int16)),
                     b.write_sitk(folder / "mri.nii.gz", c.astype(np.float32))], options={"modalities": ["CT", "MRI"]})


@case("folder-not-dicom", "files", "a folder without DICOM files where an image is expected",
      _every(error(r"empty_folder.*(DICOM|folder|directory)"), FILES))
def _(folder: Path) -> Scenario:
    (folder / "empty_folder").mkdir()
    return Scenario([folder / "empty_folder", *b.grey_png_pair(folder)[1:]], output_name="fused.png")


@case("missing-file", "files", "an input path that does not exist", _every(error(r"nowhere\.png.*no such file"), FILES))
def _(folder: Path) -> Scenario:
    return Scenario([folder / "nowhere.png", *b.grey_png_pair(folder)[1:]], output_name="fused.png")


@case("text-file", "files", "a text file named .png", _every(error(r"notes\.png"), FILES))
def _(folder: Path) -> Scenario:
    (folder / "notes.png").write_text("patient notes, not an image\n")
    return Scenario([folder / "notes.png", *b.grey_png_pair(folder)[1:]], output_name="fused.png")


# ============================================================================ outputs

@case("output-is-input", "outputs", "output path equal to an input", _every(error(r"refusing to write over the input"), ("api", "cli")))
def _(folder: Path) -> Scenario:
    paths = b.volume_pair(folder)
    return Scenario(paths, output=paths[1])


@case("batch-output-over-input", "outputs", "batch output folder holding an input named like an output",
      {"batch": error(r"is the input .*an output may never replace an input")})
def _(folder: Path) -> Scenario:
    paths = b.volume_pair(folder)
    paths[1] = paths[1].rename(folder / "case_fused.nii.gz")
    return Scenario(paths, output=folder)


@case("output-exists", "outputs", "output file already exists (no --overwrite)", _every(error(r"already exists"), ("api", "cli")))
def _(folder: Path) -> Scenario:
    paths = b.volume_pair(folder)
    existing = folder / "earlier_result.nii.gz"
    shutil.copy(paths[0], existing)
    return Scenario(paths, output=existing)


@case("output-folder-missing", "outputs", "output folder does not exist", _every(error(r"does not exist"), ("api", "cli")))
def _(folder: Path) -> Scenario:
    return Scenario(b.volume_pair(folder), output=folder.parent / "out" / "no" / "such" / "fused.nii.gz")


@case("output-under-a-file", "outputs", "output folder is a file (unwritable location)",
      _every(error(r"not a directory|not writable|cannot create"), FILES))
def _(folder: Path) -> Scenario:
    paths = b.volume_pair(folder)
    return Scenario(paths, output=paths[0] / "fused.nii.gz")


def _running_as_root() -> str:
    return "root writes anywhere, so a permission test means nothing" if getattr(os, "geteuid", lambda: 1)() == 0 else ""


@case("output-folder-read-only", "outputs", "output folder without write permission",
      _every(error(r"not writable|cannot create|permission"), FILES), unavailable=_running_as_root)
def _(folder: Path) -> Scenario:
    locked = folder.parent / "out" / "locked"
    locked.mkdir(parents=True)
    locked.chmod(0o555)
    return Scenario(b.volume_pair(folder), output=locked / "fused.nii.gz")


@contextlib.contextmanager
def _disk_full() -> Iterator[None]:
    """Every image writer fails half-way with ENOSPC, as on a full disk (after writing some bytes)."""
    original = sitk.WriteImage

    def failing(image, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 512)
        raise RuntimeError(f"ITK ERROR: Could not write {path}: No space left on device")

    sitk.WriteImage = failing
    try:
        yield
    finally:
        sitk.WriteImage = original


@case("disk-full", "outputs", "the disk fills up while the output is written",
      _every(error(r"fused.*(write|space)"), FILES))
def _(folder: Path) -> Scenario:
    return Scenario(b.volume_pair(folder), fault=_disk_full)


# ============================================================================ models

def _model_case(id: str, title: str, make: Callable[[Path], Path], pattern: str, n_inputs: int = 2) -> None:
    def build(folder: Path) -> Scenario:
        paths = b.volume_pair(folder)
        if n_inputs == 3:
            paths.append(b.write_sitk(folder / "pet.nii.gz", b.phantom(b.SHAPE_3D, "mri", 5).astype(np.float32)))
        return Scenario(paths, method=str(make(folder)))

    case(id, "models", title, _every(error(pattern)))(build)


_model_case("model-wrong-family", "model file of an unknown family",
            lambda f: b.edited_model_file(f / "model.pt", "family"), r"model.*(family|inconsistent)")
_model_case("model-wrong-version", "model file of a future format version",
            lambda f: b.edited_model_file(f / "model.pt", "version"), r"model.*version")
_model_case("model-wrong-weights", "model file whose weights do not fit its network",
            lambda f: b.edited_model_file(f / "model.pt", "weights"), r"model.*inconsistent")
_model_case("model-truncated", "model file cut in half",
            lambda f: b.truncate(b.small_model_file(f / "model.pt")), r"model.*not a readable")
_model_case("model-hostile-pickle", "model file whose pickle would run code",
            lambda f: b.hostile_model_file(f / "model.pt", f / "PWNED"), r"model.*not a readable")
_model_case("model-not-a-model", "an image renamed .pt", lambda f: b.grey_png_pair(f / "x")[0].rename(f / "model.pt"),
            r"model.*not a (readable )?MedFusion")
_model_case("model-missing", "model path that does not exist", lambda f: f / "nowhere.pt", r"nowhere\.pt.*no such file")
_model_case("model-wrong-input-count", "a 2-input DBM model given 3 inputs",
            lambda f: b.small_model_file(f / "dbm.pt", family="dbm", block_size=8), r"fuses 2 images, got 3", n_inputs=3)


@case("three-inputs-default", "models", "three inputs (CT, MRI, PET) with the default model", _every(OK))
def _(folder: Path) -> Scenario:
    paths = b.volume_pair(folder)
    return Scenario([*paths, b.write_sitk(folder / "pet.nii.gz", b.phantom(b.SHAPE_3D, "mri", 5).astype(np.float32))])


@case("unknown-method", "models", "a method name that is neither a baseline nor a file", _every(error(r"sharpest")))
def _(folder: Path) -> Scenario:
    return Scenario(b.volume_pair(folder), method="sharpest")


# ============================================================================ options

def _option_case(id: str, title: str, options: dict, pattern: str, entries: tuple[str, ...] = ALL,
                 method: str = "default", unavailable: Callable[[], str] = lambda: "") -> None:
    def build(folder: Path) -> Scenario:
        return Scenario(b.volume_pair(folder), method=method, options=dict(options))

    case(id, "options", title, _every(error(pattern), entries), unavailable=unavailable)(build)


_option_case("block-not-power-of-two", "block size 48", {"block_size": 48}, r"block size.*power of two")
_option_case("block-larger-than-image", "block size 64 on 28x32 slices", {"block_size": 64}, r"block size 64 is larger")
_option_case("block-zero", "block size 0", {"block_size": 0}, r"block size.*power of two")
_option_case("block-with-baseline", "a block size with a classical baseline", {"block_size": 8},
             r"block.*learned models", method="laplacian")
_option_case("axis-out-of-range", "slice axis 3 of a 3D volume", {"axis": 3}, r"axis", ("api", "cli", "slicer"))
_option_case("unknown-device", "device 'tpu'", {"device": "tpu"}, r"device")
_option_case("modality-count", "one modality for two inputs", {"modalities": ["CT"]}, r"modalit",
             ("api", "cli", "slicer"))
_option_case("unknown-modality", "modality 'XRAY'", {"modalities": ["CT", "XRAY"]}, r"XRAY")
_option_case("cuda-unavailable", "device 'cuda' on a machine without CUDA", {"device": "cuda"}, r"CUDA",
             unavailable=lambda: "a CUDA GPU is present, so the request works" if torch.cuda.is_available() else "")


@case("one-input", "options", "a single input", _every(error(r"at least 2|2 or more|two")))
def _(folder: Path) -> Scenario:
    return Scenario(b.volume_pair(folder)[:1], slicer=lambda scene, nodes: (nodes[:1], {}))


# ============================================================================ runtime

@case("cancel-mid-run", "runtime", "cancel (Ctrl-C in the CLI) half-way through a volume", _every(CANCELLED))
def _(folder: Path) -> Scenario:
    return Scenario(b.volume_pair(folder, shape=(12, 32, 28)), cancel_at=0.3)


def _killed_batch_inputs(folder: Path) -> Scenario:
    groups = 5
    rows = ["name,input_1,input_2"]
    for index in range(groups):
        pair = [b.write_sitk(folder / f"{kind}{index}.nii.gz",
                             b.phantom((32, 96, 96), kind, 10 * index + n).astype(np.float32))
                for n, kind in enumerate(("ct", "mri"))]
        rows.append(f"case{index},{pair[0]},{pair[1]}")
    (folder / "cases.csv").write_text("\n".join(rows) + "\n")
    return Scenario([folder / "cases.csv"])


def _killed_batch(work: Path, scenario: Scenario) -> tuple[str, str]:
    """SIGKILL a ``medfusion batch`` process once it has finished a group, restart it, and compare
    with an uninterrupted run: same files, byte for byte, and no temporary left."""
    from MedFusionLib.batch import groups_from_manifest, run_batch

    manifest = scenario.inputs[0]
    groups = len(groups_from_manifest(manifest))
    reference, killed = work / "reference", work / "out"
    run_batch(groups_from_manifest(manifest), reference, metrics=False)
    process = subprocess.Popen([sys.executable, "-m", "MedFusionLib.cli", "batch", str(manifest), "-o", str(killed),
                                "--no-metrics", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if killed.is_dir() and any(killed.glob("*_fused.nii.gz")):
            break
        time.sleep(0.001)
    if process.poll() is not None:
        return "crash", f"the batch ended (exit {process.returncode}) before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list(killed.glob("*_fused.nii.gz")))
    leftovers = len([p for p in killed.iterdir() if p.name.startswith(".")])
    if not 1 <= finished < groups:
        return "crash", f"killed with {finished} of {groups} groups finished; expected some but not all"
    run_batch(groups_from_manifest(manifest), killed, metrics=False)

    def contents(folder: Path) -> dict[str, bytes]:  # a leftover temporary folder shows up as a name too
        return {p.name: p.read_bytes() if p.is_file() else b"<folder>" for p in folder.iterdir()
                if p.name != "batch_report.csv"}

    expected, got = contents(reference), contents(killed)
    if got.keys() != expected.keys():
        return "crash", f"after the restart the folder holds {sorted(got)}, expected {sorted(expected)}"
    different = sorted(name for name in got if got[name] != expected[name])
    if different:
        return "crash", f"restarted outputs differ from an uninterrupted run: {different}"
    shutil.rmtree(reference)
    return "ok", (f"killed after {finished} of {groups} groups ({leftovers} half-written temporary folder(s) left); "
                  "restarted outputs byte-identical, temporaries gone")


case("killed-batch-restarted", "runtime", "a batch killed (SIGKILL) mid-run, then restarted",
     {"batch": OK}, custom=_killed_batch)(_killed_batch_inputs)


# ============================================================================ security

@case("manifest-name-escapes", "security", "a manifest case name with '../' (output outside the folder)",
      {"batch": error(r"name")})
def _(folder: Path) -> Scenario:
    return Scenario(b.volume_pair(folder), batch_name="../escaped")


@case("shell-characters-in-names", "security", "file names with shell metacharacters ($(...), ;, spaces)",
      _every(OK))
def _(folder: Path) -> Scenario:
    paths = b.grey_png_pair(folder)
    weird = [p.rename(folder / f"{p.stem} $(touch PWNED); rm -rf x `id`.png") for p in paths]
    return Scenario(weird, output_name="fused; touch PWNED2.png")
