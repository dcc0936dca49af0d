"""The widget's parameters as logic arguments, and why a run cannot start yet. Plain Python.

``p`` is the module's ``MedFusionParameterNode`` (a ``@parameterNodeWrapper``); anything with
the same attributes works, which is how the tests drive these functions on a real MRML scene
without Slicer's application.
"""

from __future__ import annotations

from typing import Any

from .choices import SLICE_AXIS_CHOICES

try:
    from slicer.i18n import tr as _
except ImportError:  # slicer-core (tests, batch Python) has no translations
    def _(text: str) -> str:
        return text


def fusion_inputs(p: Any) -> tuple[list, list]:
    """The chosen input volumes, in order with gaps skipped, and their modalities (None: automatic)."""
    chosen = [i for i in (p.input1, p.input2, p.input3, p.input4) if i.volume is not None]
    return [i.volume for i in chosen], [None if i.modality == "auto" else i.modality for i in chosen]


def fusion_arguments(p: Any) -> dict:
    """The Fuse section as arguments of ``MedFusionLogic.process`` / ``MedFusionLogicCore.prepare``."""
    volumes, modalities = fusion_inputs(p)
    return dict(
        inputVolumeNodes=volumes, outputVolumeNode=p.outputVolume, targetVolumeNode=p.targetVolume,
        method=str(p.modelFile) if p.method == "model file" else p.method,
        axis=SLICE_AXIS_CHOICES.index(p.sliceAxis),
        blockSize=None if p.blockSize == "whole slice" else int(p.blockSize),
        device=p.device, resampleToFirst=p.resampleToFirst, modalities=modalities,
        metricsTableNode=p.metricsTable if p.computeMetrics else None,
        sliceTableNode=p.sliceTable if p.computeMetrics else None,
        plotChartNode=p.plotChart if p.computeMetrics else None,
        register=None if p.registration == "none" else p.registration,
        denoise=None if p.denoise == "none" else p.denoise,
        computeMetrics=p.computeMetrics,
        computeContributions=p.computeContributions,
    )


def training_arguments(p: Any) -> dict:
    """The Train section (with the inputs, slice axis, device and resampling of the other sections) as
    arguments of ``MedFusionLogic.train`` / ``MedFusionLogicCore.prepareTraining`` (all but ``overwrite``)."""
    fromFolder = p.trainingSource == "folder"
    volumes, modalities = fusion_inputs(p)
    return dict(
        outputModelPath=str(p.trainingOutputModel) if p.trainingOutputModel else None,
        inputVolumeNodes=None if fromFolder else volumes,
        targetVolumeNode=None if fromFolder else p.trainingTargetVolume,
        trainingData=str(p.trainingFolder) if fromFolder and p.trainingFolder else None,
        family=p.trainingFamily, iterations=p.trainingIterations,
        blockSize=None if p.trainingBlockSize == "auto" else int(p.trainingBlockSize),
        axis=SLICE_AXIS_CHOICES.index(p.sliceAxis), device=p.device,
        resampleToFirst=False if fromFolder else p.resampleToFirst,
        modalities=None if fromFolder else modalities,
    )


def fusion_problem(p: Any, trainingRunning: bool = False) -> str:
    """Why Fuse cannot start now, or "" when it can (shown as the button's tool tip).

    :param p: the parameter node (None: none yet).
    :param trainingRunning: a training runs; both would share the CPU/GPU, and its model is not written yet.
    """
    if not p or not p.input1.volume or not p.input2.volume:
        return _("Select input volumes 1 and 2")
    ids = [v.GetID() for v in fusion_inputs(p)[0]]
    if len(set(ids)) != len(ids):
        return _("Each input volume must be a different volume")
    if p.outputVolume and p.outputVolume.GetID() in ids:
        return _("The output volume must not be one of the inputs")
    if p.method == "model file" and not (p.modelFile and p.modelFile.expanduser().is_file()):
        return _("Choose a model file")
    if trainingRunning:
        return _("A model is being trained; wait for it or cancel it (Train section)")
    return ""


def training_problem(p: Any, fusionRunning: bool = False) -> str:
    """Why Train cannot start now, or "" when it can (shown as the button's tool tip).

    :param p: the parameter node (None: none yet).
    :param fusionRunning: a fusion runs.
    """
    if not p:
        return _("No parameter node")
    if p.trainingSource == "scene volumes":
        if not p.input1.volume or not p.input2.volume:
            return _("Select input volumes 1 and 2 (Inputs section) to learn from")
        if not p.trainingTargetVolume:
            return _("Select the target volume: the ideal fused volume of the inputs")
        if p.trainingTargetVolume.GetID() in {v.GetID() for v in fusion_inputs(p)[0]}:
            return _("The target volume must not be one of the inputs")
    elif not (p.trainingFolder and p.trainingFolder.expanduser().exists()):
        return _("Choose a folder of training cases")
    if not p.trainingOutputModel or p.trainingOutputModel.suffix.lower() != ".pt":
        return _("Choose the model file to write (.pt)")
    if fusionRunning:
        return _("A fusion is running; wait for it or cancel it")
    return ""
