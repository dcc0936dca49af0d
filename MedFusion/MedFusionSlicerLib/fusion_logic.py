"""The fusion logic: volume nodes in; fused volume node, metric tables and plot out.

Three phases, so that the heavy part can run elsewhere while MRML is only ever touched
from the thread that owns the scene (MRML and VTK are not thread-safe, and scene
modifications fire observers that update Qt widgets):

1. :meth:`FusionLogic.prepare` (scene thread) -- checks every input and copies the voxels
   and geometry out of the nodes into a :class:`~.jobs.FusionJob`;
2. :meth:`FusionLogic.compute` -- optional registration/resampling, denoising, the fusion
   itself and the per-slice metrics (:func:`.compute.compute_fusion`); in this process for
   :meth:`FusionLogic.fuse`, in a worker process for :class:`~.process.BackgroundFusion`;
3. :meth:`FusionLogic.commit` (scene thread) -- writes the output volume, the tables and the
   plot, all at the end, and undoes everything it did if any step fails.

A failed or cancelled run leaves the scene exactly as it was: phases 1 and 2 do not modify
the scene at all, and phase 3 removes the nodes it created and restores the nodes it
changed if it fails half-way.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from MedFusionLib.errors import InputError
from MedFusionLib.metrics import METRICS
from MedFusionLib.preprocessing import DENOISE_DEFAULTS, REGISTRATION_TRANSFORMS
from MedFusionLib.progress import CancelFlag, ProgressCallback

from . import checks, scene_writers
from .choices import DEFAULT_PLOT_METRICS
from .compute import check_fusion_cancel, compute_fusion
from .geometry import check_same_grid, geometry_from_ijk_to_ras, ijk_to_ras
from .jobs import FusionComputation, FusionJob, FusionTask, MedFusionResult


class FusionLogic:
    """Fuse registered scalar volume nodes with MedFusionLib; write the result, metric tables and a plot.

    Errors in what was passed raise :class:`MedFusionLib.errors.InputError` (a ``ValueError``)
    naming the input and the problem; a cancel raises :class:`MedFusionLib.fusion.FusionCancelled`.
    In both cases, and on any other exception, the scene is left exactly as it was.

    Metrics are 2D, so a volume is scored slice by slice along the fusion axis
    (:func:`MedFusionLib.metrics.evaluate_volume`): on the [0, 1] intensities fusion works on,
    skipping slices in which every input is constant; a metric's volume value is the mean
    of its per-slice values.
    """

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
        computeContributions: bool = False,
        contributionVolumeNode: Any = None,
    ) -> MedFusionResult:
        """Fuse the input volumes and write everything to the scene; returns when done.

        Synchronous, in this process (what ``waitForCompletion=True`` means in the module logic):
        what batch scripts want. The Slicer widget instead calls :meth:`prepare` and hands the job
        to :class:`~.process.BackgroundFusion`, which computes in a worker process.

        :param inputVolumeNodes: K >= 2 registered ``vtkMRMLScalarVolumeNode`` (not label maps,
            vector or 4D volumes), all in one scene; the first one is the reference grid. Not modified.
        :param outputVolumeNode: a scalar volume node to overwrite (never one of the inputs), or
            None to create a new one.
        :param targetVolumeNode: optional target (ideal fused) volume; adds the full-reference
            metrics (RMSE, PSNR, SSIM, REL, CE, H). Same grid as the first input unless resampling.
        :param method: ``"default"`` (the shipped CNN), ``"dbm"`` (the shipped DBM, two inputs), a model
            file path, or a baseline name (``"average"``, ``"maximum"``, ``"laplacian"``, ``"guided_filter"``,
            ``"wavelet"``).
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
            (Mattes mutual information) before fusing; None (or ``"none"``) to trust the inputs' alignment.
        :param denoise: a :func:`MedFusionLib.preprocessing.denoise` method applied to every input first.
        :param computeMetrics: compute and write the metric tables and plot.
        :param metrics: metric keys to compute (default: all that apply).
        :param plotMetrics: metric keys to plot against the slice index.
        :param computeContributions: also write where each fused voxel came from, as a volume with a
            colour table to overlay on the fused one (see :func:`.scene_writers.write_contributions`;
            not for a DBM model file of the first form, which predicts values rather than weights).
        :param contributionVolumeNode: a scalar volume node for the contribution map (never an input,
            the target or the output), or None to create one.
        :returns: a :class:`~.jobs.MedFusionResult`.
        """
        job = self.prepare(
            inputVolumeNodes, outputVolumeNode, targetVolumeNode, method, axis, blockSize, device, resampleToFirst,
            metricsTableNode, sliceTableNode, plotChartNode, modalities=modalities, register=register,
            denoise=denoise, computeMetrics=computeMetrics, metrics=metrics, plotMetrics=plotMetrics,
            computeContributions=computeContributions, contributionVolumeNode=contributionVolumeNode,
        )
        computation = self.compute(job, progress=progress, cancel=cancel)
        check_fusion_cancel(cancel, "before writing the results")
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
        computeContributions: bool = False,
        contributionVolumeNode: Any = None,
    ) -> FusionJob:
        """Check every argument and copy voxels and geometry out of the nodes (call on the scene's thread).

        Parameters as in :meth:`fuse`. Does not modify the scene.

        :returns: a :class:`~.jobs.FusionJob` for :meth:`compute` and :meth:`commit`.
        :raises InputError: the first problem found, with a message naming the input.
        """
        nodes = checks.check_inputs(inputVolumeNodes)
        scene = nodes[0].GetScene()
        names = [f"input {i + 1} ({node.GetName()})" for i, node in enumerate(nodes)]

        if targetVolumeNode is not None:
            checks.check_target(targetVolumeNode, nodes, scene)
        if outputVolumeNode is not None:
            checks.check_output(outputVolumeNode, nodes, targetVolumeNode, scene)
        if contributionVolumeNode is not None:
            if not computeContributions:
                raise InputError("contribution volume: chosen, but computeContributions is off; turn it on")
            checks.check_output(contributionVolumeNode, nodes, targetVolumeNode, scene, "contribution volume")
            if contributionVolumeNode is outputVolumeNode:
                raise InputError("contribution volume: it is the output volume; choose another node or none")
        for node, cls, label in (
            (metricsTableNode, "vtkMRMLTableNode", "metrics table"),
            (sliceTableNode, "vtkMRMLTableNode", "per-slice metrics table"),
            (plotChartNode, "vtkMRMLPlotChartNode", "plot chart"),
        ):
            if node is not None:
                checks.check_node(node, cls, label, scene)
        if metricsTableNode is not None and metricsTableNode is sliceTableNode:
            raise InputError("per-slice metrics table: it is the same node as the metrics table; choose another")

        axis = checks.check_axis(axis)
        if blockSize is not None and (isinstance(blockSize, bool) or not isinstance(blockSize, int) or blockSize < 2):
            raise InputError(f"block size: expected None or a power of two >= 2, got {blockSize!r}")
        modalities = checks.check_modalities(modalities, len(nodes))
        register = None if register is None or str(register).lower() == "none" else register
        denoise = None if denoise is None or str(denoise).lower() == "none" else denoise
        if register is not None and register not in REGISTRATION_TRANSFORMS:
            raise InputError(f"register: expected None or one of {list(REGISTRATION_TRANSFORMS)}, got {register!r}")
        if denoise is not None and denoise not in DENOISE_DEFAULTS:
            raise InputError(f"denoise: expected None or one of {list(DENOISE_DEFAULTS)}, got {denoise!r}")
        metric_keys = checks.check_metrics(metrics, targetVolumeNode is not None) if computeMetrics else []
        unknown_plot = [k for k in plotMetrics if k not in METRICS]
        if unknown_plot:
            raise InputError(f"plot metrics: unknown {unknown_plot}; choose from {list(METRICS)}")

        resolved = checks.load_method(method)
        from MedFusionLib.fusion import check_contributions  # loaded with the method (torch) by load_method above

        check_contributions(resolved, computeContributions, "computeContributions")
        device = checks.resolve_device(device)
        parent_transform_id = checks.common_parent_transform_id(
            [*nodes, *([targetVolumeNode] if targetVolumeNode else [])])

        arrays = [checks.copy_voxels(node, name) for node, name in zip(nodes, names)]
        matrices = [ijk_to_ras(node) for node in nodes]
        target_array = checks.copy_voxels(targetVolumeNode, "target volume") if targetVolumeNode is not None else None
        target_matrix = ijk_to_ras(targetVolumeNode) if targetVolumeNode is not None else None

        # Same grid, or resampling asked for: checked here so the user hears at once, not after minutes.
        if not resampleToFirst and register is None:
            others = list(zip(arrays[1:], matrices[1:], names[1:]))
            if target_array is not None:
                others.append((target_array, target_matrix, "target volume"))
            for array, matrix, name in others:
                check_same_grid(arrays[0], matrices[0], array, matrix, name, names[0])

        task = FusionTask(
            inputs=arrays,
            geometries=[geometry_from_ijk_to_ras(m) for m in matrices],
            target=target_array,
            targetGeometry=geometry_from_ijk_to_ras(target_matrix) if target_matrix is not None else None,
            method=resolved,
            axis=axis,
            blockSize=blockSize,
            device=device,
            modalities=modalities,
            resampleToFirst=bool(resampleToFirst),
            register=register,
            denoise=denoise,
            computeMetrics=bool(computeMetrics),
            metrics=metric_keys,
            computeContributions=computeContributions,
        )
        return FusionJob(
            scene=scene,
            inputNodes=list(nodes),
            referenceIJKToRAS=matrices[0],
            targetNode=targetVolumeNode,
            plotMetrics=[k for k in plotMetrics if k in metric_keys],
            outputVolumeNode=outputVolumeNode,
            outputName=f"{nodes[0].GetName()} fused",
            parentTransformNodeID=parent_transform_id,
            metricsTableNode=metricsTableNode,
            sliceTableNode=sliceTableNode,
            plotChartNode=plotChartNode,
            task=task,
            contributionVolumeNode=contributionVolumeNode,
            inputNames=[node.GetName() for node in nodes],
        )

    # ---------------------------------------------------------------- phase 2: compute (no MRML)

    def compute(
        self, job: FusionJob, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelFlag] = None
    ) -> FusionComputation:
        """Pre-process, fuse and score in this process; touches no MRML node (see :func:`.compute.compute_fusion`).

        :param job: from :meth:`prepare`.
        :param progress: ``progress(fraction, message)``.
        :param cancel: flag with ``is_set()``; polled between batches of slices and between metric slices.
        :raises FusionCancelled: the flag was set.
        :raises InputError: an input MedFusionLib refuses (non-finite voxels, model/input count mismatch...).
        """
        return compute_fusion(job.task, progress=progress, cancel=cancel)

    # ---------------------------------------------------------------- phase 3: write (scene thread)

    def commit(self, job: FusionJob, computation: FusionComputation) -> MedFusionResult:
        """Write the output volume, the tables and the plot (call on the scene's thread).

        Nothing is created or changed before this point. If a step fails, every node created
        here is removed and every existing node changed here is restored, then the error is
        re-raised: the scene is as before.

        :param job: from :meth:`prepare`.
        :param computation: from :meth:`compute` or a worker process.
        :returns: a :class:`~.jobs.MedFusionResult`.
        """
        scene = job.scene
        self._check_still_in_scene(job)
        before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        undo: scene_writers.Undo = []
        try:
            output = scene_writers.write_volume(job, computation.fused, undo)
            contribution_node = None
            if computation.contributions is not None:
                contribution_node = scene_writers.write_contributions(job, computation.contributions, undo)
            metrics_table = slice_table = chart = None
            series: list[Any] = []
            if job.task.computeMetrics:
                metrics_table = scene_writers.table_node(job.metricsTableNode, scene, "MedFusion metrics", undo)
                metrics_table.SetAndObserveTable(scene_writers.metrics_table(computation))
                scene_writers.describe_metrics_columns(metrics_table)
                slice_table = scene_writers.table_node(job.sliceTableNode, scene, "MedFusion metrics per slice", undo)
                slice_table.SetAndObserveTable(scene_writers.slice_table(computation, job.task.metrics))
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
            contributionVolumeNode=contribution_node,
        )

    @staticmethod
    def _plot(job: FusionJob, slice_table: Any, undo: scene_writers.Undo) -> tuple[Any, list[Any]]:
        return scene_writers.plot(job, slice_table, undo)

    @staticmethod
    def _check_still_in_scene(job: FusionJob) -> None:
        """The user may have deleted a node while the computation ran."""
        scene = job.scene
        for label, node in (
            ("output volume", job.outputVolumeNode),
            ("contribution volume", job.contributionVolumeNode),
            ("metrics table", job.metricsTableNode),
            ("per-slice metrics table", job.sliceTableNode),
            ("plot chart", job.plotChartNode),
            *((f"input {i + 1}", n) for i, n in enumerate(job.inputNodes)),
        ):
            if node is not None and (node.GetScene() is not scene or scene.GetNodeByID(node.GetID()) is not node):
                raise InputError(f"{label}: the node was removed from the scene while fusing; nothing was written")
