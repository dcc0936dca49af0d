"""The widget's plain-Python parts on a real MRML scene (slicer-core): the parameter translation and the
run controller, driven as Slicer drives them -- the controller's timer ticks from a host that holds the
GIL between 100 ms ticks, the controller's buttons and labels are plain objects.

The Qt widget itself (MedFusion.py) cannot run here; test_slicer_static.py checks it against Slicer's template.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (MRML scene)")

from test_slicer_worker import _USLEEP, TICK_US, example_volumes, ideal, job_folders  # noqa: E402,F401 (fixtures)
from test_slicer_logic import core, scene  # noqa: E402,F401 (fixtures)

from MedFusionSlicerLib import choices  # noqa: E402
from MedFusionSlicerLib.parameters import (  # noqa: E402
    fusion_arguments, fusion_inputs, fusion_problem, training_arguments, training_problem,
)
from MedFusionSlicerLib.process import POOL  # noqa: E402
from MedFusionSlicerLib.run_controller import POLL_INTERVAL_MS, RunController  # noqa: E402

from MedFusionLib.errors import Cancelled, InputError  # noqa: E402


def _pack(volume=None, modality="auto"):
    return SimpleNamespace(volume=volume, modality=modality)


def _parameters(**changes) -> SimpleNamespace:
    """A parameter node as the widget's @parameterNodeWrapper holds it, with the .ui defaults."""
    p = SimpleNamespace(
        input1=_pack(), input2=_pack(), input3=_pack(), input4=_pack(), targetVolume=None, method="default",
        modelFile=None, blockSize="whole slice", sliceAxis="K", device="auto", registration="none",
        resampleToFirst=False, denoise="none", computeMetrics=True, computeContributions=False, outputVolume=None, metricsTable=None,
        sliceTable=None, plotChart=None, trainingSource="scene volumes", trainingTargetVolume=None,
        trainingFolder=None, trainingFamily="cnn", trainingBlockSize="auto",
        trainingIterations=choices.DEFAULT_TRAINING_ITERATIONS, trainingOutputModel=None,
    )
    for name, value in changes.items():
        setattr(p, name, value)
    return p


# ------------------------------------------------------------------------------ parameters -> arguments


def test_fusion_arguments_are_what_prepare_takes_and_it_accepts_them(example_volumes, core):
    ct, mri = example_volumes
    p = _parameters(input1=_pack(ct, "CT"), input3=_pack(mri), blockSize="32", sliceAxis="J", registration="rigid",
                    denoise="none", computeMetrics=False, computeContributions=False)
    arguments = fusion_arguments(p)
    accepted = set(inspect.signature(core.prepare).parameters)
    assert set(arguments) == accepted - {"metrics", "plotMetrics", "contributionVolumeNode"}, accepted ^ set(arguments)
    assert arguments["inputVolumeNodes"] == [ct, mri]  # gaps skipped, order kept
    assert arguments["modalities"] == ["CT", None]  # "auto" is None: from the data
    assert (arguments["axis"], arguments["blockSize"], arguments["register"], arguments["denoise"]) == (1, 32, "rigid", None)
    assert arguments["metricsTableNode"] is None  # no metrics: no tables
    job = core.prepare(**arguments)
    assert job.task.axis == 1 and job.task.register == "rigid" and job.task.blockSize == 32


def test_a_model_file_becomes_the_method_path(tmp_path):
    model = tmp_path / "mine.pt"
    assert fusion_arguments(_parameters(method="model file", modelFile=model))["method"] == str(model)
    assert fusion_arguments(_parameters(method="laplacian"))["method"] == "laplacian"


def test_training_arguments_are_what_prepare_training_takes(example_volumes, ideal, core, tmp_path):
    ct, mri = example_volumes
    output = tmp_path / "model.pt"
    p = _parameters(input1=_pack(ct, "CT"), input2=_pack(mri, "MRI"), trainingTargetVolume=ideal,
                    trainingOutputModel=output, trainingBlockSize="16", trainingIterations=7)
    arguments = training_arguments(p)
    accepted = set(inspect.signature(core.prepareTraining).parameters)
    assert set(arguments) | {"overwrite"} == accepted - {"seed"}, accepted ^ set(arguments)
    job = core.prepareTraining(**arguments, overwrite=False)
    assert (job.task.iterations, job.task.blockSize, job.task.modalities) == (7, 16, ["CT", "MRI"])
    folder = _parameters(input1=_pack(ct), trainingSource="folder", trainingFolder=tmp_path, trainingOutputModel=output)
    arguments = training_arguments(folder)
    assert arguments["inputVolumeNodes"] is None and arguments["targetVolumeNode"] is None
    assert arguments["trainingData"] == str(tmp_path) and arguments["resampleToFirst"] is False


# ------------------------------------------------------------------------------ why a run cannot start


def test_fusion_problems_name_what_to_do(example_volumes, tmp_path):
    ct, mri = example_volumes
    assert fusion_problem(None) == "Select input volumes 1 and 2"
    assert fusion_problem(_parameters(input1=_pack(ct))) == "Select input volumes 1 and 2"
    assert "different" in fusion_problem(_parameters(input1=_pack(ct), input2=_pack(ct)))
    assert "output" in fusion_problem(_parameters(input1=_pack(ct), input2=_pack(mri), outputVolume=mri))
    assert fusion_problem(_parameters(input1=_pack(ct), input2=_pack(mri), method="model file",
                                      modelFile=tmp_path / "absent.pt")) == "Choose a model file"
    ready = _parameters(input1=_pack(ct), input2=_pack(mri))
    assert fusion_problem(ready) == ""
    assert "trained" in fusion_problem(ready, trainingRunning=True)


def test_training_problems_name_what_to_do(example_volumes, ideal, tmp_path):
    ct, mri = example_volumes
    inputs = dict(input1=_pack(ct), input2=_pack(mri))
    assert training_problem(None) == "No parameter node"
    assert "input volumes" in training_problem(_parameters())
    assert "target volume" in training_problem(_parameters(**inputs))
    assert "not be one of the inputs" in training_problem(_parameters(**inputs, trainingTargetVolume=mri))
    assert ".pt" in training_problem(_parameters(**inputs, trainingTargetVolume=ideal,
                                                 trainingOutputModel=tmp_path / "model.txt"))
    ready = _parameters(**inputs, trainingTargetVolume=ideal, trainingOutputModel=tmp_path / "model.pt")
    assert training_problem(ready) == "" and "fusion" in training_problem(ready, fusionRunning=True)
    assert "folder" in training_problem(_parameters(trainingSource="folder", trainingFolder=tmp_path / "absent"))
    assert fusion_inputs(ready) == ([ct, mri], [None, None])


# ------------------------------------------------------------------------------ the run controller


class _Timer:
    """A qt.QTimer's interface; the host below fires it once per tick while it is active."""

    def __init__(self) -> None:
        self.interval, self.callback, self.active = None, None, False

    def setInterval(self, milliseconds: int) -> None:
        self.interval = milliseconds

    def connect(self, signal: str, callback) -> None:
        assert signal == "timeout()"
        self.callback = callback

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False


class _Bar(SimpleNamespace):
    def setVisible(self, visible: bool) -> None:
        self.visible = visible


def _controller(timer: _Timer, ended: list, idle: list, errors: list) -> RunController:
    return RunController(
        SimpleNamespace(text="Fuse", toolTip="", enabled=True), _Bar(value=0, visible=True), SimpleNamespace(text=""),
        "Fuse", lambda result, error: ended.append((result, error)), lambda: idle.append(True), timer, errors.append,
    )


def _slicer_host(timer: _Timer, timeout: float = 120.0, during=None) -> list:
    """Slicer's event loop: the GIL held between ticks, the timer's callback run once per tick while active.
    Returns the (progress value, status text, button text) seen after each tick."""
    seen = []
    start = time.perf_counter()
    while timer.active and time.perf_counter() - start < timeout:
        _USLEEP(TICK_US)
        timer.callback()
        seen.append(during() if during else None)
    return seen


def test_the_controller_runs_a_fusion_to_its_end_from_slicer_s_host(example_volumes, core, job_folders):
    from MedFusionSlicerLib import BackgroundFusion

    POOL.waitUntilWarm()
    timer, ended, idle, errors = _Timer(), [], [], []
    controller = _controller(timer, ended, idle, errors)
    assert timer.interval == POLL_INTERVAL_MS == 100 and controller.progressBar.visible is False
    controller.start(BackgroundFusion(core, core.prepare(example_volumes)).start(), "Fusing...", "Stop")
    assert controller.running and controller.button.text == "Cancel" and controller.progressBar.visible
    seen = _slicer_host(timer, during=lambda: (controller.progressBar.value, controller.statusLabel.text,
                                               controller.button.text))
    assert not controller.running and not timer.active
    assert controller.button.text == "Fuse" and controller.progressBar.visible is False and idle == [True]
    [(result, error)] = ended
    assert error is None and result.outputVolumeNode is not None
    assert np.all(np.isfinite(slicer.util.arrayFromVolume(result.outputVolumeNode)))
    assert all(button == "Cancel" for _, _, button in seen[:-1])  # Cancel while it ran
    values = [value for value, _, _ in seen[:-1]]
    assert values == sorted(values) and any(0 < v < 100 for v in values)  # the bar advanced
    assert any(text.startswith("fused slices") for _, text, _ in seen)
    assert controller.reportError(error, "cancelled", "failed") is False and job_folders() == []


def test_the_controller_cancels_and_reports_it_without_a_dialog(example_volumes, core, job_folders):
    from MedFusionSlicerLib import BackgroundFusion

    timer, ended, idle, errors = _Timer(), [], [], []
    controller = _controller(timer, ended, idle, errors)
    before = scene_nodes = slicer.mrmlScene.GetNumberOfNodes()
    controller.start(BackgroundFusion(core, core.prepare(example_volumes)).start(), "Fusing...", "Stop")
    controller.cancel()
    assert controller.button.enabled is False and controller.statusLabel.text == "Cancelling..."
    _slicer_host(timer, timeout=30)
    [(result, error)] = ended
    assert result is None and isinstance(error, Cancelled)
    assert controller.reportError(error, "Cancelled: nothing was changed.", "Fusion failed.") is True
    assert controller.statusLabel.text == "Cancelled: nothing was changed." and errors == []
    assert slicer.mrmlScene.GetNumberOfNodes() == before == scene_nodes and job_folders() == []


def test_the_controller_shows_a_failure_in_a_dialog_and_the_label():
    timer, ended, idle, errors = _Timer(), [], [], []
    controller = _controller(timer, ended, idle, errors)
    assert controller.reportError(InputError("volume 2: not finite"), "cancelled", "Fusion failed.") is True
    assert controller.statusLabel.text == "Fusion failed." and errors == ["Fusion failed.\n\nvolume 2: not finite"]


def test_closing_the_controller_abandons_the_run_at_once(example_volumes, core, job_folders):
    from MedFusionSlicerLib import BackgroundFusion

    timer, ended, idle, errors = _Timer(), [], [], []
    controller = _controller(timer, ended, idle, errors)
    run = BackgroundFusion(core, core.prepare(example_volumes)).start()
    controller.start(run, "Fusing...", "Stop")
    start = time.perf_counter()
    controller.close()
    assert time.perf_counter() - start < 1.0
    assert not controller.running and not timer.active and controller.button.text == "Fuse"
    assert ended == [] and not run.isRunning() and job_folders() == []  # nothing reported, nothing left
