"""The MRML logic of the MedFusion module: volume nodes in, fused volume node, metric tables and plot out.

Three phases, so that a GUI can keep the heavy part off its thread while MRML is only
ever touched from the thread that owns the scene (MRML and VTK are not thread-safe,
and scene modifications fire observers that update Qt widgets):

1. :meth:`MedFusionLogicCore.prepare` (scene thread) -- checks every input and copies
   the voxels and geometry out of the nodes into a :class:`FusionJob`;
2. :meth:`MedFusionLogicCore.compute` (any thread) -- optional registration/resampling,
   denoising, the fusion itself (:func:`MedFusionLib.fusion.fuse_volume`) and the
   per-slice metrics; pure NumPy/PyTorch, reports progress and honours a cancel flag;
3. :meth:`MedFusionLogicCore.commit` (scene thread) -- writes the output volume, the
   tables and the plot, all at the end, and undoes everything it did if any step fails.

:meth:`MedFusionLogicCore.fuse` runs the three one after the other: it is synchronous
("``waitForCompletion=True``"), which is what batch scripts want. The Slicer widget runs
phase 2 in a ``threading.Thread`` polled by a ``qt.QTimer`` (see ``MedFusion.py``).

A failed or cancelled run leaves the scene exactly as it was: phases 1 and 2 do not
modify the scene at all, and phase 3 removes the nodes it created and restores the
nodes it changed if it fails half-way.

Training (:meth:`MedFusionLogicCore.train`) has the same three phases --
:meth:`~MedFusionLogicCore.prepareTraining` copies the input and target volumes out of
the scene (or checks the layout of a training folder), :meth:`~MedFusionLogicCore.computeTraining`
fits the model in any thread, :meth:`~MedFusionLogicCore.commitTraining` writes the model
file atomically -- and never modifies the scene; a cancelled or failed run writes no file.

Coordinates: MRML stores a volume's geometry as an IJK-to-RAS matrix; SimpleITK and
:class:`MedFusionLib.io.LoadedImage` use LPS (x and y negated). Voxel arrays have the
same (k, j, i) = (z, y, x) order in both. :func:`geometry_from_ijk_to_ras` and
:func:`ijk_to_ras_from_geometry` convert; the output volume itself gets a copy of the
first input's IJK-to-RAS matrix (not a round trip), so its geometry is bit-identical.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import slicer  # the MRML classes and slicer.util: from the Slicer application or the slicer-core wheel
import torch
import vtk
import vtk.util.numpy_support

from MedFusionLib.engine.blocks import validate_block_size
from MedFusionLib.engine.model import FusionModel
from MedFusionLib.engine.rbm import TrainingCancelled
from MedFusionLib.engine.training import TrainingConfig, Triplet, TripletDataset
from MedFusionLib.errors import Cancelled, InputError
from MedFusionLib.fusion import (
    FusionCancelled,
    fuse_volume,
    load_method,
    method_name,
    to_unit_range,
)
from MedFusionLib.io import LoadedImage
from MedFusionLib.metrics import METRICS, evaluate
from MedFusionLib.preprocessing import DENOISE_DEFAULTS, REGISTRATION_TRANSFORMS
from MedFusionLib.validation import check_int

ProgressCallback = Callable[[float, str], None]

#: Metrics plotted against the slice index by default: edge transfer, information transfer, structure.
DEFAULT_PLOT_METRICS: tuple[str, ...] = ("QABF", "MI", "SSIM_S")

#: Device names accepted by the logic (the GUI's choices) and what MedFusionLib is asked for.
DEVICES: dict[str, Optional[str]] = {"auto": None, "cpu": "cpu", "gpu": "cuda", "cuda": "cuda"}

#: Model families the logic trains: the multi-scale weight CNN (fuses any number of inputs) and the
#: RBM-initialised block network of the 2020 paper (fuses exactly as many inputs as it was trained with).
TRAINING_FAMILIES: tuple[str, ...] = ("cnn", "dbm")
#: Optimiser steps of a training run unless asked otherwise: a few hundred, so that a run takes about a
#: minute on a CPU (the shipped default model took 8000; more iterations fit the data better).
DEFAULT_TRAINING_ITERATIONS = 300
#: Training block side per family when none is given (reduced to fit smaller slices): CNN blocks of 32
#: train twice as fast as the shipped recipe's 64 on a CPU; the DBM's blocks are its fixed input size.
DEFAULT_TRAINING_BLOCK_SIZES: dict[str, int] = {"cnn": 32, "dbm": 8}
# The shipped recipe (MedFusionLib.recipes) whose network and optimiser settings each family trains with.
_FAMILY_RECIPES = {"cnn": "default", "dbm": "dbm"}

#: How far two IJK-to-RAS matrices may differ and still count as the same grid (mm and direction
#: cosines); absorbs the float32 rounding of NIfTI headers, far below any real misalignment.
GEOMETRY_TOLERANCE = 1e-4

# Volume classes that derive from vtkMRMLScalarVolumeNode but hold more than one value per voxel.
_NOT_SCALAR_CLASSES = {
    "vtkMRMLLabelMapVolumeNode": "a label map (segmentation labels, not intensities)",
    "vtkMRMLVectorVolumeNode": "a vector (colour or multi-component) volume",
    "vtkMRMLMultiVolumeNode": "a 4D multi-volume",
    "vtkMRMLDiffusionWeightedVolumeNode": "a diffusion-weighted (4D) volume",
    "vtkMRMLDiffusionTensorVolumeNode": "a diffusion tensor volume",
    "vtkMRMLTensorVolumeNode": "a tensor volume",
}
_LPS_FLIP = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS: negate x and y
_MEDFUSION_METRIC_ATTRIBUTE = "MedFusion.metric"  # marks plot series this logic made (reused on re-runs)
# Colour-blind-safe (Okabe-Ito) colours for the plot series.
_PLOT_COLOURS = [(0.0, 0.45, 0.70), (0.90, 0.62, 0.0), (0.0, 0.62, 0.45), (0.80, 0.47, 0.65),
                 (0.34, 0.71, 0.91), (0.84, 0.37, 0.0), (0.94, 0.89, 0.26)]


class CancelFlag(Protocol):
    """Anything with ``is_set()``, such as :class:`threading.Event`."""

    def is_set(self) -> bool: ...


# --------------------------------------------------------------------------------------------
# Geometry: MRML IJK-to-RAS <-> SimpleITK/LoadedImage (spacing, origin, direction) in LPS
# --------------------------------------------------------------------------------------------


def _matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def _array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _ijk_to_ras(node: Any) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return _matrix_to_array(matrix)


def geometry_from_ijk_to_ras(
    ijk_to_ras: np.ndarray | vtk.vtkMatrix4x4,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """SimpleITK-style LPS geometry ``(spacing, origin, direction)`` of an MRML IJK-to-RAS matrix.

    Column j of the upper 3x3 block is the RAS step of one voxel along index j: its length
    is the spacing and its direction the j-th axis; flipping x and y turns RAS into LPS.

    :param ijk_to_ras: 4x4 IJK-to-RAS matrix (NumPy or ``vtkMatrix4x4``).
    :returns: spacing (i, j, k), origin (LPS, mm) and the row-major 3x3 direction matrix.
    """
    m = _matrix_to_array(ijk_to_ras) if isinstance(ijk_to_ras, vtk.vtkMatrix4x4) else np.asarray(ijk_to_ras, float)
    steps = _LPS_FLIP @ m[:3, :3]
    spacing = np.linalg.norm(steps, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"IJK-to-RAS matrix has a zero-length axis (spacing {spacing.tolist()})")
    direction = steps / spacing
    origin = _LPS_FLIP @ m[:3, 3]
    return tuple(spacing.tolist()), tuple(origin.tolist()), tuple(direction.ravel().tolist())


def ijk_to_ras_from_geometry(
    spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]
) -> np.ndarray:
    """The 4x4 MRML IJK-to-RAS matrix of a SimpleITK-style LPS geometry (inverse of :func:`geometry_from_ijk_to_ras`).

    :param spacing: voxel size along i, j, k (mm).
    :param origin: LPS position of voxel (0, 0, 0) (mm).
    :param direction: row-major 3x3 direction cosines (LPS), flattened.
    """
    matrix = np.eye(4)
    matrix[:3, :3] = _LPS_FLIP @ np.asarray(direction, float).reshape(3, 3) @ np.diag(np.asarray(spacing, float))
    matrix[:3, 3] = _LPS_FLIP @ np.asarray(origin, float)
    return matrix


def _loaded(array: np.ndarray, ijk_to_ras: np.ndarray) -> LoadedImage:
    spacing, origin, direction = geometry_from_ijk_to_ras(ijk_to_ras)
    return LoadedImage(array, spacing, origin, direction)


def _same_path(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and hard links included; by name when one does not exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


# --------------------------------------------------------------------------------------------
# What travels between the phases
# --------------------------------------------------------------------------------------------


@dataclass
class FusionJob:
    """Everything :meth:`MedFusionLogicCore.compute` needs, copied out of the scene by ``prepare``.

    Arrays are copies, so a user editing or deleting a node while the computation runs
    in the background cannot change or free the memory it reads.
    """

    scene: Any
    inputNodes: list[Any]
    inputNodeIDs: list[str]
    inputArrays: list[np.ndarray]
    inputIJKToRAS: list[np.ndarray]
    targetNode: Any
    targetArray: Optional[np.ndarray]
    targetIJKToRAS: Optional[np.ndarray]
    method: Any  # a resolved FusionModel or FusionBaseline
    axis: int
    blockSize: Optional[int]
    device: Optional[str]
    modalities: Optional[list[Optional[str]]]
    resampleToFirst: bool
    register: Optional[str]
    denoise: Optional[str]
    computeMetrics: bool
    metrics: Optional[list[str]]
    plotMetrics: list[str]
    outputVolumeNode: Any
    outputName: str
    parentTransformNodeID: Optional[str]
    metricsTableNode: Any
    sliceTableNode: Any
    plotChartNode: Any

    @property
    def referenceIJKToRAS(self) -> np.ndarray:
        """The first input's IJK-to-RAS matrix: the grid of the result."""
        return self.inputIJKToRAS[0]


@dataclass
class FusionComputation:
    """What :meth:`MedFusionLogicCore.compute` produced; nothing of it is in the scene yet.

    :param fused: the fused volume, ``float32`` in [0, 1], (k, j, i) order, on the first input's grid.
    :param seconds: wall time of the fusion (:func:`fuse_volume`), without metrics.
    :param methodName: what fused it.
    :param metrics: volume value of each metric: the mean over the informative slices.
    :param sliceMetrics: per-slice values of each metric (NaN on skipped slices).
    :param sliceIndices: index of each slice along the fusion axis.
    :param metricsSeconds: wall time of the metrics.
    """

    fused: np.ndarray
    seconds: float
    methodName: str
    metrics: dict[str, float] = field(default_factory=dict)
    sliceMetrics: dict[str, np.ndarray] = field(default_factory=dict)
    sliceIndices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    metricsSeconds: float = 0.0


@dataclass
class MedFusionResult:
    """The nodes a run wrote and the numbers in them.

    :param outputVolumeNode: the fused volume (float32 in [0, 1], the first input's geometry).
    :param metricsTableNode: one row per metric (None when metrics were off).
    :param sliceTableNode: one row per slice (None when metrics were off).
    :param plotChartNode: chosen metrics against the slice index (None when metrics were off).
    :param plotSeriesNodes: the chart's series, one per plotted metric.
    :param metrics: volume value of each metric (mean over informative slices).
    :param sliceMetrics: per-slice values of each metric.
    :param seconds: wall time of the fusion itself.
    :param methodName: what fused it.
    """

    outputVolumeNode: Any
    metricsTableNode: Any
    sliceTableNode: Any
    plotChartNode: Any
    plotSeriesNodes: list[Any]
    metrics: dict[str, float]
    sliceMetrics: dict[str, np.ndarray]
    seconds: float
    methodName: str


@dataclass
class TrainingJob:
    """Everything :meth:`MedFusionLogicCore.computeTraining` needs, checked and copied by ``prepareTraining``.

    Training reads the scene once, here, and never writes to it: the only thing a training
    run produces is the model file, written by :meth:`MedFusionLogicCore.commitTraining`.

    :param outputModelPath: where the model goes (``.pt``); checked not to be an input.
    :param overwrite: whether an existing file at ``outputModelPath`` may be replaced.
    :param protectedPaths: files the model may never be written over (the training inputs, the shipped model).
    :param family: ``"cnn"`` or ``"dbm"``.
    :param blockSize: training block side n, or None for the family's default capped by the slice size.
    :param iterations: optimiser steps.
    :param device: what MedFusionLib is asked for (None: automatic).
    :param seed: seeds block sampling, initialisation and augmentation.
    :param axis: array axis the volumes are cut into 2D training slices along.
    :param nInputs: K, the number of inputs per training case.
    :param inputNames: the inputs' names (scene volumes) or the case names (folder), for the model's notes.
    :param inputArrays: copies of the input volumes' voxels (scene source only).
    :param inputIJKToRAS: their IJK-to-RAS matrices (scene source only).
    :param targetArray: a copy of the target volume's voxels (scene source only).
    :param targetIJKToRAS: its IJK-to-RAS matrix (scene source only).
    :param modalities: modality per input for standardisation (scene source only; None: automatic).
    :param resampleToFirst: resample inputs 2.. and the target onto input 1's grid first (scene source only).
    :param trainingData: the folder of case folders or manifest CSV (folder source only).
    """

    outputModelPath: Path
    overwrite: bool
    protectedPaths: list[Path]
    family: str
    blockSize: Optional[int]
    iterations: int
    device: Optional[str]
    seed: int
    axis: int
    nInputs: int
    inputNames: list[str]
    inputArrays: list[np.ndarray] = field(default_factory=list)
    inputIJKToRAS: list[np.ndarray] = field(default_factory=list)
    targetArray: Optional[np.ndarray] = None
    targetIJKToRAS: Optional[np.ndarray] = None
    modalities: Optional[list[Optional[str]]] = None
    resampleToFirst: bool = False
    trainingData: Optional[Path] = None

    @property
    def fromScene(self) -> bool:
        """Whether the training cases are slices of scene volumes (else: files of a training folder)."""
        return self.trainingData is None


@dataclass
class TrainingComputation:
    """What :meth:`MedFusionLogicCore.computeTraining` produced; nothing is on disk yet.

    :param model: the trained :class:`MedFusionLib.engine.model.FusionModel` (best validation weights).
    :param history: its :class:`MedFusionLib.engine.training.TrainingHistory` (loss per iteration and validation).
    :param trainingSlices: number of 2D training cases (input slices + target slice) it was fitted on.
    :param blockSize: the block side it was trained with.
    """

    model: Any
    history: Any
    trainingSlices: int
    blockSize: int


@dataclass
class MedFusionTrainingResult:
    """The model file a training run wrote, and how the training went.

    :param modelPath: the written model; pass it as ``method`` to :meth:`MedFusionLogicCore.fuse`.
    :param family: ``"cnn"`` or ``"dbm"``.
    :param blockSize: the block side it was trained with.
    :param nInputs: K, the number of inputs it was trained to fuse.
    :param trainingSlices: number of 2D training cases (slices with a non-constant target).
    :param iterationsRun: optimiser steps done.
    :param bestValidationLoss: validation loss of the kept weights.
    :param seconds: wall time of the training.
    :param device: where it trained.
    :param history: the full :class:`MedFusionLib.engine.training.TrainingHistory`.
    """

    modelPath: Path
    family: str
    blockSize: int
    nInputs: int
    trainingSlices: int
    iterationsRun: int
    bestValidationLoss: float
    seconds: float
    device: str
    history: Any


class _Stage:
    """Maps a phase's own 0..1 progress onto a sub-range of the caller's progress bar."""

    def __init__(self, progress: Optional[ProgressCallback], start: float, stop: float) -> None:
        self.progress, self.start, self.stop = progress, start, stop

    def __call__(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(self.start + (self.stop - self.start) * min(max(fraction, 0.0), 1.0), message)


def _check_cancel(cancel: Optional[CancelFlag], where: str) -> None:
    if cancel is not None and cancel.is_set():
        raise FusionCancelled(f"fusion cancelled ({where}); the scene was not changed")


def _check_training_cancel(cancel: Optional[CancelFlag], where: str) -> None:
    if cancel is not None and cancel.is_set():
        raise TrainingCancelled(f"training cancelled ({where}); no model file was written")


# --------------------------------------------------------------------------------------------
# The logic
# --------------------------------------------------------------------------------------------


class MedFusionLogicCore:
    """Fuse registered scalar volume nodes with MedFusionLib; write the result, metric tables and a plot.

    Usable from batch scripts: ``MedFusionLogicCore().fuse([ctNode, mriNode])`` returns a
    :class:`MedFusionResult` whose ``outputVolumeNode`` holds the fused volume. Errors in what
    was passed raise :class:`MedFusionLib.errors.InputError` (a ``ValueError``) with a message
    naming the input and the problem; a cancel raises :class:`MedFusionLib.fusion.FusionCancelled`.
    In both cases, and on any other exception, the scene is left exactly as it was.

    Metrics are 2D (:func:`MedFusionLib.metrics.evaluate`), so a volume is scored slice by slice
    along the fusion axis, on the [0, 1] intensities fusion works on (inputs standardised as
    :func:`MedFusionLib.fusion.fuse_volume` standardises them, ``data_range=(0, 1)`` so every slice
    is on the same scale). A slice in which every input is constant (empty background slices
    at the ends of a scan) is skipped: its row holds NaN and it does not count. A metric's
    volume value is the mean of its per-slice values over the remaining slices.
    """

    # ---------------------------------------------------------------- the synchronous whole

    def fuse(
        self,
        inputVolumeNodes: Sequence[Any],
        outputVolumeNode: Any = None,
        targetVolumeNode: Any = None,
        method: Any = "default",
        axis: int = 0,
        blockSize: Optional[int] = None,
        device: str = "auto",
        resampleToFirst: bool = False,
        metricsTableNode: Any = None,
        sliceTableNode: Any = None,
        plotChartNode: Any = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelFlag] = None,
        *,
        modalities: Optional[Sequence[Optional[str]]] = None,
        register: Optional[str] = None,
        denoise: Optional[str] = None,
        computeMetrics: bool = True,
        metrics: Optional[Sequence[str]] = None,
        plotMetrics: Sequence[str] = DEFAULT_PLOT_METRICS,
    ) -> MedFusionResult:
        """Fuse the input volumes and write everything to the scene; returns when done.

        This call is synchronous (what ``waitForCompletion=True`` means in the module logic).
        The Slicer widget instead calls :meth:`prepare`, runs :meth:`compute` in a background
        thread, and calls :meth:`commit` back on the GUI thread.

        :param inputVolumeNodes: K >= 2 registered ``vtkMRMLScalarVolumeNode`` (not label maps,
            vector or 4D volumes), all in one scene; the first one is the reference grid. Not modified.
        :param outputVolumeNode: a scalar volume node to overwrite (never one of the inputs), or
            None to create a new one.
        :param targetVolumeNode: optional target (ideal fused) volume; adds the full-reference
            metrics (RMSE, PSNR, SSIM, REL, CE, H). Same grid as the first input unless resampling.
        :param method: ``"default"`` (the shipped model), a model file path, or a baseline name
            (``"average"``, ``"maximum"``, ``"laplacian"``, ``"guided_filter"``, ``"wavelet"``).
        :param axis: array axis to fuse slices along: 0 = K (the slowest index, axial for an axial
            scan), 1 = J, 2 = I.
        :param blockSize: None (whole-slice inference) or n = 2^i to fuse overlapping n x n blocks.
        :param device: ``"auto"`` (GPU when present, else CPU), ``"cpu"`` or ``"gpu"``.
        :param resampleToFirst: resample other inputs (and the target) onto the first input's grid
            when their geometry differs (linear interpolation, in physical space); otherwise a
            geometry mismatch is an error.
        :param metricsTableNode: table to fill (one row per metric), or None to create one.
        :param sliceTableNode: table to fill (one row per slice), or None to create one.
        :param plotChartNode: chart to fill (chosen metrics against slice index), or None to create one.
        :param progress: ``progress(fraction, message)``, fraction in [0, 1].
        :param cancel: flag with ``is_set()`` (e.g. ``threading.Event``), polled between slice batches.
        :param modalities: optional modality per input (``"CT"``, ``"MRI"``, ``"PET"``, ``"SPECT"``,
            or None) for intensity standardisation; default automatic.
        :param register: ``"rigid"`` or ``"affine"`` to register every other input onto the first one
            (Mattes mutual information) before fusing; None to trust the inputs' alignment.
        :param denoise: a :func:`MedFusionLib.preprocessing.denoise` method applied to every input first.
        :param computeMetrics: compute and write the metric tables and plot.
        :param metrics: metric keys to compute (default: all that apply).
        :param plotMetrics: metric keys to plot against the slice index.
        :returns: a :class:`MedFusionResult`.
        """
        job = self.prepare(
            inputVolumeNodes, outputVolumeNode, targetVolumeNode, method, axis, blockSize, device, resampleToFirst,
            metricsTableNode, sliceTableNode, plotChartNode, modalities=modalities, register=register,
            denoise=denoise, computeMetrics=computeMetrics, metrics=metrics, plotMetrics=plotMetrics,
        )
        computation = self.compute(job, progress=progress, cancel=cancel)
        _check_cancel(cancel, "before writing the results")
        result = self.commit(job, computation)
        if progress is not None:
            progress(1.0, "done")
        return result

    # ---------------------------------------------------------------- phase 1: check and copy

    def prepare(
        self,
        inputVolumeNodes: Sequence[Any],
        outputVolumeNode: Any = None,
        targetVolumeNode: Any = None,
        method: Any = "default",
        axis: int = 0,
        blockSize: Optional[int] = None,
        device: str = "auto",
        resampleToFirst: bool = False,
        metricsTableNode: Any = None,
        sliceTableNode: Any = None,
        plotChartNode: Any = None,
        *,
        modalities: Optional[Sequence[Optional[str]]] = None,
        register: Optional[str] = None,
        denoise: Optional[str] = None,
        computeMetrics: bool = True,
        metrics: Optional[Sequence[str]] = None,
        plotMetrics: Sequence[str] = DEFAULT_PLOT_METRICS,
    ) -> FusionJob:
        """Check every argument and copy voxels and geometry out of the nodes (call on the scene's thread).

        Parameters as in :meth:`fuse`. Does not modify the scene.

        :returns: a :class:`FusionJob` for :meth:`compute` and :meth:`commit`.
        :raises InputError: the first problem found, with a message naming the input.
        """
        nodes = self._check_inputs(inputVolumeNodes)
        scene = nodes[0].GetScene()
        names = [f"input {i + 1} ({node.GetName()})" for i, node in enumerate(nodes)]

        if targetVolumeNode is not None:
            self._check_volume(targetVolumeNode, "target volume", scene)
            if any(targetVolumeNode is node for node in nodes):
                raise InputError("target volume: it is one of the inputs; choose the ideal (reference) fused volume")
        if outputVolumeNode is not None:
            self._check_output(outputVolumeNode, nodes, targetVolumeNode, scene)
        for node, cls, label in (
            (metricsTableNode, "vtkMRMLTableNode", "metrics table"),
            (sliceTableNode, "vtkMRMLTableNode", "per-slice metrics table"),
            (plotChartNode, "vtkMRMLPlotChartNode", "plot chart"),
        ):
            if node is not None:
                self._check_node(node, cls, label, scene)
        if metricsTableNode is not None and metricsTableNode is sliceTableNode:
            raise InputError("per-slice metrics table: it is the same node as the metrics table; choose another")

        if isinstance(axis, bool) or axis not in (0, 1, 2):
            raise InputError(f"slice axis: expected 0 (K), 1 (J) or 2 (I), got {axis!r}")
        if blockSize is not None and (isinstance(blockSize, bool) or not isinstance(blockSize, int) or blockSize < 2):
            raise InputError(f"block size: expected None or a power of two >= 2, got {blockSize!r}")
        device_key = str(device).strip().lower() if device is not None else "auto"
        if device_key not in DEVICES:
            raise InputError(f"device: expected one of {sorted(DEVICES)}, got {device!r}")
        if modalities is not None and len(modalities) != len(nodes):
            raise InputError(f"modalities: {len(modalities)} given for {len(nodes)} input volumes")
        if register is not None and register not in REGISTRATION_TRANSFORMS:
            raise InputError(f"register: expected None or one of {list(REGISTRATION_TRANSFORMS)}, got {register!r}")
        if denoise is not None and denoise not in DENOISE_DEFAULTS:
            raise InputError(f"denoise: expected None or one of {list(DENOISE_DEFAULTS)}, got {denoise!r}")
        metric_keys = self._check_metrics(metrics, targetVolumeNode is not None) if computeMetrics else []
        plot_keys = [k for k in plotMetrics if k in metric_keys] if computeMetrics else []
        unknown_plot = [k for k in plotMetrics if k not in METRICS]
        if unknown_plot:
            raise InputError(f"plot metrics: unknown {unknown_plot}; choose from {list(METRICS)}")

        resolved = self._load_method(method)
        resolved_device = self._resolve_device(device_key)
        parent_transform_id = self._common_parent_transform_id([*nodes, *([targetVolumeNode] if targetVolumeNode else [])])

        arrays = [self._copy_voxels(node, name) for node, name in zip(nodes, names)]
        matrices = [_ijk_to_ras(node) for node in nodes]
        target_array = self._copy_voxels(targetVolumeNode, "target volume") if targetVolumeNode is not None else None
        target_matrix = _ijk_to_ras(targetVolumeNode) if targetVolumeNode is not None else None

        # Same grid, or resampling asked for: checked here so the user hears at once, not after minutes.
        if not resampleToFirst and register is None:
            others = list(zip(arrays[1:], matrices[1:], names[1:]))
            if target_array is not None:
                others.append((target_array, target_matrix, "target volume"))
            for array, matrix, name in others:
                self._check_same_grid(arrays[0], matrices[0], array, matrix, name, names[0])

        return FusionJob(
            scene=scene,
            inputNodes=list(nodes),
            inputNodeIDs=[n.GetID() for n in nodes],
            inputArrays=arrays,
            inputIJKToRAS=matrices,
            targetNode=targetVolumeNode,
            targetArray=target_array,
            targetIJKToRAS=target_matrix,
            method=resolved,
            axis=int(axis),
            blockSize=blockSize,
            device=resolved_device,
            modalities=list(modalities) if modalities is not None else None,
            resampleToFirst=bool(resampleToFirst),
            register=register,
            denoise=denoise,
            computeMetrics=bool(computeMetrics),
            metrics=metric_keys,
            plotMetrics=plot_keys,
            outputVolumeNode=outputVolumeNode,
            outputName=f"{nodes[0].GetName()} fused",
            parentTransformNodeID=parent_transform_id,
            metricsTableNode=metricsTableNode,
            sliceTableNode=sliceTableNode,
            plotChartNode=plotChartNode,
        )

    @staticmethod
    def _resolve_device(device_key: str) -> Optional[str]:
        """What MedFusionLib is asked for (see :data:`DEVICES`); a GPU that is not there is refused now, not later."""
        resolved_device = DEVICES[device_key]
        if resolved_device == "cuda":
            import torch  # only here: the check needs torch, which MedFusionLib.fusion already imported

            if not torch.cuda.is_available():
                raise InputError("device: a GPU was asked for but no CUDA GPU is available; choose 'auto' or 'cpu'")
        return resolved_device

    def _common_parent_transform_id(self, nodes: Sequence[Any]) -> Optional[str]:
        """The one parent transform of all ``nodes`` (None: none), or a clear refusal.

        The logic works in the volumes' own RAS space and cannot compare grids across
        different transforms.
        """
        transforms = {self._parent_transform_id(n) for n in nodes}
        if len(transforms) > 1:
            raise InputError(
                "input volumes: they are under different parent transforms; harden the transforms "
                "(Transforms module, 'Harden transform') so all volumes share one coordinate space"
            )
        return transforms.pop()

    @staticmethod
    def _check_node(node: Any, cls: str, label: str, scene: Any) -> None:
        if not hasattr(node, "IsA") or not node.IsA(cls):
            kind = node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__
            raise InputError(f"{label}: expected a {cls}, got {kind}")
        if node.GetScene() is not scene:
            raise InputError(f"{label}: node '{node.GetName()}' is not in the inputs' scene")

    def _check_inputs(self, inputVolumeNodes: Sequence[Any]) -> list[Any]:
        if inputVolumeNodes is None or isinstance(inputVolumeNodes, (str, bytes)) or not hasattr(
            inputVolumeNodes, "__len__"
        ):
            raise InputError("input volumes: expected a list of at least 2 volume nodes")
        nodes = list(inputVolumeNodes)
        if len(nodes) < 2:
            raise InputError(f"input volumes: at least 2 volumes are needed, got {len(nodes)}")
        for i, node in enumerate(nodes):
            if node is None:
                raise InputError(f"input {i + 1}: no volume selected")
        scene = nodes[0].GetScene() if hasattr(nodes[0], "GetScene") else None
        if scene is None:
            raise InputError("input 1: volume node is not in a scene")
        for i, node in enumerate(nodes):
            self._check_volume(node, f"input {i + 1}", scene)
            for j in range(i):
                if nodes[j] is node or nodes[j].GetID() == node.GetID():
                    raise InputError(
                        f"input {i + 1}: '{node.GetName()}' is the same volume as input {j + 1}; "
                        "choose different volumes"
                    )
        return nodes

    @staticmethod
    def _check_volume(node: Any, label: str, scene: Any) -> None:
        if not hasattr(node, "IsA") or not node.IsA("vtkMRMLVolumeNode"):
            kind = node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__
            raise InputError(f"{label}: expected a scalar volume node, got {kind}")
        name = f"{label} ('{node.GetName()}')"
        for cls, what in _NOT_SCALAR_CLASSES.items():
            if node.IsA(cls):
                raise InputError(f"{name}: is {what}; MedFusion fuses scalar intensity volumes only")
        if node.GetClassName() != "vtkMRMLScalarVolumeNode":
            raise InputError(f"{name}: unsupported volume type {node.GetClassName()}; use a scalar volume")
        if node.GetScene() is not scene:
            raise InputError(f"{name}: is not in the same scene as input 1")
        image = node.GetImageData()
        if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
            raise InputError(f"{name}: the volume is empty (it has no voxels)")
        dims = image.GetDimensions()
        if min(dims) < 1 or int(np.prod(dims)) == 0:
            raise InputError(f"{name}: the volume is empty (dimensions {dims})")
        if image.GetNumberOfScalarComponents() != 1:
            raise InputError(
                f"{name}: has {image.GetNumberOfScalarComponents()} values per voxel (a vector/colour/4D volume); "
                "MedFusion fuses single-component scalar volumes"
            )

    def _check_output(self, output: Any, inputs: Sequence[Any], target: Any, scene: Any) -> None:
        if not hasattr(output, "IsA") or not output.IsA("vtkMRMLScalarVolumeNode") or output.IsA(
            "vtkMRMLLabelMapVolumeNode"
        ) or output.GetClassName() != "vtkMRMLScalarVolumeNode":
            kind = output.GetClassName() if hasattr(output, "GetClassName") else type(output).__name__
            raise InputError(f"output volume: expected a scalar volume node, got {kind}")
        for i, node in enumerate(inputs):
            if output is node or output.GetID() == node.GetID():
                raise InputError(
                    f"output volume: '{output.GetName()}' is input {i + 1}; an input is never overwritten -- "
                    "choose another output volume or 'Create new volume'"
                )
        if target is not None and (output is target or output.GetID() == target.GetID()):
            raise InputError("output volume: it is the target volume; choose another output volume")
        if output.GetScene() is not scene:
            raise InputError(f"output volume: '{output.GetName()}' is not in the inputs' scene")

    @staticmethod
    def _check_metrics(metrics: Optional[Sequence[str]], has_target: bool) -> list[str]:
        if metrics is None:
            return [k for k, m in METRICS.items() if has_target or m.family != "target"]
        keys = list(metrics)
        unknown = [k for k in keys if k not in METRICS]
        if unknown:
            raise InputError(f"metrics: unknown {unknown}; choose from {list(METRICS)}")
        needing_target = [k for k in keys if METRICS[k].family == "target"]
        if needing_target and not has_target:
            raise InputError(f"metrics: {needing_target} need a target volume")
        return [k for k in METRICS if k in keys]  # registry order, like every other table

    @staticmethod
    def _load_method(method: Any) -> Any:
        try:
            return load_method(method)
        except InputError:
            raise
        except Exception as error:  # a model file that is corrupt, refused or of another format
            raise InputError(f"method {str(method)!r}: the model could not be loaded ({error})") from None

    @staticmethod
    def _parent_transform_id(node: Any) -> Optional[str]:
        transform = node.GetParentTransformNode()
        return transform.GetID() if transform is not None else None

    @staticmethod
    def _copy_voxels(node: Any, name: str) -> np.ndarray:
        try:
            return np.array(slicer.util.arrayFromVolume(node), copy=True)  # a copy: inputs are never touched
        except RuntimeError as error:
            raise InputError(f"{name}: cannot read the voxels ({error})") from None

    @staticmethod
    def _check_same_grid(
        reference: np.ndarray, reference_matrix: np.ndarray, array: np.ndarray, matrix: np.ndarray,
        name: str, reference_name: str, remedy: str = "tick 'Resample onto input 1' (or register)",
    ) -> None:
        if array.shape != reference.shape:
            raise InputError(
                f"{name}: dimensions {tuple(reversed(array.shape))} differ from {reference_name}'s "
                f"{tuple(reversed(reference.shape))}; {remedy} to put it on that grid"
            )
        if not np.allclose(matrix, reference_matrix, rtol=0.0, atol=GEOMETRY_TOLERANCE):
            raise InputError(
                f"{name}: origin, spacing or orientation (IJK-to-RAS matrix) differ from {reference_name}'s; "
                f"{remedy} to put it on that grid"
            )

    # ---------------------------------------------------------------- phase 2: compute (any thread)

    def compute(
        self, job: FusionJob, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelFlag] = None
    ) -> FusionComputation:
        """Pre-process, fuse and score; touches no MRML node, so it may run in a background thread.

        :param job: from :meth:`prepare`.
        :param progress: ``progress(fraction, message)``; called from this thread.
        :param cancel: flag with ``is_set()``; polled between batches of slices and between metric slices.
        :returns: a :class:`FusionComputation`.
        :raises FusionCancelled: the flag was set.
        :raises InputError: an input MedFusionLib refuses (non-finite voxels, model/input count mismatch...).
        """
        prepared_share = 0.1 if (job.register or job.resampleToFirst or job.denoise) else 0.0
        fuse_share = 0.6 if job.computeMetrics else 1.0 - prepared_share
        arrays, target = self._preprocess(job, _Stage(progress, 0.0, prepared_share), cancel)
        _check_cancel(cancel, "before fusing")

        start = time.perf_counter()
        fused = fuse_volume(
            arrays,
            model=job.method,
            axis=job.axis,
            block_size=job.blockSize,
            device=job.device,
            modalities=job.modalities,
            progress=_Stage(progress, prepared_share, prepared_share + fuse_share),
            cancel=cancel,
        ).array
        seconds = time.perf_counter() - start
        computation = FusionComputation(fused=fused, seconds=seconds, methodName=method_name(job.method))
        if job.computeMetrics:
            self._score(job, arrays, target, computation, _Stage(progress, prepared_share + fuse_share, 1.0), cancel)
        return computation

    def _preprocess(
        self, job: FusionJob, progress: _Stage, cancel: Optional[CancelFlag]
    ) -> tuple[list[np.ndarray], Optional[np.ndarray]]:
        """Denoise, then register or resample every other input (and the target) onto input 1's grid."""
        from MedFusionLib import preprocessing

        arrays = list(job.inputArrays)
        if job.denoise:
            for i, array in enumerate(arrays):
                _check_cancel(cancel, "denoising")
                arrays[i] = np.asarray(preprocessing.denoise(array, job.denoise))
                progress(0.3 * (i + 1) / len(arrays), f"denoised input {i + 1}")
        reference = _loaded(arrays[0], job.referenceIJKToRAS)
        for i in range(1, len(arrays)):
            moving = _loaded(arrays[i], job.inputIJKToRAS[i])
            if job.register:
                try:
                    result = preprocessing.register(reference, moving, job.register, cancel=cancel)
                except preprocessing.RegistrationCancelled:
                    raise FusionCancelled("fusion cancelled (registration); the scene was not changed") from None
                arrays[i] = result.resampled.array
            elif job.resampleToFirst and not reference.geometry_matches(moving, tol=GEOMETRY_TOLERANCE):
                arrays[i] = preprocessing.resample_to(reference, moving).array
            progress(0.3 + 0.6 * i / max(len(arrays) - 1, 1), f"input {i + 1} on input 1's grid")
        target = job.targetArray
        if target is not None and (job.resampleToFirst or job.register):
            moving = _loaded(target, job.targetIJKToRAS)
            if not reference.geometry_matches(moving, tol=GEOMETRY_TOLERANCE):
                target = preprocessing.resample_to(reference, moving).array
        progress(1.0, "inputs ready")
        return arrays, target

    def _score(
        self,
        job: FusionJob,
        arrays: Sequence[np.ndarray],
        target: Optional[np.ndarray],
        computation: FusionComputation,
        progress: _Stage,
        cancel: Optional[CancelFlag],
    ) -> None:
        """Per-slice metrics on the [0, 1] data fusion saw; volume value = mean over informative slices."""
        start = time.perf_counter()
        modalities = job.modalities or [None] * len(arrays)
        # The same standardisation fuse_volume applies, so the metrics see what the fusion saw.
        sources = [to_unit_range(a, modalities[i], f"input {i + 1}") for i, a in enumerate(arrays)]
        target_unit = to_unit_range(target, None, "target volume") if target is not None else None
        count = computation.fused.shape[job.axis]
        values = {key: np.full(count, np.nan) for key in job.metrics}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # degenerate slices give NaN by design
            for s in range(count):
                _check_cancel(cancel, "computing metrics")
                slices = [np.take(source, s, axis=job.axis) for source in sources]
                if min(slices[0].shape) < 2 or all(float(np.ptp(x)) == 0.0 for x in slices):
                    continue  # nothing to fuse in this slice: its metrics would only dilute the mean
                scores = evaluate(
                    np.take(computation.fused, s, axis=job.axis),
                    slices,
                    np.take(target_unit, s, axis=job.axis) if target_unit is not None else None,
                    job.metrics,
                    data_range=(0.0, 1.0),
                )
                for key, value in scores.items():
                    values[key][s] = value
                if s % 4 == 3 or s == count - 1:
                    progress((s + 1) / count, f"metrics of slice {s + 1}/{count}")
            computation.metrics = {
                key: (float(np.nanmean(v)) if np.any(~np.isnan(v)) else math.nan) for key, v in values.items()
            }
        computation.sliceMetrics = values
        computation.sliceIndices = np.arange(count)
        computation.metricsSeconds = time.perf_counter() - start

    # ---------------------------------------------------------------- phase 3: write (scene thread)

    def commit(self, job: FusionJob, computation: FusionComputation) -> MedFusionResult:
        """Write the output volume, the tables and the plot (call on the scene's thread).

        Nothing is created or changed before this point. If a step fails, every node created
        here is removed and every existing node changed here is restored, then the error is
        re-raised: the scene is as before.

        :param job: from :meth:`prepare`.
        :param computation: from :meth:`compute`.
        :returns: a :class:`MedFusionResult`.
        """
        scene = job.scene
        self._check_still_in_scene(job)
        before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        undo: list[Callable[[], None]] = []
        try:
            output = self._write_volume(job, computation.fused, undo)
            metrics_table = slice_table = chart = None
            series: list[Any] = []
            if job.computeMetrics:
                metrics_table = self._table_node(job.metricsTableNode, scene, "MedFusion metrics", undo)
                metrics_table.SetAndObserveTable(self._metrics_table(computation))
                self._describe_metrics_columns(metrics_table)
                slice_table = self._table_node(job.sliceTableNode, scene, "MedFusion metrics per slice", undo)
                slice_table.SetAndObserveTable(self._slice_table(computation, job.metrics))
                chart, series = self._plot(job, slice_table, undo)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception:  # keep undoing the rest; the original error is what matters
                    pass
            for i in reversed(range(scene.GetNumberOfNodes())):
                node = scene.GetNthNode(i)
                if node is not None and node.GetID() not in before:
                    scene.RemoveNode(node)
            raise
        return MedFusionResult(
            outputVolumeNode=output,
            metricsTableNode=metrics_table,
            sliceTableNode=slice_table,
            plotChartNode=chart,
            plotSeriesNodes=series,
            metrics=dict(computation.metrics),
            sliceMetrics=dict(computation.sliceMetrics),
            seconds=computation.seconds,
            methodName=computation.methodName,
        )

    @staticmethod
    def _check_still_in_scene(job: FusionJob) -> None:
        """The user may have deleted a node while the computation ran in the background."""
        scene = job.scene
        for label, node in (
            ("output volume", job.outputVolumeNode),
            ("metrics table", job.metricsTableNode),
            ("per-slice metrics table", job.sliceTableNode),
            ("plot chart", job.plotChartNode),
            *((f"input {i + 1}", n) for i, n in enumerate(job.inputNodes)),
        ):
            if node is not None and (node.GetScene() is not scene or scene.GetNodeByID(node.GetID()) is not node):
                raise InputError(f"{label}: the node was removed from the scene while fusing; nothing was written")

    def _write_volume(self, job: FusionJob, fused: np.ndarray, undo: list[Callable[[], None]]) -> Any:
        image = vtk.vtkImageData()
        image.SetDimensions(*reversed(fused.shape))  # VTK wants (i, j, k); the array is (k, j, i)
        image.AllocateScalars(vtk.VTK_FLOAT, 1)
        # One copy, straight into VTK's buffer (like slicer.util.updateVolumeFromArray), from a
        # possibly non-contiguous (moved-axis) view of the fused array.
        target = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(fused.shape)
        target[...] = fused
        output = job.outputVolumeNode
        if output is None:
            output = job.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", job.scene.GenerateUniqueName(job.outputName))
        else:
            # Swap a new image in rather than reallocating the old one in place, so the old one can
            # be put back untouched if a later step fails.
            old_image, old_matrix = output.GetImageData(), vtk.vtkMatrix4x4()
            output.GetIJKToRASMatrix(old_matrix)
            old_transform = self._parent_transform_id(output)
            undo.append(lambda: (
                output.SetIJKToRASMatrix(old_matrix),
                output.SetAndObserveImageData(old_image),
                output.SetAndObserveTransformNodeID(old_transform),
            ))
        output.SetIJKToRASMatrix(_array_to_matrix(job.referenceIJKToRAS))  # exactly input 1's geometry
        output.SetAndObserveImageData(image)
        output.SetAndObserveTransformNodeID(job.parentTransformNodeID)
        if output.GetDisplayNode() is None:
            output.CreateDefaultDisplayNodes()
        return output

    @staticmethod
    def _table_node(node: Any, scene: Any, name: str, undo: list[Callable[[], None]]) -> Any:
        if node is None:
            return scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
        old_table = node.GetTable()
        undo.append(lambda: node.SetAndObserveTable(old_table))
        return node

    @staticmethod
    def _metrics_table(computation: FusionComputation) -> vtk.vtkTable:
        """One row per metric: key, label, value, direction, definition, reference; then fusion time."""
        columns = {name: vtk.vtkStringArray() for name in ("metric", "name", "direction", "definition", "reference")}
        value = vtk.vtkDoubleArray()
        value.SetName("value")
        rows = [
            (key, METRICS[key].label, v, METRICS[key].direction, METRICS[key].definition, METRICS[key].reference)
            for key, v in computation.metrics.items()
        ]
        rows.append(("time_s", "fusion time", computation.seconds, "lower is better",
                     f"wall time of the fusion ({computation.methodName}), seconds, metrics excluded", "-"))
        for key, label, v, direction, definition, reference in rows:
            columns["metric"].InsertNextValue(key)
            columns["name"].InsertNextValue(label)
            value.InsertNextValue(v)
            columns["direction"].InsertNextValue(direction)
            columns["definition"].InsertNextValue(definition)
            columns["reference"].InsertNextValue(reference)
        table = vtk.vtkTable()
        for name in ("metric", "name"):
            columns[name].SetName(name)
            table.AddColumn(columns[name])
        table.AddColumn(value)
        for name in ("direction", "definition", "reference"):
            columns[name].SetName(name)
            table.AddColumn(columns[name])
        return table

    @staticmethod
    def _describe_metrics_columns(node: Any) -> None:
        node.SetUseColumnTitleAsColumnHeader(True)
        node.SetColumnDescription(
            "value",
            "volume value: mean of the per-slice values over slices where some input is not constant",
        )

    @staticmethod
    def _slice_table(computation: FusionComputation, keys: Sequence[str]) -> vtk.vtkTable:
        table = vtk.vtkTable()
        index = vtk.vtkIntArray()
        index.SetName("slice")
        for s in computation.sliceIndices:
            index.InsertNextValue(int(s))
        table.AddColumn(index)
        for key in keys:
            column = vtk.vtkDoubleArray()
            column.SetName(key)
            for v in computation.sliceMetrics[key]:
                column.InsertNextValue(float(v))
            table.AddColumn(column)
        return table

    def _plot(self, job: FusionJob, slice_table: Any, undo: list[Callable[[], None]]) -> tuple[Any, list[Any]]:
        scene = job.scene
        chart = job.plotChartNode
        reusable: dict[str, Any] = {}
        if chart is None:
            chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName("MedFusion metrics per slice"))
        else:
            old_ids = [chart.GetNthPlotSeriesNodeID(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
            old_titles = (chart.GetTitle(), chart.GetXAxisTitle(), chart.GetYAxisTitle())

            def restore_chart() -> None:
                chart.RemoveAllPlotSeriesNodeIDs()
                for node_id in old_ids:
                    chart.AddAndObservePlotSeriesNodeID(node_id)
                chart.SetTitle(old_titles[0])
                chart.SetXAxisTitle(old_titles[1])
                chart.SetYAxisTitle(old_titles[2])

            undo.append(restore_chart)
            # Series this logic made on an earlier run are reused, so re-running does not pile them up.
            for node_id in old_ids:
                node = scene.GetNodeByID(node_id)
                key = node.GetAttribute(_MEDFUSION_METRIC_ATTRIBUTE) if node is not None else None
                if key:
                    reusable[key] = node
            chart.RemoveAllPlotSeriesNodeIDs()
        axis_name = "KJI"[job.axis]
        chart.SetTitle("MedFusion: fusion quality per slice")
        chart.SetXAxisTitle(f"slice index (along {axis_name})")
        chart.SetYAxisTitle("metric value")
        series_nodes = []
        for key in job.plotMetrics:
            series = reusable.get(key)
            if series is None:
                series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(METRICS[key].label))
                series.SetAttribute(_MEDFUSION_METRIC_ATTRIBUTE, key)
                # A fixed palette, not SetUniqueColor(): the same metric keeps its colour across runs,
                # and it does not depend on the Colors module's random colour table being loaded.
                series.SetColor(*_PLOT_COLOURS[len(series_nodes) % len(_PLOT_COLOURS)])
            else:
                old = (series.GetTableNodeID(), series.GetXColumnName(), series.GetYColumnName())
                undo.append(lambda s=series, o=old: (
                    s.SetAndObserveTableNodeID(o[0]), s.SetXColumnName(o[1]), s.SetYColumnName(o[2])
                ))
            series.SetAndObserveTableNodeID(slice_table.GetID())
            series.SetXColumnName("slice")
            series.SetYColumnName(key)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
            series_nodes.append(series)
        return chart, series_nodes

    # ---------------------------------------------------------------- training: the synchronous whole

    def train(
        self,
        outputModelPath: str | os.PathLike,
        inputVolumeNodes: Optional[Sequence[Any]] = None,
        targetVolumeNode: Any = None,
        trainingData: Optional[str | os.PathLike] = None,
        family: str = "cnn",
        iterations: int = DEFAULT_TRAINING_ITERATIONS,
        blockSize: Optional[int] = None,
        axis: int = 0,
        device: str = "auto",
        resampleToFirst: bool = False,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelFlag] = None,
        *,
        modalities: Optional[Sequence[Optional[str]]] = None,
        seed: int = 0,
        overwrite: bool = False,
    ) -> MedFusionTrainingResult:
        """Train a fusion model and write it to a file; returns when done. The scene is never modified.

        The training cases are 2D slices: either of volumes in the scene (K registered inputs and
        a target, the ideal fused volume, all on one grid), or of the cases of a training folder
        (``<folder>/<case>/input_1.*, input_2.*, target.*``, or a manifest CSV; see
        :func:`MedFusionLib.batch.load_training_triplets`). Slices whose target is constant are
        skipped. The network and optimiser settings are those of the shipped recipes
        (:mod:`MedFusionLib.recipes`), with few iterations by default so that a run takes about a
        minute on a CPU; the weights with the best validation loss are kept.

        Synchronous, like :meth:`fuse`. The Slicer widget instead calls :meth:`prepareTraining`,
        runs :meth:`computeTraining` in a background thread (:class:`BackgroundTraining`) and calls
        :meth:`commitTraining` when it ends. A cancelled or failed run writes no file.

        :param outputModelPath: the model file to write (``.pt``); never one of the training inputs.
            Then use it with ``fuse(..., method=str(result.modelPath))``.
        :param inputVolumeNodes: K >= 2 registered scalar volume nodes to learn from (with
            ``targetVolumeNode``); not modified. Leave None to train from ``trainingData``.
        :param targetVolumeNode: the target (ideal fused) volume for ``inputVolumeNodes``; same grid
            as input 1 unless ``resampleToFirst``.
        :param trainingData: a folder of case folders or a manifest CSV (instead of scene volumes).
        :param family: ``"cnn"`` (multi-scale weight CNN, fuses any number of inputs) or ``"dbm"``
            (RBM-initialised block network, fuses exactly K inputs).
        :param iterations: optimiser steps (default :data:`DEFAULT_TRAINING_ITERATIONS`; the shipped
            model had 8000).
        :param blockSize: training block side n = 2^i, or None for the family's default
            (:data:`DEFAULT_TRAINING_BLOCK_SIZES`) reduced to fit the slices. A DBM fuses blocks of exactly this size.
        :param axis: array axis to cut the volumes into slices along: 0 = K, 1 = J, 2 = I.
        :param device: ``"auto"`` (GPU when present, else CPU), ``"cpu"`` or ``"gpu"``.
        :param resampleToFirst: resample other inputs and the target onto input 1's grid when their
            geometry differs (scene volumes only); otherwise a geometry mismatch is an error.
        :param progress: ``progress(fraction, message)``, fraction in [0, 1].
        :param cancel: flag with ``is_set()`` (e.g. ``threading.Event``), polled between slices and at
            every validation step of the training.
        :param modalities: optional modality per input volume (``"CT"``, ``"MRI"``, ``"PET"``,
            ``"SPECT"`` or None) for intensity standardisation; scene volumes only (a manifest CSV
            carries its own modality columns).
        :param seed: seeds block sampling, initialisation and augmentation (same data and seed, same model on a CPU).
        :param overwrite: allow replacing an existing file at ``outputModelPath`` (never an input).
        :returns: a :class:`MedFusionTrainingResult`.
        :raises InputError: a refused argument, with a message naming it; nothing was written.
        :raises MedFusionLib.engine.rbm.TrainingCancelled: ``cancel`` was set; nothing was written.
        """
        job = self.prepareTraining(
            outputModelPath, inputVolumeNodes, targetVolumeNode, trainingData, family, iterations, blockSize,
            axis, device, resampleToFirst, modalities=modalities, seed=seed, overwrite=overwrite,
        )
        computation = self.computeTraining(job, progress=progress, cancel=cancel)
        _check_training_cancel(cancel, "before writing the model")
        result = self.commitTraining(job, computation)
        if progress is not None:
            progress(1.0, "done")
        return result

    # ---------------------------------------------------------------- training phase 1: check and copy

    def prepareTraining(
        self,
        outputModelPath: str | os.PathLike,
        inputVolumeNodes: Optional[Sequence[Any]] = None,
        targetVolumeNode: Any = None,
        trainingData: Optional[str | os.PathLike] = None,
        family: str = "cnn",
        iterations: int = DEFAULT_TRAINING_ITERATIONS,
        blockSize: Optional[int] = None,
        axis: int = 0,
        device: str = "auto",
        resampleToFirst: bool = False,
        *,
        modalities: Optional[Sequence[Optional[str]]] = None,
        seed: int = 0,
        overwrite: bool = False,
    ) -> TrainingJob:
        """Check every argument and copy the training volumes out of the scene (call on the scene's thread).

        Parameters as in :meth:`train`. Does not modify the scene and writes nothing.

        :returns: a :class:`TrainingJob` for :meth:`computeTraining` and :meth:`commitTraining`.
        :raises InputError: the first problem found, with a message naming the input.
        """
        if family not in TRAINING_FAMILIES:
            raise InputError(f"model family: expected one of {list(TRAINING_FAMILIES)}, got {family!r}")
        iterations = check_int(iterations, "training iterations")
        seed = check_int(seed, "seed", minimum=0)
        if blockSize is not None:
            blockSize = validate_block_size(blockSize)
        if isinstance(axis, bool) or axis not in (0, 1, 2):
            raise InputError(f"slice axis: expected 0 (K), 1 (J) or 2 (I), got {axis!r}")
        device_key = str(device).strip().lower() if device is not None else "auto"
        if device_key not in DEVICES:
            raise InputError(f"device: expected one of {sorted(DEVICES)}, got {device!r}")
        resolved_device = self._resolve_device(device_key)

        from_scene = inputVolumeNodes is not None or targetVolumeNode is not None
        from_folder = trainingData is not None and str(trainingData).strip() not in ("", ".")
        if from_scene and from_folder:
            raise InputError("training data: give either input volumes and a target volume, or a training folder, not both")
        if not from_scene and not from_folder:
            raise InputError(
                "training data: none given; choose input volumes and a target volume, or a folder of training cases"
            )
        common = dict(overwrite=bool(overwrite), family=family, blockSize=blockSize, iterations=iterations,
                      device=resolved_device, seed=seed, axis=int(axis))
        if from_folder:
            if modalities is not None:
                raise InputError("modalities: for a training folder, give them as modality columns of a manifest CSV")
            job = self._prepare_training_folder(Path(os.fspath(trainingData)).expanduser(), outputModelPath, common)
        else:
            job = self._prepare_training_volumes(
                inputVolumeNodes, targetVolumeNode, modalities, bool(resampleToFirst), outputModelPath, common
            )
        return job

    def _prepare_training_volumes(
        self, inputVolumeNodes: Any, targetVolumeNode: Any, modalities: Optional[Sequence[Optional[str]]],
        resampleToFirst: bool, outputModelPath: Any, common: dict[str, Any],
    ) -> TrainingJob:
        nodes = self._check_inputs(inputVolumeNodes)
        scene = nodes[0].GetScene()
        names = [f"input {i + 1} ({node.GetName()})" for i, node in enumerate(nodes)]
        if targetVolumeNode is None:
            raise InputError("target volume: training needs a target, the ideal fused volume of the inputs")
        self._check_volume(targetVolumeNode, "target volume", scene)
        if any(targetVolumeNode is node for node in nodes):
            raise InputError("target volume: it is one of the inputs; choose the ideal (reference) fused volume")
        if modalities is not None and len(modalities) != len(nodes):
            raise InputError(f"modalities: {len(modalities)} given for {len(nodes)} input volumes")
        self._common_parent_transform_id([*nodes, targetVolumeNode])
        protected = [path for node in (*nodes, targetVolumeNode) for path in self._stored_files(node)]
        output = self._check_model_output(outputModelPath, protected, common["overwrite"])

        arrays = [self._copy_voxels(node, name) for node, name in zip(nodes, names)]
        matrices = [_ijk_to_ras(node) for node in nodes]
        target_array = self._copy_voxels(targetVolumeNode, "target volume")
        target_matrix = _ijk_to_ras(targetVolumeNode)
        if not resampleToFirst:
            others = [*zip(arrays[1:], matrices[1:], names[1:]), (target_array, target_matrix, "target volume")]
            for array, matrix, name in others:
                self._check_same_grid(arrays[0], matrices[0], array, matrix, name, names[0],
                                      remedy="tick 'Resample onto input 1'")
        # The slices are input 1's (resampling puts everything on its grid): refuse a block that cannot fit now.
        plane = [n for a, n in enumerate(arrays[0].shape) if a != common["axis"]]
        if min(plane) < 2:
            raise InputError(f"{names[0]}: slices along axis {'KJI'[common['axis']]} are {plane[1]}x{plane[0]} voxels; "
                             "too small to train on -- choose another slice axis")
        if common["blockSize"] is not None and common["blockSize"] > min(plane):
            raise InputError(f"block size {common['blockSize']} is larger than the slices ({plane[1]}x{plane[0]} voxels "
                             f"along axis {'KJI'[common['axis']]}); choose a block size of at most {min(plane)}")
        return TrainingJob(
            outputModelPath=output,
            protectedPaths=protected,
            nInputs=len(nodes),
            inputNames=[node.GetName() for node in nodes],
            inputArrays=arrays,
            inputIJKToRAS=matrices,
            targetArray=target_array,
            targetIJKToRAS=target_matrix,
            modalities=list(modalities) if modalities is not None else None,
            resampleToFirst=resampleToFirst,
            **common,
        )

    def _prepare_training_folder(self, data: Path, outputModelPath: Any, common: dict[str, Any]) -> TrainingJob:
        from MedFusionLib.batch import groups_from_folder, groups_from_manifest

        if not data.exists():
            raise InputError(f"training folder {data}: no such folder (or manifest CSV)")
        # Only the layout is read here (fast, on the GUI thread, so mistakes show at once); the
        # images are read in computeTraining, off the GUI thread.
        groups = groups_from_folder(data) if data.is_dir() else groups_from_manifest(data)
        without_target = [group.name for group in groups if group.target is None]
        if without_target:
            raise InputError(
                f"training folder {data}: case(s) {', '.join(without_target[:5])} have no target image "
                "(target.*); training needs the ideal fused image of every case"
            )
        protected = [path for group in groups for path in (*group.inputs, group.target)]
        if data.is_file():
            protected.append(data)
        output = self._check_model_output(outputModelPath, protected, common["overwrite"])
        return TrainingJob(
            outputModelPath=output,
            protectedPaths=protected,
            nInputs=len(groups[0].inputs),
            inputNames=[group.name for group in groups],
            trainingData=data,
            **common,
        )

    @staticmethod
    def _stored_files(node: Any) -> list[Path]:
        """The files a volume node was loaded from or is saved to: a model must never replace them."""
        storage = node.GetStorageNode()
        if storage is None:
            return []
        names = [storage.GetFileName(), *(storage.GetNthFileName(i) for i in range(storage.GetNumberOfFileNames()))]
        return [Path(name) for name in names if name]

    @staticmethod
    def _check_model_output(outputModelPath: Any, protected: Sequence[Path], overwrite: bool) -> Path:
        """The output model path, refused when it is not a writable new ``.pt`` file or is an input."""
        from MedFusionLib.fusion import DEFAULT_MODEL_PATH

        if outputModelPath is None or str(outputModelPath).strip() in ("", "."):
            raise InputError("output model file: choose where to write the trained model (a .pt file)")
        path = Path(os.fspath(outputModelPath)).expanduser()
        label = f"output model file {path}"
        for guarded in [*protected, DEFAULT_MODEL_PATH]:
            if _same_path(path, guarded):
                what = "the shipped default model" if guarded == DEFAULT_MODEL_PATH else "a training input"
                raise InputError(f"{label}: it is {what} ({guarded}), which is never overwritten; choose another file")
        if path.suffix.lower() != ".pt":
            raise InputError(f"{label}: expected a file name ending in .pt (a MedFusion model)")
        if path.is_dir():
            raise InputError(f"{label}: is a folder; give a file name")
        if not path.parent.is_dir():
            raise InputError(f"{label}: the folder {path.parent} does not exist")
        if path.exists() and not overwrite:
            raise InputError(f"{label}: already exists; choose another name or allow overwriting it")
        return path

    # ---------------------------------------------------------------- training phase 2: fit (any thread)

    def computeTraining(
        self, job: TrainingJob, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelFlag] = None
    ) -> TrainingComputation:
        """Build the training slices and fit the model; touches no MRML node and writes no file.

        :param job: from :meth:`prepareTraining`.
        :param progress: ``progress(fraction, message)``; called from this thread.
        :param cancel: flag with ``is_set()``; polled between slices and at every validation step.
        :returns: a :class:`TrainingComputation`.
        :raises TrainingCancelled: the flag was set.
        :raises InputError: training data MedFusionLib refuses (unreadable file, shapes that differ, ...).
        """
        from MedFusionLib.recipes import recipe

        _check_training_cancel(cancel, "before starting")
        dataset = self._training_dataset(job, _Stage(progress, 0.0, 0.05), cancel)
        _check_training_cancel(cancel, "before training")
        side = dataset.min_side()
        block = job.blockSize if job.blockSize is not None else min(
            DEFAULT_TRAINING_BLOCK_SIZES[job.family], 2 ** int(math.floor(math.log2(max(side, 2))))
        )
        if block > side:
            raise InputError(f"block size {block} is larger than the smallest training slice side {side}; "
                             f"choose a block size of at most {side}")
        spec = recipe(_FAMILY_RECIPES[job.family])
        shipped: TrainingConfig = spec["training"]
        config = dataclasses.replace(
            shipped,
            iterations=job.iterations,
            # Progress and cancel are only reported at validation steps: about 25 of them per run.
            validation_every=max(1, min(shipped.validation_every, math.ceil(job.iterations / 25))),
            validation_blocks=min(shipped.validation_blocks, 64),  # validation costs ~10% of the steps
            patience=None,  # a short run: keep the best validated weights instead of stopping early
            seed=job.seed,
            device=job.device,
            checkpoint=None,  # nothing is written before commitTraining
            # DBM: unsupervised pre-training in proportion to the supervised steps (4000 blocks at 300 steps).
            pretrain_epochs=min(shipped.pretrain_epochs, 2),
            pretrain_blocks=min(shipped.pretrain_blocks, max(500, 13 * job.iterations)),
        )
        torch.manual_seed(job.seed)
        model = FusionModel.create(job.family, dataset.n_inputs, block, **spec["network"])
        history = model.fit(dataset, config, progress=_Stage(progress, 0.05, 1.0), cancel=cancel)
        model.info.modalities = [m or "auto" for m in job.modalities] if job.modalities else []
        model.info.training.update({
            "recipe": f"{spec['name']} network, MedFusion Slicer module training",
            "command": "MedFusion module (3D Slicer), Train section / MedFusionLogicCore.train",
            "data": (f"scene volumes {', '.join(job.inputNames)} with a target volume, slices along {'KJI'[job.axis]}"
                     if job.fromScene else f"training folder {job.trainingData} ({len(job.inputNames)} cases)"),
            "training_slices": len(dataset),
            "torch": torch.__version__,
        })
        return TrainingComputation(model=model, history=history, trainingSlices=len(dataset), blockSize=block)

    def _training_dataset(self, job: TrainingJob, progress: _Stage, cancel: Optional[CancelFlag]) -> TripletDataset:
        """The 2D training cases: slices along ``job.axis`` with a non-constant target, standardised to [0, 1]."""
        if not job.fromScene:
            from MedFusionLib.batch import load_training_triplets

            progress(0.0, f"reading {len(job.inputNames)} training cases")
            dataset = load_training_triplets(job.trainingData, axis=job.axis)
            if dataset.n_inputs != job.nInputs:  # the folder changed since prepareTraining
                raise InputError(f"training folder {job.trainingData}: cases have {dataset.n_inputs} inputs, "
                                 f"expected {job.nInputs}")
            progress(1.0, f"{len(dataset)} training slices")
            return dataset

        arrays, target = list(job.inputArrays), job.targetArray
        if job.resampleToFirst:
            from MedFusionLib import preprocessing

            reference = _loaded(arrays[0], job.inputIJKToRAS[0])
            for i in range(1, len(arrays)):
                moving = _loaded(arrays[i], job.inputIJKToRAS[i])
                if not reference.geometry_matches(moving, tol=GEOMETRY_TOLERANCE):
                    arrays[i] = preprocessing.resample_to(reference, moving).array
                _check_training_cancel(cancel, "resampling")
            moving = _loaded(target, job.targetIJKToRAS)
            if not reference.geometry_matches(moving, tol=GEOMETRY_TOLERANCE):
                target = preprocessing.resample_to(reference, moving).array
        modalities = job.modalities or [None] * len(arrays)
        # The same standardisation fuse_volume applies, so the model learns on what it will later see.
        inputs = [to_unit_range(a, modalities[i], f"input {i + 1}") for i, a in enumerate(arrays)]
        target = to_unit_range(target, None, "target volume")
        triplets = []
        count = target.shape[job.axis]
        for s in range(count):
            _check_training_cancel(cancel, "building the training slices")
            target_slice = np.take(target, s, axis=job.axis)
            if float(np.ptp(target_slice)) > 0.0:  # a constant target teaches nothing
                triplets.append(Triplet([np.take(a, s, axis=job.axis) for a in inputs], target_slice, f"slice {s}"))
            progress((s + 1) / count, f"training slice {s + 1}/{count}")
        if not triplets:
            raise InputError(f"target volume: constant in every slice along {'KJI'[job.axis]}; nothing to learn from")
        return TripletDataset(triplets)

    # ---------------------------------------------------------------- training phase 3: write the model

    def commitTraining(self, job: TrainingJob, computation: TrainingComputation) -> MedFusionTrainingResult:
        """Write the model file atomically (never over an input); the scene is not touched.

        The file appears complete or not at all: it is written to a temporary file in the same
        folder and renamed into place.

        :param job: from :meth:`prepareTraining`.
        :param computation: from :meth:`computeTraining`.
        :returns: a :class:`MedFusionTrainingResult`.
        :raises InputError: the destination became unusable meanwhile (folder gone, file created, ...).
        """
        computation.model.save(job.outputModelPath, overwrite=job.overwrite, protected_paths=job.protectedPaths)
        history = computation.history
        return MedFusionTrainingResult(
            modelPath=job.outputModelPath,
            family=job.family,
            blockSize=computation.blockSize,
            nInputs=computation.model.n_inputs,
            trainingSlices=computation.trainingSlices,
            iterationsRun=len(history.train_loss),
            bestValidationLoss=float(history.best_validation_loss),
            seconds=float(history.seconds),
            device=str(history.device),
            history=history,
        )


# --------------------------------------------------------------------------------------------
# Running the computation off the GUI thread
# --------------------------------------------------------------------------------------------


class _BackgroundRun:
    """Runs a computation phase in a ``threading.Thread``; :meth:`finish` commits on the scene thread.

    The widget starts one, polls :attr:`progress` and :meth:`isRunning` from a ``qt.QTimer``
    (so the GUI never blocks), turns its button into Cancel (:meth:`cancel`), and calls
    :meth:`finish` once the thread has ended. Only the pure computation runs in the thread;
    every MRML access and every file write happens in :meth:`finish`, on the thread that
    prepared the job, and only when the run was neither cancelled nor failed.

    :param core: the logic that prepared ``job``.
    :param job: from the core's prepare step.
    """

    #: What the run does, for thread names and messages.
    what = "computation"

    def __init__(self, core: MedFusionLogicCore, job: Any) -> None:
        self.core, self.job = core, job
        self.cancelEvent = threading.Event()
        self._lock = threading.Lock()
        self._progress: tuple[float, str] = (0.0, "starting")
        self._computation: Any = None
        self._error: Optional[BaseException] = None
        self._finished = False
        self._thread = threading.Thread(target=self._run, name=f"MedFusion {self.what}", daemon=True)

    # What a subclass provides: the threaded phase, the commit phase, and its cancel exception.
    def _compute(self, progress: ProgressCallback, cancel: CancelFlag) -> Any:
        raise NotImplementedError

    def _commit(self, computation: Any) -> Any:
        raise NotImplementedError

    def _cancelled(self) -> Cancelled:
        raise NotImplementedError

    def start(self) -> "_BackgroundRun":
        """Start the computation thread; returns self."""
        self._thread.start()
        return self

    def _report(self, fraction: float, message: str) -> None:
        with self._lock:  # read by the GUI thread's timer
            self._progress = (fraction, message)

    def _run(self) -> None:
        try:
            self._computation = self._compute(self._report, self.cancelEvent)
        except BaseException as error:  # handed to the scene thread by finish()
            self._error = error

    @property
    def progress(self) -> tuple[float, str]:
        """The latest ``(fraction, message)`` reported by the computation."""
        with self._lock:
            return self._progress

    def isRunning(self) -> bool:
        """Whether the computation thread is still working."""
        return self._thread.is_alive()

    def cancel(self) -> None:
        """Ask the computation to stop at its next check; returns at once."""
        self.cancelEvent.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the thread ends (or ``timeout`` seconds pass); True when it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def finish(self) -> Any:
        """Commit the result (call on the scene thread, after the thread ended).

        :raises RuntimeError: the thread is still running, or finish() was already called.
        :raises Cancelled: the run was cancelled (nothing was written).
        :raises Exception: whatever the computation or the commit raised (nothing was written).
        """
        if self._thread.is_alive():
            raise RuntimeError(f"the {self.what} is still running; call finish() once isRunning() is False")
        if self._finished:
            raise RuntimeError(f"finish() was already called for this {self.what}")
        self._finished = True
        if self._error is not None:
            raise self._error
        if self.cancelEvent.is_set():
            raise self._cancelled()
        return self._commit(self._computation)


class BackgroundFusion(_BackgroundRun):
    """Runs :meth:`MedFusionLogicCore.compute` in a thread; :meth:`finish` calls :meth:`MedFusionLogicCore.commit`.

    :param core: the logic that prepared ``job``.
    :param job: a :class:`FusionJob` from :meth:`MedFusionLogicCore.prepare`.

    :meth:`finish` returns a :class:`MedFusionResult`, or raises :class:`FusionCancelled` when the
    run was cancelled; cancel is honoured between slice batches.
    """

    what = "fusion"

    def _compute(self, progress: ProgressCallback, cancel: CancelFlag) -> FusionComputation:
        return self.core.compute(self.job, progress=progress, cancel=cancel)

    def _commit(self, computation: FusionComputation) -> MedFusionResult:
        return self.core.commit(self.job, computation)

    def _cancelled(self) -> Cancelled:
        return FusionCancelled("fusion cancelled; the scene was not changed")


class BackgroundTraining(_BackgroundRun):
    """Runs :meth:`MedFusionLogicCore.computeTraining` in a thread; :meth:`finish` writes the model file.

    :param core: the logic that prepared ``job``.
    :param job: a :class:`TrainingJob` from :meth:`MedFusionLogicCore.prepareTraining`.

    :meth:`finish` returns a :class:`MedFusionTrainingResult`, or raises :class:`TrainingCancelled`
    when the run was cancelled (no file is written); cancel is honoured between slices and at every
    validation step (about 25 per run).
    """

    what = "training"

    def _compute(self, progress: ProgressCallback, cancel: CancelFlag) -> TrainingComputation:
        return self.core.computeTraining(self.job, progress=progress, cancel=cancel)

    def _commit(self, computation: TrainingComputation) -> MedFusionTrainingResult:
        return self.core.commitTraining(self.job, computation)

    def _cancelled(self) -> Cancelled:
        return TrainingCancelled("training cancelled; no model file was written")


__all__ = [
    "BackgroundFusion",
    "BackgroundTraining",
    "Cancelled",
    "CancelFlag",
    "DEFAULT_PLOT_METRICS",
    "DEFAULT_TRAINING_BLOCK_SIZES",
    "DEFAULT_TRAINING_ITERATIONS",
    "DEVICES",
    "FusionCancelled",
    "FusionComputation",
    "FusionJob",
    "InputError",
    "MedFusionLogicCore",
    "MedFusionResult",
    "MedFusionTrainingResult",
    "TRAINING_FAMILIES",
    "TrainingCancelled",
    "TrainingComputation",
    "TrainingJob",
    "geometry_from_ijk_to_ras",
    "ijk_to_ras_from_geometry",
]
