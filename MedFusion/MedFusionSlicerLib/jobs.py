"""What travels between the phases of a run: plain data, no MRML calls, no heavy imports.

A run has three phases (see :mod:`.fusion_logic` and :mod:`.training_logic`): *prepare* (on
the scene's thread) checks every input and copies what the computation needs out of the
scene into a job; *compute* (in this process, or in a worker process: :mod:`.process`) turns
the job's task into a computation without touching MRML; *commit* (on the scene's thread)
writes the nodes or the model file.

A job holds the scene side (nodes to write to, files to protect) and a *task*: the pure
computation's input -- arrays, LPS geometries and options -- which is what a worker process
receives (:mod:`.worker` writes it to files and reads it back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

#: A SimpleITK-style LPS geometry: spacing (i, j, k), origin (mm), row-major 3x3 direction.
Geometry = tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]

#: How far two geometries (IJK-to-RAS matrices, or LPS spacing/origin/direction) may differ and still
#: count as the same grid (mm and direction cosines); absorbs the float32 rounding of NIfTI headers,
#: far below any real misalignment.
GEOMETRY_TOLERANCE = 1e-4


@dataclass
class FusionTask:
    """The computation of a fusion: everything :func:`.compute.compute_fusion` needs.

    :param inputs: copies of the input volumes' voxels, (k, j, i); input 1 is the reference grid.
    :param geometries: each input's LPS geometry.
    :param target: a copy of the target volume's voxels, or None.
    :param targetGeometry: its LPS geometry.
    :param method: a resolved :class:`~MedFusionLib.engine.model.FusionModel` or baseline.
    :param axis: array axis to fuse slices along (0 = K, 1 = J, 2 = I).
    :param blockSize: None (whole slices) or the block side n.
    :param device: what MedFusionLib is asked for (None: automatic).
    :param modalities: modality per input for standardisation, or None (automatic).
    :param resampleToFirst: resample inputs on another grid onto input 1's.
    :param register: ``"rigid"``/``"affine"`` registration onto input 1, or None.
    :param denoise: a denoising method applied to every input first, or None.
    :param computeMetrics: score the result slice by slice.
    :param metrics: the metric keys to compute.
    :param computeContributions: also compute each input's share of every fused voxel.
    """

    inputs: list[np.ndarray]
    geometries: list[Geometry]
    target: Optional[np.ndarray]
    targetGeometry: Optional[Geometry]
    method: Any
    axis: int = 0
    blockSize: Optional[int] = None
    device: Optional[str] = None
    modalities: Optional[list[Optional[str]]] = None
    resampleToFirst: bool = False
    register: Optional[str] = None
    denoise: Optional[str] = None
    computeMetrics: bool = True
    metrics: list[str] = field(default_factory=list)
    computeContributions: bool = False


@dataclass
class FusionJob:
    """A prepared fusion: the nodes it reads and writes, and its :class:`FusionTask`.

    The task's arrays are copies, so a user editing or deleting a node while the computation
    runs cannot change or free the memory it reads.
    """

    scene: Any
    inputNodes: list[Any]
    referenceIJKToRAS: np.ndarray
    targetNode: Any
    plotMetrics: list[str]
    outputVolumeNode: Any
    outputName: str
    parentTransformNodeID: Optional[str]
    metricsTableNode: Any
    sliceTableNode: Any
    plotChartNode: Any
    task: FusionTask
    contributionVolumeNode: Any = None
    inputNames: list[str] = field(default_factory=list)


@dataclass
class FusionComputation:
    """What a fusion computed; nothing of it is in the scene yet.

    :param fused: the fused volume, ``float32`` in [0, 1], (k, j, i) order, on the first input's grid.
    :param seconds: wall time of the fusion (:func:`fuse_volume`), without metrics.
    :param methodName: what fused it.
    :param metrics: volume value of each metric: the mean over the informative slices.
    :param sliceMetrics: per-slice values of each metric (NaN on skipped slices).
    :param sliceIndices: index of each slice along the fusion axis.
    :param metricsSeconds: wall time of the metrics.
    :param contributions: each input's share of every fused voxel, ``(K, k, j, i)`` float32, or None.
    """

    fused: np.ndarray
    seconds: float
    methodName: str
    metrics: dict[str, float] = field(default_factory=dict)
    sliceMetrics: dict[str, np.ndarray] = field(default_factory=dict)
    sliceIndices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    metricsSeconds: float = 0.0
    contributions: Optional[np.ndarray] = None


@dataclass
class MedFusionResult:
    """The nodes a fusion wrote and the numbers in them.

    :param outputVolumeNode: the fused volume (float32 in [0, 1], the first input's geometry).
    :param metricsTableNode: one row per metric (None when metrics were off).
    :param sliceTableNode: one row per slice (None when metrics were off).
    :param plotChartNode: chosen metrics against the slice index (None when metrics were off).
    :param plotSeriesNodes: the chart's series, one per plotted metric.
    :param metrics: volume value of each metric (mean over informative slices).
    :param sliceMetrics: per-slice values of each metric.
    :param seconds: wall time of the fusion itself.
    :param methodName: what fused it.
    :param contributionVolumeNode: the contribution map (None unless asked for): for two inputs the
        share of input 1 in [0, 1], for more the number of the input that contributed most, each with
        a colour table (see :func:`.scene_writers.write_contributions`).
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
    contributionVolumeNode: Any = None


@dataclass
class TrainingTask:
    """The computation of a training run: everything :func:`.compute.compute_training` needs.

    :param family: ``"cnn"`` or ``"dbm"``.
    :param blockSize: training block side n, or None for the family's default capped by the slice size.
    :param iterations: optimiser steps.
    :param device: what MedFusionLib is asked for (None: automatic).
    :param seed: seeds block sampling, initialisation and augmentation.
    :param axis: array axis the volumes are cut into 2D training slices along.
    :param nInputs: K, the number of inputs per training case.
    :param inputNames: the inputs' names (scene volumes) or the case names (folder), for the model's notes.
    :param inputs: copies of the input volumes' voxels (scene source only).
    :param geometries: their LPS geometries (scene source only).
    :param target: a copy of the target volume's voxels (scene source only).
    :param targetGeometry: its LPS geometry (scene source only).
    :param modalities: modality per input for standardisation (scene source only; None: automatic).
    :param resampleToFirst: resample inputs 2.. and the target onto input 1's grid first (scene source only).
    :param trainingData: the folder of case folders or manifest CSV (folder source only).
    """

    family: str
    blockSize: Optional[int]
    iterations: int
    device: Optional[str]
    seed: int
    axis: int
    nInputs: int
    inputNames: list[str]
    inputs: list[np.ndarray] = field(default_factory=list)
    geometries: list[Geometry] = field(default_factory=list)
    target: Optional[np.ndarray] = None
    targetGeometry: Optional[Geometry] = None
    modalities: Optional[list[Optional[str]]] = None
    resampleToFirst: bool = False
    trainingData: Optional[Path] = None

    @property
    def fromScene(self) -> bool:
        """Whether the training cases are slices of scene volumes (else: files of a training folder)."""
        return self.trainingData is None


@dataclass
class TrainingJob:
    """A prepared training run: where the model goes, what it must never replace, and its :class:`TrainingTask`.

    Training reads the scene once, in prepare, and never writes to it: the only thing a
    training run produces is the model file, written by the commit phase.

    :param outputModelPath: where the model goes (``.pt``); checked not to be an input.
    :param overwrite: whether an existing file at ``outputModelPath`` may be replaced.
    :param protectedPaths: files the model may never be written over (the training inputs, the shipped model).
    :param task: the computation.
    """

    outputModelPath: Path
    overwrite: bool
    protectedPaths: list[Path]
    task: TrainingTask

    @property
    def family(self) -> str:
        return self.task.family


@dataclass
class TrainingComputation:
    """What a training run computed; nothing is on disk yet.

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
