"""MedFusion: fuse registered multimodal volumes (CT, MRI, PET, SPECT) with a supervised deep network.

The 3D Slicer scripted module of the MedFusion extension, laid out as Slicer's current
scripted-module template (module, parameter node, widget, logic, test). The widget is
kept thin: all MRML work is in :class:`MedFusionSlicerLib.MedFusionLogicCore`, which is
tested outside Slicer against a real MRML scene (the ``slicer-core`` wheel), and all
image work is in ``MedFusionLib``.

Nothing heavy is imported at module load (Slicer imports every module at startup):
PyTorch and ``MedFusionLib`` are imported on first use, after the dependency check.
"""

import importlib.util
import logging
import pathlib
import sys
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import (
    Choice,
    WithinRange,
    parameterNodeWrapper,
)

from slicer import vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLTableNode

#: Fusion methods offered in the GUI: the shipped model, a model file, and MedFusionLib's baselines
#: (``MedFusionLib.baselines.BASELINES``; a static test keeps the two lists equal).
METHOD_CHOICES = ["default", "model file", "average", "maximum", "laplacian", "guided_filter", "wavelet"]
MODALITY_CHOICES = ["auto", "CT", "MRI", "PET", "SPECT"]
BLOCK_SIZE_CHOICES = ["whole slice", "16", "32", "64", "128", "256"]
SLICE_AXIS_CHOICES = ["K", "J", "I"]  # array axis 0, 1, 2 (K is axial for an axial acquisition)
DEVICE_CHOICES = ["auto", "cpu", "gpu"]
REGISTRATION_CHOICES = ["none", "rigid", "affine"]
DENOISE_CHOICES = ["none", "curvature_flow", "gaussian", "median", "bilateral"]
#: Train section: where the training cases come from, the model families (``MedFusionSlicerLib.TRAINING_FAMILIES``)
#: and the training block sizes ("auto": the family's default, reduced to fit the slices).
TRAINING_SOURCE_CHOICES = ["scene volumes", "folder"]
TRAINING_FAMILY_CHOICES = ["cnn", "dbm"]
TRAINING_BLOCK_SIZE_CHOICES = ["auto", "8", "16", "32", "64", "128"]

#: Import name -> pip requirement of what MedFusionLib needs besides PyTorch (which comes through
#: the PyTorch extension's PyTorchUtils, matched to the GPU driver). Same lines as Resources/requirements.txt.
PYTHON_REQUIREMENTS = {
    "scipy": "scipy>=1.10",
    "skimage": "scikit-image>=0.21",
    "pywt": "PyWavelets>=1.4",
    "SimpleITK": "SimpleITK>=2.2",
}
MINIMUM_TORCH_VERSION = ">=2.1"



def _makeMedFusionLibImportable() -> None:
    """Find MedFusionLib in a development checkout too.

    An installed extension has MedFusionLib next to this file (CMake installs it into the
    scripted-modules folder, which Slicer puts on sys.path). When a developer instead adds
    ``<checkout>/MedFusion`` as an additional module path, MedFusionLib sits one folder up.
    """
    if importlib.util.find_spec("MedFusionLib") is not None:
        return
    checkout = pathlib.Path(__file__).resolve().parent.parent
    if (checkout / "MedFusionLib" / "__init__.py").is_file():
        sys.path.append(str(checkout))
    else:
        raise RuntimeError(_("MedFusionLib is missing from this installation; reinstall the MedFusion extension."))


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


@parameterNodeWrapper
class MedFusionParameterNode:
    """
    The parameters needed by module.

    inputVolume1..4 - volumes to fuse (1 and 2 required); input 1 is the reference grid.
    modality1..4 - modality of each input, for intensity standardisation ("auto": from the data).
    targetVolume - optional ideal fused volume; enables the full-reference metrics.
    method - the shipped model, a model file (modelFile), or a classical baseline.
    blockSize - "whole slice" or the n of n x n overlapping blocks.
    sliceAxis - the volume axis slices are fused along (K, J or I).
    device - auto (GPU when present), cpu or gpu.
    registration - register inputs 2..4 onto input 1 first (none, rigid, affine).
    resampleToFirst - resample inputs on another grid onto input 1's grid.
    denoise - noise removal applied to every input first.
    computeMetrics - fill the metrics tables and the plot.
    outputVolume, metricsTable, sliceTable, plotChart - where results go (created when empty).
    trainingSource - train from the input volumes + trainingTargetVolume, or from trainingFolder.
    trainingTargetVolume - the ideal fused volume of the inputs, to learn from.
    trainingFolder - a folder of case folders (input_1.*, input_2.*, target.*) or a manifest CSV.
    trainingFamily, trainingBlockSize, trainingIterations - what to train and for how long.
    trainingOutputModel - the model file to write; selected as the fusion method once trained.
    """

    inputVolume1: vtkMRMLScalarVolumeNode
    inputVolume2: vtkMRMLScalarVolumeNode
    inputVolume3: vtkMRMLScalarVolumeNode
    inputVolume4: vtkMRMLScalarVolumeNode
    modality1: Annotated[str, Choice(MODALITY_CHOICES)] = "auto"
    modality2: Annotated[str, Choice(MODALITY_CHOICES)] = "auto"
    modality3: Annotated[str, Choice(MODALITY_CHOICES)] = "auto"
    modality4: Annotated[str, Choice(MODALITY_CHOICES)] = "auto"
    targetVolume: vtkMRMLScalarVolumeNode
    method: Annotated[str, Choice(METHOD_CHOICES)] = "default"
    modelFile: pathlib.Path
    blockSize: Annotated[str, Choice(BLOCK_SIZE_CHOICES)] = "whole slice"
    sliceAxis: Annotated[str, Choice(SLICE_AXIS_CHOICES)] = "K"
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    registration: Annotated[str, Choice(REGISTRATION_CHOICES)] = "none"
    resampleToFirst: bool = False
    denoise: Annotated[str, Choice(DENOISE_CHOICES)] = "none"
    computeMetrics: bool = True
    outputVolume: vtkMRMLScalarVolumeNode
    metricsTable: vtkMRMLTableNode
    sliceTable: vtkMRMLTableNode
    plotChart: vtkMRMLPlotChartNode
    trainingSource: Annotated[str, Choice(TRAINING_SOURCE_CHOICES)] = "scene volumes"
    trainingTargetVolume: vtkMRMLScalarVolumeNode
    trainingFolder: pathlib.Path
    trainingFamily: Annotated[str, Choice(TRAINING_FAMILY_CHOICES)] = "cnn"
    trainingBlockSize: Annotated[str, Choice(TRAINING_BLOCK_SIZE_CHOICES)] = "auto"
    trainingIterations: Annotated[int, WithinRange(1, 100000)] = 300
    trainingOutputModel: pathlib.Path


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
        self._run = None  # the BackgroundFusion in progress, if any
        self._pollTimer = None
        self._trainingRun = None  # the BackgroundTraining in progress, if any
        self._trainingPollTimer = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        # Additional widgets can be instantiated manually and added to self.layout.
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedFusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets. Make sure that in Qt designer the top-level qMRMLWidget's
        # "mrmlSceneChanged(vtkMRMLScene*)" signal in is connected to each MRML widget's.
        # "setMRMLScene(vtkMRMLScene*)" slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        # Create logic class. Logic implements all computations that should be possible to run
        # in batch mode, without a graphical user interface.
        self.logic = MedFusionLogic()

        # The fusion runs in a background thread; this timer brings its progress to the GUI thread
        # and finishes the run there (MRML may only be modified from this thread).
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self.onPollFusion)
        self.ui.progressBar.setVisible(False)
        # Training runs the same way: a background thread, polled by its own timer.
        self._trainingPollTimer = qt.QTimer()
        self._trainingPollTimer.setInterval(200)
        self._trainingPollTimer.connect("timeout()", self.onPollTraining)
        self.ui.trainProgressBar.setVisible(False)

        # Connections

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Buttons
        self.ui.fuseButton.connect("clicked(bool)", self.onFuseButton)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self._abandonRun()
        self._abandonTraining()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        # Make sure parameter node exists and observed
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        # The nodes a running fusion would write to are about to disappear: stop it. A running
        # training goes on: it copied its volumes out of the scene and writes only its model file.
        self._abandonRun()
        # Parameter node will be reset, do not use it anymore
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        # If this module is shown while the scene is closed then recreate a new parameter node immediately
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        # Parameter node stores all user choices in parameter values, node selections, etc.
        # so that when the scene is saved and reloaded, these settings are restored.

        self.setParameterNode(self.logic.getParameterNode())

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputVolume1 and not self._parameterNode.inputVolume2:
            volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                       if n.GetClassName() == "vtkMRMLScalarVolumeNode"]
            if len(volumes) >= 2:
                self._parameterNode.inputVolume1 = volumes[0]
                self._parameterNode.inputVolume2 = volumes[1]

    def setParameterNode(self, inputParameterNode: Optional[MedFusionParameterNode]) -> None:
        """
        Set and observe parameter node.
        Observation is needed because when the parameter node is changed then the GUI must be updated immediately.
        """

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Note: in the .ui file, a Qt dynamic property called "SlicerParameterName" is set on each
            # ui element that needs connection.
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
        # While a run is in progress its button is its Cancel button: leave that one alone.
        if self._run is None:
            self._checkCanFuse(p)
        if self._trainingRun is None:
            self._checkCanTrain(p)

    def _checkCanFuse(self, p: Optional[MedFusionParameterNode]) -> None:
        inputs = [v for v in ([p.inputVolume1, p.inputVolume2, p.inputVolume3, p.inputVolume4] if p else []) if v]
        if not p or not p.inputVolume1 or not p.inputVolume2:
            self.ui.fuseButton.toolTip = _("Select input volumes 1 and 2")
            self.ui.fuseButton.enabled = False
        elif len({v.GetID() for v in inputs}) != len(inputs):
            self.ui.fuseButton.toolTip = _("Each input volume must be a different volume")
            self.ui.fuseButton.enabled = False
        elif p.outputVolume and p.outputVolume.GetID() in {v.GetID() for v in inputs}:
            self.ui.fuseButton.toolTip = _("The output volume must not be one of the inputs")
            self.ui.fuseButton.enabled = False
        elif p.method == "model file" and not p.modelFile.is_file():
            self.ui.fuseButton.toolTip = _("Choose a model file")
            self.ui.fuseButton.enabled = False
        elif self._trainingRun is not None:
            # One run at a time: both would share the CPU/GPU, and the model being trained is not there yet.
            self.ui.fuseButton.toolTip = _("A model is being trained; wait for it or cancel it (Train section)")
            self.ui.fuseButton.enabled = False
        else:
            self.ui.fuseButton.toolTip = _("Fuse the input volumes (runs in the background; click again to cancel)")
            self.ui.fuseButton.enabled = True

    @staticmethod
    def _isChosenPath(path: pathlib.Path) -> bool:
        """An empty ctkPathLineEdit reads as pathlib.Path() == '.', which is not a choice."""
        return str(path).strip() not in ("", ".")

    def _checkCanTrain(self, p: Optional[MedFusionParameterNode]) -> None:
        fromScene = bool(p) and p.trainingSource == "scene volumes"
        inputs = [v for v in ([p.inputVolume1, p.inputVolume2, p.inputVolume3, p.inputVolume4] if p else []) if v]
        if not p:
            self.ui.trainButton.toolTip = ""
            self.ui.trainButton.enabled = False
        elif fromScene and (not p.inputVolume1 or not p.inputVolume2):
            self.ui.trainButton.toolTip = _("Select input volumes 1 and 2 (Inputs section) to learn from")
            self.ui.trainButton.enabled = False
        elif fromScene and not p.trainingTargetVolume:
            self.ui.trainButton.toolTip = _("Select the target volume: the ideal fused volume of the inputs")
            self.ui.trainButton.enabled = False
        elif fromScene and p.trainingTargetVolume.GetID() in {v.GetID() for v in inputs}:
            self.ui.trainButton.toolTip = _("The target volume must not be one of the inputs")
            self.ui.trainButton.enabled = False
        elif not fromScene and not (self._isChosenPath(p.trainingFolder) and p.trainingFolder.exists()):
            self.ui.trainButton.toolTip = _("Choose a folder of training cases")
            self.ui.trainButton.enabled = False
        elif not self._isChosenPath(p.trainingOutputModel) or p.trainingOutputModel.suffix.lower() != ".pt":
            self.ui.trainButton.toolTip = _("Choose the model file to write (.pt)")
            self.ui.trainButton.enabled = False
        elif self._run is not None:
            self.ui.trainButton.toolTip = _("A fusion is running; wait for it or cancel it")
            self.ui.trainButton.enabled = False
        else:
            self.ui.trainButton.toolTip = _("Train a model (runs in the background; click again to cancel)")
            self.ui.trainButton.enabled = True

    def onFuseButton(self) -> None:
        """Fuse when the button reads Fuse; cancel the running fusion when it reads Cancel."""
        if self._run is not None:
            self._run.cancel()
            self.ui.fuseButton.enabled = False
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the fusion."), waitCursor=True):
            if not self.logic.setupPythonRequirements():
                self.ui.statusLabel.text = _("MedFusion needs its Python packages; fusion not started.")
                return
            p = self._parameterNode
            job = self.logic.prepare(**self.logic.argumentsFromParameterNode(p))
            self._run = self.logic.startBackgroundFusion(job)
            self.ui.fuseButton.text = _("Cancel")
            self.ui.fuseButton.toolTip = _("Stop the fusion; the scene is left as it was")
            self.ui.progressBar.value = 0
            self.ui.progressBar.setVisible(True)
            self.ui.statusLabel.text = _("Fusing...")
            self._pollTimer.start()
            self._checkCanApply()  # no training while fusing

    def onPollFusion(self) -> None:
        """Timer tick on the GUI thread: show progress; finish the run once its thread has ended."""
        run = self._run
        if run is None:
            self._pollTimer.stop()
            return
        fraction, message = run.progress
        self.ui.progressBar.value = int(round(100 * fraction))
        if run.isRunning():
            if not run.cancelEvent.is_set():
                self.ui.statusLabel.text = message
            return
        self._pollTimer.stop()
        self._run = None
        self._resetFuseButton()
        from MedFusionLib.errors import Cancelled

        try:
            result = run.finish()
        except Cancelled:
            self.ui.statusLabel.text = _("Cancelled: nothing was changed.")
            return
        except Exception as error:
            self.ui.statusLabel.text = _("Failed: nothing was changed.")
            slicer.util.errorDisplay(_("Fusion failed: {error}").format(error=error))
            logging.exception("MedFusion fusion failed")
            return
        self._parameterNode.outputVolume = result.outputVolumeNode
        if result.metricsTableNode is not None:
            self._parameterNode.metricsTable = result.metricsTableNode
            self._parameterNode.sliceTable = result.sliceTableNode
            self._parameterNode.plotChart = result.plotChartNode
        self.logic.showResult(result, self._parameterNode.inputVolume1)
        self.ui.statusLabel.text = _("Fused with {method} in {seconds:.1f} s.").format(
            method=result.methodName, seconds=result.seconds)

    def _resetFuseButton(self) -> None:
        self.ui.fuseButton.text = _("Fuse")
        self.ui.progressBar.setVisible(False)
        self._checkCanApply()

    def onTrainButton(self) -> None:
        """Train when the button reads Train; cancel the running training when it reads Cancel."""
        if self._trainingRun is not None:
            self._trainingRun.cancel()
            self.ui.trainButton.enabled = False
            self.ui.trainStatusLabel.text = _("Cancelling...")
            return
        p = self._parameterNode
        overwrite = False
        if p.trainingOutputModel.expanduser().is_file():
            if not slicer.util.confirmOkCancelDisplay(
                _("{path} already exists. Replace it with the model about to be trained?").format(
                    path=p.trainingOutputModel),
                _("MedFusion: replace model file"),
            ):
                return
            overwrite = True
        with slicer.util.tryWithErrorDisplay(_("Failed to start the training."), waitCursor=True):
            if not self.logic.setupPythonRequirements():
                self.ui.trainStatusLabel.text = _("MedFusion needs its Python packages; training not started.")
                return
            job = self.logic.prepareTraining(**self.logic.trainingArgumentsFromParameterNode(p), overwrite=overwrite)
            self._trainingRun = self.logic.startBackgroundTraining(job)
            self.ui.trainButton.text = _("Cancel")
            self.ui.trainButton.toolTip = _("Stop the training; no model file is written")
            self.ui.trainProgressBar.value = 0
            self.ui.trainProgressBar.setVisible(True)
            self.ui.trainStatusLabel.text = _("Training...")
            self._trainingPollTimer.start()
            self._checkCanApply()  # no fusion while training

    def onPollTraining(self) -> None:
        """Timer tick on the GUI thread: show progress; write the model once the training thread has ended."""
        run = self._trainingRun
        if run is None:
            self._trainingPollTimer.stop()
            return
        fraction, message = run.progress
        self.ui.trainProgressBar.value = int(round(100 * fraction))
        if run.isRunning():
            if not run.cancelEvent.is_set():
                self.ui.trainStatusLabel.text = message
            return
        self._trainingPollTimer.stop()
        self._trainingRun = None
        self._resetTrainButton()
        from MedFusionLib.errors import Cancelled

        try:
            result = run.finish()
        except Cancelled:
            self.ui.trainStatusLabel.text = _("Cancelled: no model file was written.")
            return
        except Exception as error:
            self.ui.trainStatusLabel.text = _("Failed: no model file was written.")
            slicer.util.errorDisplay(_("Training failed: {error}").format(error=error))
            logging.exception("MedFusion training failed")
            return
        if self._parameterNode:
            # The new model becomes the fusion method, so the next Fuse uses it.
            self._parameterNode.modelFile = result.modelPath
            self._parameterNode.method = "model file"
        self.ui.trainStatusLabel.text = _(
            "Trained a {family} model on {slices} slices in {seconds:.0f} s (validation loss {loss:.4f}); "
            "it is now the fusion method ('model file')."
        ).format(family=result.family, slices=result.trainingSlices, seconds=result.seconds,
                 loss=result.bestValidationLoss)

    def _resetTrainButton(self) -> None:
        self.ui.trainButton.text = _("Train")
        self.ui.trainProgressBar.setVisible(False)
        self._checkCanApply()

    def _abandonTraining(self) -> None:
        """Cancel a running training and drop it without writing a file (module cleanup)."""
        if self._trainingRun is not None:
            self._trainingRun.cancel()
            self._trainingRun.wait(timeout=30)
            self._trainingRun = None
        if self._trainingPollTimer is not None:
            self._trainingPollTimer.stop()
        if hasattr(self, "ui"):
            self._resetTrainButton()

    def _abandonRun(self) -> None:
        """Cancel a running fusion and drop it without writing anything (scene closing, module cleanup)."""
        if self._run is not None:
            self._run.cancel()
            self._run.wait(timeout=30)
            self._run = None
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if hasattr(self, "ui"):
            self._resetFuseButton()


#
# MedFusionLogic
#


class MedFusionLogic(ScriptedLoadableModuleLogic):
    """This class should implement all the actual
    computation done by your module.  The interface
    should be such that other python code can import
    this class and make use of the functionality without
    requiring an instance of the Widget.
    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py

    All MRML work is delegated to :class:`MedFusionSlicerLib.MedFusionLogicCore` (tested outside
    Slicer against a real MRML scene); it is imported on first use, after the dependency check,
    because it imports PyTorch.
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
            _makeMedFusionLibImportable()
            from MedFusionSlicerLib import MedFusionLogicCore

            self._core = MedFusionLogicCore()
        return self._core

    # ------------------------------------------------------------------ dependencies

    @staticmethod
    def missingPythonRequirements() -> list:
        """Pip requirements (and "torch") whose packages cannot be imported."""
        missing = [req for name, req in PYTHON_REQUIREMENTS.items() if importlib.util.find_spec(name) is None]
        if importlib.util.find_spec("torch") is None:
            missing.insert(0, "torch")
        return missing

    def setupPythonRequirements(self, askConfirmation: bool = True) -> bool:
        """Install what MedFusionLib needs, on first use and after asking; never at import time.

        PyTorch comes through the PyTorch extension's PyTorchUtils, which picks the build that
        matches the GPU driver (or the CPU build when there is no GPU); the rest through pip.

        :param askConfirmation: ask before installing (batch scripts pass False).
        :returns: True when everything is importable; False when the user declined.
        :raises RuntimeError: installing failed (e.g. offline); the message says what to do.
        """
        missing = self.missingPythonRequirements()
        if not missing:
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("MedFusion needs these Python packages, which are not installed yet:\n{packages}\n\n"
              "Installing needs a network connection and may take several minutes. Install now?").format(
                packages=", ".join(missing)),
            _("MedFusion: install Python packages"),
        ):
            return False
        try:
            if "torch" in missing:
                try:
                    import PyTorchUtils
                except ModuleNotFoundError:
                    raise RuntimeError(_("MedFusion needs the PyTorch extension: install 'PyTorch' from the "
                                         "Extensions Manager, restart Slicer, and press Fuse again.")) from None
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=MINIMUM_TORCH_VERSION)
                if torch is None:
                    raise RuntimeError(_("PyTorch could not be installed; see the Python console."))
            others = [req for req in missing if req != "torch"]
            if others:
                slicer.util.pip_install(others)
        except RuntimeError:
            raise
        except Exception as error:
            raise RuntimeError(
                _("Installing {packages} failed ({error}). Without a network connection, install them from a "
                  "machine that has one, e.g. in Slicer's Python console: "
                  "slicer.util.pip_install('{packages}').").format(packages=" ".join(missing), error=error)
            ) from error
        still = self.missingPythonRequirements()
        if still:
            raise RuntimeError(_("Still missing after installation: {packages}; restart Slicer and try again.")
                               .format(packages=", ".join(still)))
        return True

    # ------------------------------------------------------------------ processing

    @staticmethod
    def argumentsFromParameterNode(p: MedFusionParameterNode) -> dict:
        """Translate the GUI's parameters into :meth:`process` / core arguments."""
        inputs = [p.inputVolume1, p.inputVolume2, p.inputVolume3, p.inputVolume4]
        modalities = [p.modality1, p.modality2, p.modality3, p.modality4]
        used = [i for i, v in enumerate(inputs) if v is not None]
        method = str(p.modelFile) if p.method == "model file" else p.method
        return dict(
            inputVolumeNodes=[inputs[i] for i in used],
            outputVolumeNode=p.outputVolume,
            targetVolumeNode=p.targetVolume,
            method=method,
            axis=SLICE_AXIS_CHOICES.index(p.sliceAxis),
            blockSize=None if p.blockSize == "whole slice" else int(p.blockSize),
            device=p.device,
            resampleToFirst=p.resampleToFirst,
            metricsTableNode=p.metricsTable if p.computeMetrics else None,
            sliceTableNode=p.sliceTable if p.computeMetrics else None,
            plotChartNode=p.plotChart if p.computeMetrics else None,
            modalities=[None if modalities[i] == "auto" else modalities[i] for i in used],
            register=None if p.registration == "none" else p.registration,
            denoise=None if p.denoise == "none" else p.denoise,
            computeMetrics=p.computeMetrics,
        )

    def prepare(self, **kwargs):
        """Check the inputs and copy them out of the scene (see ``MedFusionLogicCore.prepare``)."""
        return self.core.prepare(**kwargs)

    @staticmethod
    def trainingArgumentsFromParameterNode(p: MedFusionParameterNode) -> dict:
        """Translate the Train section's parameters (and the inputs, modalities, slice axis, device and
        resampling choices of the other sections) into :meth:`train` / core arguments."""
        fromFolder = p.trainingSource == "folder"
        inputs = [p.inputVolume1, p.inputVolume2, p.inputVolume3, p.inputVolume4]
        modalities = [p.modality1, p.modality2, p.modality3, p.modality4]
        used = [i for i, v in enumerate(inputs) if v is not None]
        return dict(
            outputModelPath=str(p.trainingOutputModel),
            inputVolumeNodes=None if fromFolder else [inputs[i] for i in used],
            targetVolumeNode=None if fromFolder else p.trainingTargetVolume,
            trainingData=str(p.trainingFolder) if fromFolder else None,
            family=p.trainingFamily,
            iterations=p.trainingIterations,
            blockSize=None if p.trainingBlockSize == "auto" else int(p.trainingBlockSize),
            axis=SLICE_AXIS_CHOICES.index(p.sliceAxis),
            device=p.device,
            resampleToFirst=False if fromFolder else p.resampleToFirst,
            modalities=None if fromFolder else [None if modalities[i] == "auto" else modalities[i] for i in used],
        )

    def prepareTraining(self, **kwargs):
        """Check the training arguments and copy the volumes out of the scene (see ``MedFusionLogicCore.prepareTraining``)."""
        return self.core.prepareTraining(**kwargs)

    def startBackgroundTraining(self, job):
        """Start training a prepared job in a background thread; returns a ``BackgroundTraining``."""
        from MedFusionSlicerLib import BackgroundTraining

        return BackgroundTraining(self.core, job).start()

    def train(self, outputModelPath, inputVolumeNodes=None, targetVolumeNode=None, trainingData=None,
              waitForCompletion: bool = True, **kwargs):
        """
        Train a fusion model from scene volumes or a training folder and write it to a file.
        Can be used without GUI widget (batch scripts); never modifies the scene.

        :param outputModelPath: the model file to write (.pt); never one of the training inputs.
        :param inputVolumeNodes: two or more registered scalar volume nodes to learn from (with targetVolumeNode).
        :param targetVolumeNode: the ideal fused volume of the inputs.
        :param trainingData: instead of volumes, a folder of case folders (input_1.*, input_2.*, target.*)
            or a manifest CSV.
        :param waitForCompletion: True: train now and return a ``MedFusionTrainingResult``. False: start a
            background thread and return its ``BackgroundTraining`` at once; poll ``isRunning()`` and call
            ``finish()`` (which writes the file) on the main thread.
        :param kwargs: the other arguments of ``MedFusionLogicCore.train`` (family, iterations, blockSize,
            axis, device, resampleToFirst, progress, cancel, modalities, seed, overwrite).
        """
        if not waitForCompletion:
            progress, cancel = kwargs.pop("progress", None), kwargs.pop("cancel", None)
            if progress is not None or cancel is not None:
                raise ValueError("progress/cancel: with waitForCompletion=False use the returned run's "
                                 "progress and cancel()")
            return self.startBackgroundTraining(self.prepareTraining(
                outputModelPath=outputModelPath, inputVolumeNodes=inputVolumeNodes,
                targetVolumeNode=targetVolumeNode, trainingData=trainingData, **kwargs))
        return self.core.train(outputModelPath, inputVolumeNodes, targetVolumeNode, trainingData, **kwargs)

    def startBackgroundFusion(self, job):
        """Start the computation of a prepared job in a background thread; returns a ``BackgroundFusion``."""
        from MedFusionSlicerLib import BackgroundFusion

        return BackgroundFusion(self.core, job).start()

    def process(self, inputVolumeNodes, outputVolumeNode=None, targetVolumeNode=None, method="default",
                waitForCompletion: bool = True, showResult: bool = False, **kwargs):
        """
        Fuse volumes. Can be used without GUI widget (batch scripts, ``Slicer --no-main-window``).

        :param inputVolumeNodes: two or more registered scalar volume nodes; the first is the reference grid.
        :param outputVolumeNode: volume to overwrite (never an input), or None to create one.
        :param targetVolumeNode: optional ideal fused volume for the full-reference metrics.
        :param method: "default", a model file path, or a baseline name.
        :param waitForCompletion: True: fuse now and return a ``MedFusionResult``. False: start a
            background thread and return its ``BackgroundFusion`` at once; poll ``isRunning()``
            and call ``finish()`` on the main thread (that is what the widget does).
        :param showResult: show the fused volume, the metrics table and the plot in the views (GUI only).
        :param kwargs: the other arguments of ``MedFusionLogicCore.fuse`` (axis, blockSize, device,
            resampleToFirst, metricsTableNode, sliceTableNode, plotChartNode, progress, cancel,
            modalities, register, denoise, computeMetrics, metrics, plotMetrics).
        """
        import time

        startTime = time.time()
        logging.info("MedFusion: processing started")
        if not waitForCompletion:
            progress, cancel = kwargs.pop("progress", None), kwargs.pop("cancel", None)
            if progress is not None or cancel is not None:
                raise ValueError("progress/cancel: with waitForCompletion=False use the returned run's "
                                 "progress and cancel()")
            return self.startBackgroundFusion(self.prepare(
                inputVolumeNodes=inputVolumeNodes, outputVolumeNode=outputVolumeNode,
                targetVolumeNode=targetVolumeNode, method=method, **kwargs))
        result = self.core.fuse(inputVolumeNodes, outputVolumeNode, targetVolumeNode, method, **kwargs)
        if showResult:
            self.showResult(result, inputVolumeNodes[0])
        stopTime = time.time()
        logging.info(f"MedFusion: processing completed in {stopTime-startTime:.2f} seconds")
        return result

    @staticmethod
    def showResult(result, backgroundVolumeNode=None) -> None:
        """Show the fused volume in the slice views and the metrics table and plot (only with a GUI)."""
        if not slicer.app.commandOptions().noMainWindow:
            slicer.util.setSliceViewerLayers(background=result.outputVolumeNode, foreground=backgroundVolumeNode,
                                             foregroundOpacity=0.0, fit=True)
            if result.metricsTableNode is not None:
                layoutManager = slicer.app.layoutManager()
                layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
                selectionNode = slicer.app.applicationLogic().GetSelectionNode()
                selectionNode.SetActiveTableID(result.metricsTableNode.GetID())
                slicer.app.applicationLogic().PropagateTableSelection()
                selectionNode.SetActivePlotChartID(result.plotChartNode.GetID())
                slicer.app.applicationLogic().PropagatePlotChartSelection()


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
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_MedFusion_baseline_geometry()
        self.setUp()
        self.test_MedFusion_default_model()
        self.setUp()
        self.test_MedFusion_refuses_output_equal_input()
        self.setUp()
        self.test_MedFusion_train_then_fuse()

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

    def test_MedFusion_baseline_geometry(self):
        import numpy as np

        self.delayDisplay("Starting the baseline test")
        ct, mri, ijkToRAS = self._syntheticPair()
        logic = MedFusionLogic()
        self.assertTrue(logic.setupPythonRequirements(askConfirmation=False))
        result = logic.process([ct, mri], method="average")
        matrix = vtk.vtkMatrix4x4()
        result.outputVolumeNode.GetIJKToRASMatrix(matrix)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix), ijkToRAS)
        fused = slicer.util.arrayFromVolume(result.outputVolumeNode)
        self.assertEqual(fused.shape, (8, 48, 40))
        self.assertGreater(result.metricsTableNode.GetNumberOfRows(), 10)
        self.assertEqual(result.plotChartNode.GetNumberOfPlotSeriesNodes(), 3)
        self.delayDisplay("Test passed")

    def test_MedFusion_default_model(self):
        import numpy as np

        self.delayDisplay("Starting the default-model test (background run)")
        ct, mri, _ijkToRAS = self._syntheticPair()
        logic = MedFusionLogic()
        run = logic.process([ct, mri], waitForCompletion=False)
        while run.isRunning():
            slicer.app.processEvents()  # the GUI stays responsive while the thread works
            run.wait(timeout=0.05)
        result = run.finish()
        fused = slicer.util.arrayFromVolume(result.outputVolumeNode)
        self.assertTrue(np.all(np.isfinite(fused)) and fused.min() >= 0 and fused.max() <= 1)
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
