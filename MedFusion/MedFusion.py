"""MedFusion: fuse registered multimodal volumes (CT, MRI, PET, SPECT) with a supervised deep network.

The 3D Slicer scripted module of the MedFusion extension, laid out as Slicer's scripted-module template.
It is thin: choice lists in ``MedFusionSlicerLib.choices``, the dependency check in
``MedFusionSlicerLib.dependencies`` (both plain Python, all this module imports at Slicer's startup),
all MRML work in :class:`MedFusionSlicerLib.MedFusionLogicCore` (tested against a real MRML scene), all
image work in ``MedFusionLib`` (imported with PyTorch on first use, after the dependency check). A run
computes in a worker process -- Slicer's main thread holds the GIL in the Qt event loop, so a thread
would stall -- polled by a :class:`RunController` on the GUI thread, where its results are written.
"""

import importlib.util
import logging
import pathlib
import sys
import time
from typing import Annotated, Optional

import ctk
import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import (
    Choice,
    GuiConnector,
    WithinRange,
    parameterNodeGuiConnector,
    parameterNodeWrapper,
    parameterPack,
)
from slicer.parameterNodeWrapper.util import unannotatedType

from slicer import vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLTableNode


def _makeHelpersImportable() -> None:
    """MedFusionSlicerLib sits next to this file; MedFusionLib too once installed, one folder up in a
    development checkout added as an additional module path (``<checkout>/MedFusion``)."""
    here = pathlib.Path(__file__).resolve().parent
    for folder, package in ((here, "MedFusionSlicerLib"), (here.parent, "MedFusionLib")):
        if importlib.util.find_spec(package) is None and (folder / package / "__init__.py").is_file():
            sys.path.append(str(folder))


_makeHelpersImportable()

from MedFusionSlicerLib.choices import (  # noqa: E402 (plain Python, once the path is set)
    BLOCK_SIZE_CHOICES, DEFAULT_TRAINING_ITERATIONS, DENOISE_CHOICES, DEVICE_CHOICES, METHOD_CHOICES,
    MODALITY_CHOICES, REGISTRATION_CHOICES, SLICE_AXIS_CHOICES, TRAINING_BLOCK_SIZE_CHOICES,
    TRAINING_FAMILY_CHOICES, TRAINING_SOURCE_CHOICES,
)
from MedFusionSlicerLib.dependencies import (  # noqa: E402 (standard library only)
    ensure_in_slicer, install_message, module_requirements, unmet_requirements,
)
from MedFusionSlicerLib.parameters import (  # noqa: E402 (plain Python)
    fusion_arguments, fusion_inputs, fusion_problem, training_arguments, training_problem,
)
from MedFusionSlicerLib.run_controller import RunController  # noqa: E402 (plain Python: the widget hands it its Qt parts)


#
# MedFusion
#


class MedFusion(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedFusion")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []  # PyTorch is a Python dependency (PyTorchUtils), checked on first use
        self.parent.contributors = ["MedFusion contributors"]
        # _() function marks text as translatable to other languages
        self.parent.helpText = _("""
Fuse two or more registered volumes of different modalities (CT and MRI, MRI and PET or SPECT)
into one volume with a supervised deep network, and measure the fusion quality (Q<sup>AB/F</sup>,
mutual information, SSIM, ... and, given a target volume, RMSE, PSNR and more).
Fusion runs in the background with a progress bar and can be cancelled.
The Train section trains your own model from volumes in the scene (inputs and a target) or from a
folder of training cases; the trained model then becomes the fusion method.
See the <a href="https://github.com/medfusion/SlicerMedFusion#use-in-3d-slicer">module documentation</a>.
""")
        self.parent.acknowledgementText = _("""
MedFusion implements the methods of
Y. Li, J. Zhao, Z. Lv, J. Li, "Medical image fusion method by deep learning",
International Journal of Cognitive Computing in Engineering 1 (2020), doi:10.1016/j.ijcce.2020.12.004, and
Y. Li, J. Zhao, Z. Lv, Z. Pan, "Multimodal Medical Supervised Image Fusion Method by CNN",
Frontiers in Neuroscience 15:638976 (2021), doi:10.3389/fnins.2021.638976.
The module layout follows the 3D Slicer scripted-module template by Jean-Christophe Fillion-Robin (Kitware),
Andras Lasso (PerkLab) and Steve Pieper (Isomics).
""")


#
# MedFusionParameterNode
#


@parameterPack
class FusionInput:
    """An input volume and its modality ("auto": from the data); bound in the .ui as ``input1.volume`` etc."""

    volume: vtkMRMLScalarVolumeNode
    modality: Annotated[str, Choice(MODALITY_CHOICES)] = "auto"


@parameterNodeGuiConnector
class ctkPathLineEditToOptionalPathConnector(GuiConnector):
    """``Optional[pathlib.Path]`` <-> ctkPathLineEdit, empty field <-> None (Slicer's own connector binds
    only ``pathlib.Path``, whose empty value ``Path()`` shows as ".")."""

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return type(widget) == ctk.ctkPathLineEdit and unannotatedType(datatype) == Optional[pathlib.Path]

    @staticmethod
    def create(widget, datatype):
        if ctkPathLineEditToOptionalPathConnector.canRepresent(widget, datatype):
            return ctkPathLineEditToOptionalPathConnector(widget)
        return None

    def __init__(self, widget) -> None:
        super().__init__()
        self._widget = widget

    def _connect(self) -> None:
        self._widget.currentPathChanged.connect(self.changed)

    def _disconnect(self) -> None:
        self._widget.currentPathChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self) -> Optional[pathlib.Path]:
        return pathlib.Path(self._widget.currentPath.strip()) if self._widget.currentPath.strip() else None

    def write(self, value: Optional[pathlib.Path]) -> None:
        self._widget.currentPath = "" if value is None else str(value)


@parameterNodeWrapper
class MedFusionParameterNode:
    """
    The parameters needed by module (what each means: the .ui tool tips and ``MedFusionLogicCore``).

    input1..4 - volumes to fuse (1 and 2 required) and their modalities; input 1 is the reference grid.
    targetVolume - optional ideal fused volume (full-reference metrics). method - the shipped model, a
    model file (modelFile) or a baseline. outputVolume, metricsTable, sliceTable, plotChart - created when
    empty. training* - the Train section: learn from the inputs + trainingTargetVolume or from
    trainingFolder, write trainingOutputModel. Paths are None until chosen (the field is then empty).
    """

    input1: FusionInput
    input2: FusionInput
    input3: FusionInput
    input4: FusionInput
    targetVolume: vtkMRMLScalarVolumeNode
    method: Annotated[str, Choice(METHOD_CHOICES)] = "default"
    modelFile: Optional[pathlib.Path] = None
    blockSize: Annotated[str, Choice(BLOCK_SIZE_CHOICES)] = "whole slice"
    sliceAxis: Annotated[str, Choice(SLICE_AXIS_CHOICES)] = "K"
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    registration: Annotated[str, Choice(REGISTRATION_CHOICES)] = "none"
    resampleToFirst: bool = False
    denoise: Annotated[str, Choice(DENOISE_CHOICES)] = "none"
    computeMetrics: bool = True
    computeContributions: bool = False
    outputVolume: vtkMRMLScalarVolumeNode
    metricsTable: vtkMRMLTableNode
    sliceTable: vtkMRMLTableNode
    plotChart: vtkMRMLPlotChartNode
    trainingSource: Annotated[str, Choice(TRAINING_SOURCE_CHOICES)] = "scene volumes"
    trainingTargetVolume: vtkMRMLScalarVolumeNode
    trainingFolder: Optional[pathlib.Path] = None
    trainingFamily: Annotated[str, Choice(TRAINING_FAMILY_CHOICES)] = "cnn"
    trainingBlockSize: Annotated[str, Choice(TRAINING_BLOCK_SIZE_CHOICES)] = "auto"
    trainingIterations: Annotated[int, WithinRange(1, 100000)] = DEFAULT_TRAINING_ITERATIONS
    trainingOutputModel: Optional[pathlib.Path] = None


#
# MedFusionWidget
#


class MedFusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.fusion: Optional[RunController] = None  # runs of the Fuse button
        self.training: Optional[RunController] = None  # runs of the Train button

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedFusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)  # the .ui passes it on to every MRML widget
        self.logic = MedFusionLogic()
        self.fusion = RunController(self.ui.fuseButton, self.ui.progressBar, self.ui.statusLabel, _("Fuse"),
                                    self._onFusionEnded, self._checkCanApply, qt.QTimer(), slicer.util.errorDisplay)
        self.training = RunController(self.ui.trainButton, self.ui.trainProgressBar, self.ui.trainStatusLabel,
                                      _("Train"), self._onTrainingEnded, self._checkCanApply, qt.QTimer(),
                                      slicer.util.errorDisplay)
        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.fuseButton.connect("clicked(bool)", self.onFuseButton)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        for controller in (self.fusion, self.training):
            if controller is not None:
                controller.close()  # stops the worker processes at once
        if "MedFusionSlicerLib.process" in sys.modules:
            sys.modules["MedFusionSlicerLib.process"].POOL.shutdown()  # and the idle one
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()
        if not unmet_requirements(module_requirements()):
            # Start a worker process now (imports, warm-up: a few seconds, off this process), so the
            # first Fuse or Train does not wait for it. Nothing is installed here.
            from MedFusionSlicerLib.process import warmUp

            warmUp()

    def exit(self) -> None:
        """Called each time the user opens a different module (the GUI is updated again on enter)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        # The nodes a running fusion would write to are about to disappear: abandon it. A running
        # training goes on: it copied its volumes out of the scene and writes only its model file.
        self.fusion.close()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed; select the first two volumes if no input is chosen yet."""
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.input1.volume and not p.input2.volume:
            volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                       if n.GetClassName() == "vtkMRMLScalarVolumeNode"]
            if len(volumes) >= 2:
                p.input1.volume, p.input2.volume = volumes[0], volumes[1]

    def setParameterNode(self, inputParameterNode: Optional[MedFusionParameterNode]) -> None:
        """Set and observe parameter node; the GUI follows it through the .ui's SlicerParameterName properties."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        self.ui.modelFilePathLineEdit.setEnabled(bool(p) and p.method == "model file")
        self.ui.metricsTableSelector.setEnabled(bool(p) and p.computeMetrics)
        fromFolder = bool(p) and p.trainingSource == "folder"
        self.ui.trainingTargetVolumeSelector.setEnabled(bool(p) and not fromFolder)
        self.ui.trainingFolderPathLineEdit.setEnabled(fromFolder)
        for controller, problem, ready in (
            (self.fusion, fusion_problem(p, self.training.running), _("Fuse the input volumes (runs in the background; click again to cancel)")),
            (self.training, training_problem(p, self.fusion.running), _("Train a model (runs in the background; click again to cancel)")),
        ):
            if not controller.running:  # a running controller's button is its Cancel button
                controller.button.enabled = not problem
                controller.button.toolTip = problem or ready

    def onFuseButton(self) -> None:
        """Fuse when the button reads Fuse; cancel the running fusion when it reads Cancel."""
        if self.fusion.running:
            return self.fusion.cancel()
        with slicer.util.tryWithErrorDisplay(_("Failed to start the fusion."), waitCursor=True):
            if not self.logic.setupPythonRequirements():
                self.ui.statusLabel.text = _("MedFusion needs its Python packages; fusion not started.")
                return
            run = self.logic.process(**self.logic.argumentsFromParameterNode(self._parameterNode),
                                     waitForCompletion=False)
            self.fusion.start(run, _("Fusing..."), _("Stop the fusion; the scene is left as it was"))

    def _onFusionEnded(self, result, error: Optional[Exception]) -> None:
        if self.fusion.reportError(error, _("Cancelled: nothing was changed."), _("Fusion failed: nothing was changed.")):
            return
        p = self._parameterNode
        if p:
            p.outputVolume = result.outputVolumeNode
            if result.metricsTableNode is not None:
                p.metricsTable, p.sliceTable, p.plotChart = (
                    result.metricsTableNode, result.sliceTableNode, result.plotChartNode)
        self.logic.showResult(result, p.input1.volume if p else None)
        self.ui.statusLabel.text = _("Fused with {method} in {seconds:.1f} s.").format(
            method=result.methodName, seconds=result.seconds)

    def onTrainButton(self) -> None:
        """Train when the button reads Train; cancel the running training when it reads Cancel."""
        if self.training.running:
            return self.training.cancel()
        p = self._parameterNode
        overwrite = p.trainingOutputModel.expanduser().is_file()
        if overwrite and not slicer.util.confirmOkCancelDisplay(
            _("{path} already exists. Replace it with the model about to be trained?").format(path=p.trainingOutputModel),
            _("MedFusion: replace model file"),
        ):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the training."), waitCursor=True):
            if not self.logic.setupPythonRequirements():
                self.ui.trainStatusLabel.text = _("MedFusion needs its Python packages; training not started.")
                return
            run = self.logic.train(**self.logic.trainingArgumentsFromParameterNode(p), overwrite=overwrite,
                                   waitForCompletion=False)
            self.training.start(run, _("Training..."), _("Stop the training; no model file is written"))

    def _onTrainingEnded(self, result, error: Optional[Exception]) -> None:
        if self.training.reportError(error, _("Cancelled: no model file was written."),
                                     _("Training failed: no model file was written.")):
            return
        if self._parameterNode:  # the new model becomes the fusion method, so the next Fuse uses it
            self._parameterNode.modelFile = pathlib.Path(result.modelPath)
            self._parameterNode.method = "model file"
        self.ui.trainStatusLabel.text = _(
            "Trained a {family} model on {slices} slices in {seconds:.0f} s (validation loss {loss:.4f}); "
            "it is now the fusion method ('model file')."
        ).format(family=result.family, slices=result.trainingSlices, seconds=result.seconds,
                 loss=result.bestValidationLoss)


#
# MedFusionLogic
#


class MedFusionLogic(ScriptedLoadableModuleLogic):
    """The module's logic, usable without the widget (batch scripts, ``Slicer --no-main-window``).
    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py

    MRML work is delegated to :class:`MedFusionSlicerLib.MedFusionLogicCore`, imported on first use
    (after the dependency check: it imports PyTorch). Runs started with ``waitForCompletion=False``
    compute in a worker process; poll ``run.isRunning()`` (never blocks) and call ``run.finish()`` on
    the main thread, which writes the results; ``run.cancel()`` stops it, ``run.close()`` abandons it.
    """

    def __init__(self) -> None:
        """Called when the logic class is instantiated. Can be used for initializing member variables."""
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None

    def getParameterNode(self):
        return MedFusionParameterNode(super().getParameterNode())

    @property
    def core(self):
        """The MRML logic (imports MedFusionLib and PyTorch on first use)."""
        if self._core is None:
            if importlib.util.find_spec("MedFusionLib") is None:
                raise RuntimeError(_("MedFusionLib is missing from this installation; reinstall the MedFusion extension."))
            from MedFusionSlicerLib import MedFusionLogicCore

            self._core = MedFusionLogicCore()
        return self._core

    @staticmethod
    def setupPythonRequirements(askConfirmation: bool = True) -> bool:
        """Install what MedFusionLib needs, on first use and after asking; never at import time nor in testing mode.

        :returns: True when every requirement is met; False when the user declined (or in testing mode).
        :raises RuntimeError: installing failed (e.g. offline); the message says what to do.
        """
        return ensure_in_slicer(askConfirmation)

    # The parameter node as logic arguments (MedFusionSlicerLib.parameters, tested on a real scene).
    inputsFromParameterNode = staticmethod(fusion_inputs)
    argumentsFromParameterNode = staticmethod(fusion_arguments)
    trainingArgumentsFromParameterNode = staticmethod(training_arguments)

    @staticmethod
    def _refuseCallbacks(kwargs: dict) -> None:
        if kwargs.pop("progress", None) is not None or kwargs.pop("cancel", None) is not None:
            raise ValueError("progress/cancel: with waitForCompletion=False use the returned run's progress and cancel()")

    def startBackgroundFusion(self, job):
        """Start computing a job of ``core.prepare`` in a worker process; returns the started ``BackgroundFusion``."""
        from MedFusionSlicerLib import BackgroundFusion

        return BackgroundFusion(self.core, job).start()

    def process(self, inputVolumeNodes, outputVolumeNode=None, targetVolumeNode=None, method="default",
                waitForCompletion: bool = True, showResult: bool = False, **kwargs):
        """
        Fuse two or more registered scalar volumes (the first is the reference grid) into outputVolumeNode
        (never an input; None creates one). method: "default", a model file path, or a baseline name.
        waitForCompletion=True fuses now and returns a ``MedFusionResult``; False returns the started
        ``BackgroundFusion`` at once (see the class docstring). showResult: show it in the views (GUI only).
        The other keyword arguments are those of ``MedFusionLogicCore.fuse`` (axis, blockSize, device,
        resampleToFirst, metricsTableNode, sliceTableNode, plotChartNode, modalities, register, denoise,
        computeMetrics, metrics, plotMetrics, computeContributions, contributionVolumeNode; progress and cancel
        only with waitForCompletion=True).
        """
        startTime = time.time()
        logging.info("MedFusion: processing started")
        if not waitForCompletion:
            self._refuseCallbacks(kwargs)
            return self.startBackgroundFusion(self.core.prepare(
                inputVolumeNodes=inputVolumeNodes, outputVolumeNode=outputVolumeNode,
                targetVolumeNode=targetVolumeNode, method=method, **kwargs))
        result = self.core.fuse(inputVolumeNodes, outputVolumeNode, targetVolumeNode, method, **kwargs)
        if showResult:
            self.showResult(result, inputVolumeNodes[0])
        logging.info(f"MedFusion: processing completed in {time.time() - startTime:.2f} seconds")
        return result

    @staticmethod
    def showResult(result, backgroundVolumeNode=None) -> None:
        """Show the fused volume in the slice views and the metrics table and plot (only with a GUI)."""
        if slicer.app.commandOptions().noMainWindow:
            return
        if result.contributionVolumeNode is not None:  # the map over the fused volume
            slicer.util.setSliceViewerLayers(background=result.outputVolumeNode,
                                             foreground=result.contributionVolumeNode, foregroundOpacity=0.4, fit=True)
        else:
            slicer.util.setSliceViewerLayers(background=result.outputVolumeNode, foreground=backgroundVolumeNode,
                                             foregroundOpacity=0.0, fit=True)
        if result.metricsTableNode is not None:
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
            selectionNode = slicer.app.applicationLogic().GetSelectionNode()
            selectionNode.SetActiveTableID(result.metricsTableNode.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()
            selectionNode.SetActivePlotChartID(result.plotChartNode.GetID())
            slicer.app.applicationLogic().PropagatePlotChartSelection()

    def startBackgroundTraining(self, job):
        """Start a job of ``core.prepareTraining`` in a worker process; returns the started ``BackgroundTraining``."""
        from MedFusionSlicerLib import BackgroundTraining

        return BackgroundTraining(self.core, job).start()

    def train(self, outputModelPath, inputVolumeNodes=None, targetVolumeNode=None, trainingData=None,
              waitForCompletion: bool = True, **kwargs):
        """
        Train a fusion model and write it to outputModelPath (.pt, never a training input); never modifies
        the scene. Learns from inputVolumeNodes (two or more registered volumes) and targetVolumeNode (their
        ideal fused volume), or from trainingData (a folder of case folders input_1.*, input_2.*, target.*, or
        a manifest CSV). waitForCompletion=True trains now and returns a ``MedFusionTrainingResult``; False
        returns the started ``BackgroundTraining`` at once, whose ``finish()`` writes the file. The other
        keyword arguments are those of ``MedFusionLogicCore.train`` (family, iterations, blockSize, axis,
        device, resampleToFirst, modalities, seed, overwrite; progress and cancel only when waiting).
        """
        if not waitForCompletion:
            self._refuseCallbacks(kwargs)
            return self.startBackgroundTraining(self.core.prepareTraining(
                outputModelPath=outputModelPath, inputVolumeNodes=inputVolumeNodes,
                targetVolumeNode=targetVolumeNode, trainingData=trainingData, **kwargs))
        return self.core.train(outputModelPath, inputVolumeNodes, targetVolumeNode, trainingData, **kwargs)


#
# MedFusionTest
#


class MedFusionTest(ScriptedLoadableModuleTest):
    """
    This is the test case for your scripted module.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run every test; skipped with a message (a test never installs anything) when a requirement is unmet."""
        unmet = unmet_requirements(module_requirements())
        if unmet:
            message = "MedFusion self-test skipped. " + install_message(unmet, in_slicer=True)
            logging.warning(message)
            return self.delayDisplay(message)
        for test in (self.test_MedFusion_baseline_geometry, self.test_MedFusion_default_model,
                     self.test_MedFusion_cancel_and_close_leave_the_scene,
                     self.test_MedFusion_refuses_output_equal_input, self.test_MedFusion_train_then_fuse):
            self.setUp()
            test()

    @staticmethod
    def _syntheticPair():
        """Two synthetic volumes on an oblique, anisotropic grid with a non-zero origin."""
        import numpy as np

        c, s = np.cos(0.4), np.sin(0.4)  # oblique: rotated 0.4 rad about R, then 0.4 rad about S
        rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
        ijkToRAS = np.eye(4)
        ijkToRAS[:3, :3] = rotation @ np.diag([0.7, 0.9, 2.5])  # anisotropic spacing
        ijkToRAS[:3, 3] = [12.5, -31.0, 47.0]  # non-zero origin
        k, j, i = np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 48), np.linspace(-1, 1, 40), indexing="ij")
        ct = (1000 * np.exp(-4 * (i**2 + j**2 + k**2))).astype(np.int16)
        mri = (300 * (np.abs(i + 0.3 * j) < 0.4) + 50 * np.cos(6 * j)).astype(np.float32)
        return (slicer.util.addVolumeFromArray(ct, ijkToRAS, "CT"),
                slicer.util.addVolumeFromArray(mri, ijkToRAS, "MRI"), ijkToRAS)

    @staticmethod
    def _waitFor(run, timeoutSeconds: float = 600.0) -> None:
        """Poll a run as the widget does, the GUI kept responsive; abandon it and fail after the timeout."""
        deadline = time.monotonic() + timeoutSeconds
        while run.isRunning():
            if time.monotonic() > deadline:
                run.close()
                raise AssertionError(f"the run did not end within {timeoutSeconds:.0f} s")
            slicer.app.processEvents()
            run.wait(timeout=0.05)

    def test_MedFusion_baseline_geometry(self):
        import numpy as np

        self.delayDisplay("Starting the baseline test")
        ct, mri, ijkToRAS = self._syntheticPair()
        result = MedFusionLogic().process([ct, mri], method="average")
        matrix = vtk.vtkMatrix4x4()
        result.outputVolumeNode.GetIJKToRASMatrix(matrix)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix), ijkToRAS)
        self.assertEqual(slicer.util.arrayFromVolume(result.outputVolumeNode).shape, (8, 48, 40))
        self.assertGreater(result.metricsTableNode.GetNumberOfRows(), 10)
        self.assertEqual(result.plotChartNode.GetNumberOfPlotSeriesNodes(), 3)
        self.delayDisplay("Test passed")

    def test_MedFusion_default_model(self):
        import numpy as np

        self.delayDisplay("Starting the default-model test (worker process)")
        ct, mri, _ijkToRAS = self._syntheticPair()
        run = MedFusionLogic().process([ct, mri], waitForCompletion=False)
        self._waitFor(run)
        fused = slicer.util.arrayFromVolume(run.finish().outputVolumeNode)
        self.assertTrue(np.all(np.isfinite(fused)) and fused.min() >= 0 and fused.max() <= 1)
        self.delayDisplay("Test passed")

    def test_MedFusion_cancel_and_close_leave_the_scene(self):
        from MedFusionLib.errors import Cancelled

        self.delayDisplay("Starting the cancel/close test")
        ct, mri, _ijkToRAS = self._syntheticPair()
        count = slicer.mrmlScene.GetNumberOfNodes()
        cancelled = MedFusionLogic().process([ct, mri], waitForCompletion=False)
        cancelled.cancel()
        self.assertTrue(cancelled.cancelRequested)
        self._waitFor(cancelled)
        with self.assertRaises(Cancelled):
            cancelled.finish()
        closed = MedFusionLogic().process([ct, mri], waitForCompletion=False)
        startTime = time.monotonic()
        closed.close()
        closed.close()  # idempotent
        self.assertLess(time.monotonic() - startTime, 5.0)  # never blocks noticeably
        with self.assertRaises(Cancelled):
            closed.finish()
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Test passed")

    def test_MedFusion_refuses_output_equal_input(self):
        self.delayDisplay("Starting the bad-input test")
        ct, mri, _ijkToRAS = self._syntheticPair()
        count = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(ValueError):
            MedFusionLogic().process([ct, mri], outputVolumeNode=mri, method="average")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Test passed")

    def test_MedFusion_train_then_fuse(self):
        import os

        import numpy as np

        self.delayDisplay("Starting the training test")
        ct, mri, ijkToRAS = self._syntheticPair()
        # A stand-in ideal fused volume: the voxel-wise maximum of the two, each scaled to [0, 1].
        scaled = [(a - a.min()) / np.ptp(a) for a in (slicer.util.arrayFromVolume(v).astype(np.float32) for v in (ct, mri))]
        target = slicer.util.addVolumeFromArray(np.maximum(*scaled), ijkToRAS, "ideal")
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        modelPath = os.path.join(slicer.app.temporaryPath, "MedFusionSelfTest.pt")
        logic = MedFusionLogic()
        result = logic.train(modelPath, [ct, mri], target, iterations=5, blockSize=16, overwrite=True)
        self.assertTrue(os.path.isfile(modelPath))
        self.assertEqual(result.trainingSlices, 8)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)  # training leaves the scene alone
        fused = logic.process([ct, mri], method=modelPath, computeMetrics=False)
        self.assertEqual(slicer.util.arrayFromVolume(fused.outputVolumeNode).shape, (8, 48, 40))
        os.remove(modelPath)
        self.delayDisplay("Test passed")
