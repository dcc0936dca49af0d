"""The computation of a fusion or training run: pure NumPy/PyTorch, no MRML, no files written.

The same two functions run in this process (the synchronous :meth:`MedFusionLogicCore.fuse`
and :meth:`~MedFusionLogicCore.train`, for batch scripts) and in the worker process that
:class:`~.process.BackgroundFusion` and :class:`~.process.BackgroundTraining` start
(:mod:`.worker`). Nothing here imports Slicer or VTK, so the worker starts with MedFusionLib's
imports only.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Optional

import numpy as np

from MedFusionLib.engine.rbm import TrainingCancelled
from MedFusionLib.errors import Cancelled, InputError
from MedFusionLib.fusion import FusionCancelled, fuse_volume, method_name, to_unit_range
from MedFusionLib.io import LoadedImage
from MedFusionLib.preprocessing import RegistrationCancelled, align_to_first, resample_to
from MedFusionLib.progress import CancelFlag, ProgressCallback

from .choices import DEFAULT_TRAINING_BLOCK_SIZES
from .jobs import GEOMETRY_TOLERANCE, FusionComputation, FusionTask, Geometry, TrainingComputation, TrainingTask


# The shipped recipe (MedFusionLib.recipes) whose network and optimiser settings each family trains with.
_FAMILY_RECIPES = {"cnn": "default", "dbm": "dbm"}


class Stage:
    """Maps a phase's own 0..1 progress onto a sub-range of the caller's progress bar."""

    def __init__(self, progress: Optional[ProgressCallback], start: float, stop: float) -> None:
        self.progress, self.start, self.stop = progress, start, stop

    def __call__(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(self.start + (self.stop - self.start) * min(max(fraction, 0.0), 1.0), message)


def check_fusion_cancel(cancel: Optional[CancelFlag], where: str) -> None:
    if cancel is not None and cancel.is_set():
        raise FusionCancelled(f"fusion cancelled ({where}); the scene was not changed")


def check_training_cancel(cancel: Optional[CancelFlag], where: str) -> None:
    if cancel is not None and cancel.is_set():
        raise TrainingCancelled(f"training cancelled ({where}); no model file was written")


def _loaded(array: np.ndarray, geometry: Geometry) -> LoadedImage:
    return LoadedImage(array, *geometry)


def _on_first_grid(
    inputs: list[np.ndarray], geometries: list[Geometry], target: Optional[np.ndarray],
    target_geometry: Optional[Geometry], *, denoise: Optional[str], register: Optional[str], resample: bool,
    progress: Stage, cancel: Optional[CancelFlag],
) -> tuple[list[np.ndarray], Optional[np.ndarray]]:
    """Denoise, then register or resample inputs 2.. (and the target) onto input 1's grid."""
    if not (denoise or register or resample):
        return inputs, target
    images = align_to_first(
        [_loaded(a, g) for a, g in zip(inputs, geometries)], denoise_method=denoise, register_transform=register,
        resample=resample, tolerance=GEOMETRY_TOLERANCE, progress=Stage(progress, 0.0, 0.9), cancel=cancel,
    )
    if target is not None and (register or resample):
        moving = _loaded(target, target_geometry)
        if not images[0].geometry_matches(moving, tol=GEOMETRY_TOLERANCE):
            target = resample_to(images[0], moving).array
    progress(1.0, "inputs ready")
    return [image.array for image in images], target


# ---------------------------------------------------------------------------------------- fusion


def compute_fusion(
    task: FusionTask, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelFlag] = None
) -> FusionComputation:
    """Pre-process, fuse and score a fusion task.

    :param task: from the fusion logic's prepare step.
    :param progress: ``progress(fraction, message)``.
    :param cancel: flag with ``is_set()``; polled between batches of slices and between metric slices.
    :raises FusionCancelled: the flag was set.
    :raises InputError: an input MedFusionLib refuses (non-finite voxels, model/input count mismatch...).
    """
    from MedFusionLib.metrics import evaluate_volume

    prepared_share = 0.1 if (task.register or task.resampleToFirst or task.denoise) else 0.0
    fuse_share = 0.6 if task.computeMetrics else 1.0 - prepared_share
    check_fusion_cancel(cancel, "before starting")
    try:
        arrays, target = _on_first_grid(
            list(task.inputs), list(task.geometries), task.target, task.targetGeometry, denoise=task.denoise,
            register=task.register, resample=task.resampleToFirst, progress=Stage(progress, 0.0, prepared_share),
            cancel=cancel,
        )
    except RegistrationCancelled:
        raise FusionCancelled("fusion cancelled (pre-processing); the scene was not changed") from None
    check_fusion_cancel(cancel, "before fusing")

    start = time.perf_counter()
    result = fuse_volume(
        arrays, method=task.method, axis=task.axis, block_size=task.blockSize, device=task.device,
        modalities=task.modalities, progress=Stage(progress, prepared_share, prepared_share + fuse_share),
        cancel=cancel, contributions=task.computeContributions,
    )
    fused = result.array
    shares = None if result.contributions is None else np.stack([share.array for share in result.contributions])
    computation = FusionComputation(fused=fused, seconds=time.perf_counter() - start,
                                    methodName=method_name(task.method), contributions=shares)
    if task.computeMetrics:
        try:
            scores = evaluate_volume(
                fused, arrays, target, task.metrics, axis=task.axis, modalities=task.modalities,
                progress=Stage(progress, prepared_share + fuse_share, 1.0), cancel=cancel,
            )
        except Cancelled:
            raise FusionCancelled("fusion cancelled (computing metrics); the scene was not changed") from None
        computation.metrics, computation.sliceMetrics = scores.metrics, scores.slice_metrics
        computation.sliceIndices, computation.metricsSeconds = scores.slice_indices, scores.seconds
    return computation


# ---------------------------------------------------------------------------------------- training


def training_block_size(task: TrainingTask, smallest_side: int) -> int:
    """The block side to train with: the task's, or the family's default reduced to fit the slices."""
    block = task.blockSize if task.blockSize is not None else min(
        DEFAULT_TRAINING_BLOCK_SIZES[task.family], 2 ** int(math.floor(math.log2(max(smallest_side, 2))))
    )
    if block > smallest_side:
        raise InputError(f"block size {block} is larger than the smallest training slice side {smallest_side}; "
                         f"choose a block size of at most {smallest_side}")
    return block


def compute_training(
    task: TrainingTask, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelFlag] = None
) -> TrainingComputation:
    """Build the training slices and fit the model; writes no file.

    :param task: from the training logic's prepare step.
    :param progress: ``progress(fraction, message)``.
    :param cancel: flag with ``is_set()``; polled between slices and about every 1 % of the iterations.
    :raises TrainingCancelled: the flag was set.
    :raises InputError: training data MedFusionLib refuses (unreadable file, shapes that differ, ...).
    """
    import torch

    from MedFusionLib.engine.model import FusionModel
    from MedFusionLib.engine.training import TrainingConfig
    from MedFusionLib.recipes import recipe

    check_training_cancel(cancel, "before starting")
    dataset = _training_dataset(task, Stage(progress, 0.0, 0.05), cancel)
    check_training_cancel(cancel, "before training")
    block = training_block_size(task, dataset.min_side())
    spec = recipe(_FAMILY_RECIPES[task.family])
    shipped: TrainingConfig = spec["training"]
    config = dataclasses.replace(
        shipped,
        iterations=task.iterations,
        # Validation (the kept weights) about 25 times per run; progress and cancel come more often.
        validation_every=max(1, min(shipped.validation_every, math.ceil(task.iterations / 25))),
        validation_blocks=min(shipped.validation_blocks, 64),  # validation costs ~10% of the steps
        patience=None,  # a short run: keep the best validated weights instead of stopping early
        seed=task.seed,
        device=task.device,
        checkpoint=None,  # nothing is written before the commit phase
        patch_size=None,  # the recipe's 64 px patches, or what the slices hold (training_patch_size)
        # DBM: unsupervised pre-training in proportion to the supervised steps (4000 blocks at 300 steps).
        pretrain_epochs=min(shipped.pretrain_epochs, 2),
        pretrain_blocks=min(shipped.pretrain_blocks, max(500, 13 * task.iterations)),
    )
    torch.manual_seed(task.seed)
    model = FusionModel.create(task.family, dataset.n_inputs, block, **spec["network"])
    history = model.fit(dataset, config, progress=Stage(progress, 0.05, 1.0), cancel=cancel)
    model.info.modalities = [m or "auto" for m in task.modalities] if task.modalities else []
    model.info.training.update({
        "recipe": f"{spec['name']} network, MedFusion Slicer module training",
        "command": "MedFusion module (3D Slicer), Train section / MedFusionLogicCore.train",
        "data": (f"scene volumes {', '.join(task.inputNames)} with a target volume, slices along {'KJI'[task.axis]}"
                 if task.fromScene else f"training folder {task.trainingData} ({len(task.inputNames)} cases)"),
        "training_slices": len(dataset),
        "torch": torch.__version__,
    })
    return TrainingComputation(model=model, history=history, trainingSlices=len(dataset), blockSize=block)


def _training_dataset(task: TrainingTask, progress: Stage, cancel: Optional[CancelFlag]):
    """The 2D training cases: slices along ``task.axis`` with a non-constant target, standardised to [0, 1]."""
    from MedFusionLib.engine.training import TripletDataset, slice_triplets

    if not task.fromScene:
        from MedFusionLib.batch import load_training_triplets

        progress(0.0, f"reading {len(task.inputNames)} training cases")
        dataset = load_training_triplets(task.trainingData, axis=task.axis)
        if dataset.n_inputs != task.nInputs:  # the folder changed since prepare
            raise InputError(f"training folder {task.trainingData}: cases have {dataset.n_inputs} inputs, "
                             f"expected {task.nInputs}")
        progress(1.0, f"{len(dataset)} training slices")
        return dataset

    try:
        arrays, target = _on_first_grid(
            list(task.inputs), list(task.geometries), task.target, task.targetGeometry, denoise=None, register=None,
            resample=task.resampleToFirst, progress=Stage(progress, 0.0, 0.5), cancel=cancel,
        )
    except RegistrationCancelled:
        raise TrainingCancelled("training cancelled (resampling); no model file was written") from None
    modalities = task.modalities or [None] * len(arrays)
    # The same standardisation fuse_volume applies, so the model learns on what it will later see.
    inputs = [to_unit_range(a, modalities[i], f"input {i + 1}") for i, a in enumerate(arrays)]
    triplets = slice_triplets(inputs, to_unit_range(target, None, "target volume"), task.axis,
                              progress=Stage(progress, 0.5, 1.0), cancel=cancel)
    if not triplets:
        raise InputError(f"target volume: constant in every slice along {'KJI'[task.axis]}; nothing to learn from")
    return TripletDataset(triplets)
