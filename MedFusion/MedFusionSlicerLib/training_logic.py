"""The training logic: scene volumes (inputs + target) or a folder of triplets in; a model file out.

The same three phases as fusion (:mod:`.fusion_logic`): :meth:`TrainingLogic.prepareTraining`
copies the input and target volumes out of the scene (or checks the layout of a training
folder); :meth:`TrainingLogic.computeTraining` fits the model (:func:`.compute.compute_training`;
in a worker process for :class:`~.process.BackgroundTraining`); :meth:`TrainingLogic.commitTraining`
writes the model file atomically. The scene is never modified, and a cancelled or failed run
writes no file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

from MedFusionLib.engine.blocks import validate_block_size
from MedFusionLib.errors import InputError
from MedFusionLib.validation import check_int
from MedFusionLib.progress import CancelFlag, ProgressCallback

from . import checks
from .choices import DEFAULT_TRAINING_ITERATIONS, TRAINING_FAMILIES
from .compute import check_training_cancel, compute_training
from .geometry import check_same_grid, geometry_from_ijk_to_ras, ijk_to_ras
from .jobs import MedFusionTrainingResult, TrainingComputation, TrainingJob, TrainingTask


class TrainingLogic:
    """Train a fusion model from scene volumes or a training folder and write it to a file."""

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

        Synchronous and in this process, like :meth:`FusionLogic.fuse`. The Slicer widget instead
        calls :meth:`prepareTraining` and hands the job to :class:`~.process.BackgroundTraining`,
        which trains in a worker process. A cancelled or failed run writes no file.

        :param outputModelPath: the model file to write (``.pt``); never one of the training inputs.
            Then use it with ``fuse(..., method=str(result.modelPath))``.
        :param inputVolumeNodes: K >= 2 registered scalar volume nodes to learn from (with
            ``targetVolumeNode``); not modified. Leave None to train from ``trainingData``.
        :param targetVolumeNode: the target (ideal fused) volume for ``inputVolumeNodes``; same grid
            as input 1 unless ``resampleToFirst``.
        :param trainingData: a folder of case folders or a manifest CSV (instead of scene volumes).
        :param family: ``"cnn"`` (multi-scale weight CNN, fuses any number of inputs) or ``"dbm"``
            (RBM-initialised block network, fuses exactly K inputs).
        :param iterations: optimiser steps (default :data:`.choices.DEFAULT_TRAINING_ITERATIONS`; the
            shipped model had 8000).
        :param blockSize: training block side n = 2^i, or None for the family's default
            (:data:`.choices.DEFAULT_TRAINING_BLOCK_SIZES`) reduced to fit the slices. A DBM fuses
            blocks of exactly this size.
        :param axis: array axis to cut the volumes into slices along: 0 = K, 1 = J, 2 = I.
        :param device: ``"auto"`` (GPU when present, else CPU), ``"cpu"`` or ``"gpu"``.
        :param resampleToFirst: resample other inputs and the target onto input 1's grid when their
            geometry differs (scene volumes only); otherwise a geometry mismatch is an error.
        :param progress: ``progress(fraction, message)``, fraction in [0, 1].
        :param cancel: flag with ``is_set()`` (e.g. ``threading.Event``), polled between slices and
            about every 1 % of the iterations.
        :param modalities: optional modality per input volume (``"CT"``, ``"MRI"``, ``"PET"``,
            ``"SPECT"`` or None) for intensity standardisation; scene volumes only (a manifest CSV
            carries its own modality columns).
        :param seed: seeds block sampling, initialisation and augmentation (same data and seed, same model on a CPU).
        :param overwrite: allow replacing an existing file at ``outputModelPath`` (never an input).
        :returns: a :class:`~.jobs.MedFusionTrainingResult`.
        :raises InputError: a refused argument, with a message naming it; nothing was written.
        :raises MedFusionLib.engine.rbm.TrainingCancelled: ``cancel`` was set; nothing was written.
        """
        job = self.prepareTraining(
            outputModelPath, inputVolumeNodes, targetVolumeNode, trainingData, family, iterations, blockSize,
            axis, device, resampleToFirst, modalities=modalities, seed=seed, overwrite=overwrite,
        )
        computation = self.computeTraining(job, progress=progress, cancel=cancel)
        check_training_cancel(cancel, "before writing the model")
        result = self.commitTraining(job, computation)
        if progress is not None:
            progress(1.0, "done")
        return result

    # ---------------------------------------------------------------- phase 1: check and copy

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

        :returns: a :class:`~.jobs.TrainingJob` for :meth:`computeTraining` and :meth:`commitTraining`.
        :raises InputError: the first problem found, with a message naming the input.
        """
        if family not in TRAINING_FAMILIES:
            raise InputError(f"model family: expected one of {list(TRAINING_FAMILIES)}, got {family!r}")
        iterations = check_int(iterations, "training iterations")
        seed = check_int(seed, "seed", minimum=0)
        if blockSize is not None:
            blockSize = validate_block_size(blockSize)
        axis = checks.check_axis(axis)
        device = checks.resolve_device(device)

        from_scene = inputVolumeNodes is not None or targetVolumeNode is not None
        from_folder = checks.is_chosen(trainingData)
        if from_scene and from_folder:
            raise InputError("training data: give either input volumes and a target volume, or a training folder, not both")
        if not from_scene and not from_folder:
            raise InputError(
                "training data: none given; choose input volumes and a target volume, or a folder of training cases"
            )
        common = dict(family=family, blockSize=blockSize, iterations=iterations, device=device, seed=seed, axis=axis)
        if from_folder:
            if modalities is not None:
                raise InputError("modalities: for a training folder, give them as modality columns of a manifest CSV")
            return self._prepare_training_folder(
                Path(os.fspath(trainingData)).expanduser(), outputModelPath, bool(overwrite), common)
        return self._prepare_training_volumes(inputVolumeNodes, targetVolumeNode, modalities, bool(resampleToFirst),
                                              outputModelPath, bool(overwrite), common)

    @staticmethod
    def _prepare_training_volumes(
        inputVolumeNodes: Any, targetVolumeNode: Any, modalities: Optional[Sequence[Optional[str]]],
        resampleToFirst: bool, outputModelPath: Any, overwrite: bool, common: dict[str, Any],
    ) -> TrainingJob:
        nodes = checks.check_inputs(inputVolumeNodes)
        scene = nodes[0].GetScene()
        names = [f"input {i + 1} ({node.GetName()})" for i, node in enumerate(nodes)]
        if targetVolumeNode is None:
            raise InputError("target volume: training needs a target, the ideal fused volume of the inputs")
        checks.check_target(targetVolumeNode, nodes, scene)
        modalities = checks.check_modalities(modalities, len(nodes))
        checks.common_parent_transform_id([*nodes, targetVolumeNode])
        protected = [path for node in (*nodes, targetVolumeNode) for path in checks.stored_files(node)]
        output = checks.check_model_output(outputModelPath, protected, overwrite)

        arrays = [checks.copy_voxels(node, name) for node, name in zip(nodes, names)]
        matrices = [ijk_to_ras(node) for node in nodes]
        target_array = checks.copy_voxels(targetVolumeNode, "target volume")
        target_matrix = ijk_to_ras(targetVolumeNode)
        if not resampleToFirst:
            others = [*zip(arrays[1:], matrices[1:], names[1:]), (target_array, target_matrix, "target volume")]
            for array, matrix, name in others:
                check_same_grid(arrays[0], matrices[0], array, matrix, name, names[0],
                                remedy="tick 'Resample onto input 1'")
        # The slices are input 1's (resampling puts everything on its grid): refuse a block that cannot fit now.
        axis, block = common["axis"], common["blockSize"]
        plane = [n for a, n in enumerate(arrays[0].shape) if a != axis]
        if min(plane) < 2:
            raise InputError(f"{names[0]}: slices along axis {'KJI'[axis]} are {plane[1]}x{plane[0]} voxels; "
                             "too small to train on -- choose another slice axis")
        if block is not None and block > min(plane):
            raise InputError(f"block size {block} is larger than the slices ({plane[1]}x{plane[0]} voxels "
                             f"along axis {'KJI'[axis]}); choose a block size of at most {min(plane)}")
        task = TrainingTask(
            nInputs=len(nodes),
            inputNames=[node.GetName() for node in nodes],
            inputs=arrays,
            geometries=[geometry_from_ijk_to_ras(m) for m in matrices],
            target=target_array,
            targetGeometry=geometry_from_ijk_to_ras(target_matrix),
            modalities=modalities,
            resampleToFirst=resampleToFirst,
            **common,
        )
        return TrainingJob(outputModelPath=output, overwrite=overwrite, protectedPaths=protected, task=task)

    @staticmethod
    def _prepare_training_folder(data: Path, outputModelPath: Any, overwrite: bool,
                                 common: dict[str, Any]) -> TrainingJob:
        from MedFusionLib.batch import groups_from_folder, groups_from_manifest

        if not data.exists():
            raise InputError(f"training folder {data}: no such folder (or manifest CSV)")
        # Only the layout is read here (fast, on the GUI thread, so mistakes show at once); the
        # images are read by the computation.
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
        output = checks.check_model_output(outputModelPath, protected, overwrite)
        task = TrainingTask(nInputs=len(groups[0].inputs), inputNames=[group.name for group in groups],
                            trainingData=data, **common)
        return TrainingJob(outputModelPath=output, overwrite=overwrite, protectedPaths=protected, task=task)

    # ---------------------------------------------------------------- phase 2: fit (no MRML, no file)

    def computeTraining(
        self, job: TrainingJob, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelFlag] = None
    ) -> TrainingComputation:
        """Build the training slices and fit the model in this process (see :func:`.compute.compute_training`).

        :param job: from :meth:`prepareTraining`.
        :param progress: ``progress(fraction, message)``.
        :param cancel: flag with ``is_set()``; polled between slices and about every 1 % of the iterations.
        :raises TrainingCancelled: the flag was set.
        :raises InputError: training data MedFusionLib refuses (unreadable file, shapes that differ, ...).
        """
        return compute_training(job.task, progress=progress, cancel=cancel)

    # ---------------------------------------------------------------- phase 3: write the model

    def commitTraining(self, job: TrainingJob, computation: TrainingComputation) -> MedFusionTrainingResult:
        """Write the model file atomically (never over an input); the scene is not touched.

        The file appears complete or not at all: it is written to a temporary file in the same
        folder and renamed into place.

        :param job: from :meth:`prepareTraining`.
        :param computation: from :meth:`computeTraining` or a worker process.
        :returns: a :class:`~.jobs.MedFusionTrainingResult`.
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
