"""Training through the MedFusion Slicer module's logic, against a real MRML scene (``slicer-core``).

:meth:`MedFusionLogicCore.train` learns a model from volumes in the scene (inputs + target,
cut into slices) or from a folder of training cases, and writes it to a ``.pt`` file that the
same logic then fuses with. These tests check both sources end to end on tiny volumes and a
handful of iterations (the numbers are not the point: that the model is written, loads and
fuses is), that a cancel mid-training leaves no file, and that every refused input gives a
clear message, writes nothing and changes nothing in the scene or on disk.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest

# The helpers of the fusion tests; that module also skips when slicer-core is missing.
from test_slicer_logic import OBLIQUE, SHAPE, _add_volume, _fingerprint, _matrix, _phantom, _scene_state

import slicer
from MedFusionSlicerLib import BackgroundTraining, MedFusionLogicCore, TrainingCancelled, geometry_from_ijk_to_ras

from MedFusionLib.engine.model import FusionModel
from MedFusionLib.fusion import DEFAULT_MODEL_PATH, to_unit_range

#: Tiny runs: SHAPE's slices are 20 x 24 voxels, so 16 x 16 blocks; a few iterations are enough to
#: produce a model file (whether it fuses well is MedFusionLib's training tests' business).
FAST = dict(iterations=4, blockSize=16)


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(True)


@pytest.fixture
def core():
    return MedFusionLogicCore()


def _ideal() -> np.ndarray:
    """A stand-in target for the CT and MRI inputs: the voxel-wise maximum of the standardised inputs."""
    return np.maximum(to_unit_range(_phantom(1, np.int16)), to_unit_range(_phantom(2))).astype(np.float32)


@pytest.fixture
def volumes(scene):
    """CT and MRI inputs and their target, on one oblique, anisotropic, offset grid."""
    return (
        [_add_volume(scene, _phantom(1, np.int16), name="CT"), _add_volume(scene, _phantom(2), name="MRI")],
        _add_volume(scene, _ideal(), name="ideal"),
    )


def _files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden temporaries included) with a hash of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_case_folder(root: Path) -> Path:
    """``root/data/<case>/input_1.nii.gz, input_2.nii.gz, target.nii.gz`` for two cases."""
    import SimpleITK as sitk

    spacing, origin, direction = geometry_from_ijk_to_ras(OBLIQUE)
    for case, seeds in (("case1", (1, 2)), ("case2", (3, 4))):
        folder = root / "data" / case
        folder.mkdir(parents=True)
        arrays = [_phantom(seeds[0]), _phantom(seeds[1])]
        target = np.maximum(to_unit_range(arrays[0]), to_unit_range(arrays[1])).astype(np.float32)
        for name, array in (("input_1", arrays[0]), ("input_2", arrays[1]), ("target", target)):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(spacing), image.SetOrigin(origin), image.SetDirection(direction)
            sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
    return root / "data"


# -------------------------------------------------------------------------- training, then fusing with it


@pytest.mark.parametrize("family, options", [("cnn", FAST), ("dbm", dict(iterations=3))], ids=["cnn", "dbm"])
def test_training_from_scene_volumes_writes_a_model_that_fuses(scene, volumes, core, tmp_path, family, options):
    inputs, target = volumes
    state, sources = _scene_state(scene), [_fingerprint(n) for n in (*inputs, target)]
    reports: list[float] = []
    output = tmp_path / "my model.pt"

    result = core.train(output, inputs, target, family=family, progress=lambda f, m: reports.append(f), **options)

    assert result.modelPath == output and output.is_file()
    assert _files(tmp_path).keys() == {"my model.pt"}  # one file, no temporaries left
    assert _scene_state(scene) == state  # training never touches the scene
    assert [_fingerprint(n) for n in (*inputs, target)] == sources
    assert result.family == family and result.nInputs == 2
    assert result.blockSize == (16 if family == "cnn" else 8)  # the DBM's default block fits the slices
    assert result.trainingSlices == SHAPE[0] and result.iterationsRun == options["iterations"]
    assert np.isfinite(result.bestValidationLoss)
    assert reports == sorted(reports) and reports[-1] == 1.0

    model = FusionModel.load(output)
    assert (model.family, model.n_inputs, model.block_size) == (family, 2, result.blockSize)
    assert "scene volumes CT, MRI" in model.info.training["data"]

    fused = core.fuse(inputs, method=str(output), computeMetrics=False)
    array = slicer.util.arrayFromVolume(fused.outputVolumeNode)
    assert array.shape == SHAPE and np.all(np.isfinite(array)) and 0.0 <= array.min() and array.max() <= 1.0
    assert np.array_equal(_matrix(fused.outputVolumeNode), _matrix(inputs[0]))
    assert fused.methodName == f"{family} model"


def test_training_from_a_folder_of_triplets(scene, core, tmp_path):
    data = _write_case_folder(tmp_path)
    before = _files(data)
    output = tmp_path / "folder model.pt"

    result = core.train(output, trainingData=data, axis=0, **FAST)

    assert FusionModel.load(output).n_inputs == 2
    assert result.trainingSlices == 2 * SHAPE[0]
    assert _files(data) == before  # the training files are only read
    assert scene.GetNumberOfNodes() == 0
    # The model then fuses scene volumes through the logic.
    inputs = [_add_volume(scene, _phantom(1), name="A"), _add_volume(scene, _phantom(2), name="B")]
    fused = core.fuse(inputs, method=str(output), computeMetrics=False)
    assert slicer.util.arrayFromVolume(fused.outputVolumeNode).shape == SHAPE


def test_training_resamples_onto_input_1_when_asked(scene, volumes, core, tmp_path):
    inputs, _ = volumes
    coarse = OBLIQUE.copy()
    coarse[:3, :3] = OBLIQUE[:3, :3] @ np.diag([2.0, 2.0, 1.0])  # half the in-plane resolution, same extent
    low_target = _add_volume(scene, _ideal()[:, ::2, ::2].copy(), coarse, name="coarse ideal")
    with pytest.raises(ValueError, match="dimensions .* 'Resample onto input 1'"):
        core.train(tmp_path / "m.pt", inputs, low_target, **FAST)
    result = core.train(tmp_path / "m.pt", inputs, low_target, resampleToFirst=True, **FAST)
    assert result.trainingSlices == SHAPE[0] and result.modelPath.is_file()


def test_overwrite_replaces_an_existing_model_only_when_allowed(scene, volumes, core, tmp_path):
    inputs, target = volumes
    output = tmp_path / "model.pt"
    output.write_bytes(b"an older model")
    with pytest.raises(ValueError, match="already exists"):
        core.train(output, inputs, target, **FAST)
    assert output.read_bytes() == b"an older model"
    core.train(output, inputs, target, overwrite=True, **FAST)
    assert FusionModel.load(output).family == "cnn"


def test_background_training_thread(scene, volumes, core, tmp_path):
    inputs, target = volumes
    run = BackgroundTraining(core, core.prepareTraining(tmp_path / "m.pt", inputs, target, **FAST)).start()
    assert run.wait(timeout=120)
    assert not (tmp_path / "m.pt").exists()  # the file is written by finish(), on the scene's thread
    result = run.finish()
    assert result.modelPath.is_file() and run.progress[0] == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="already"):
        run.finish()


# -------------------------------------------------------------------------- cancel: no file


class _CancelWhenPast:
    """A cancel flag that turns on once the reported progress passes ``fraction``: a cancel mid-training."""

    def __init__(self, fraction: float) -> None:
        self.fraction, self.event = fraction, threading.Event()

    def progress(self, fraction: float, message: str) -> None:
        if fraction > self.fraction:
            self.event.set()


@pytest.mark.parametrize("fraction", [-1.0, 0.02, 0.3], ids=["before start", "building slices", "mid-training"])
def test_cancel_leaves_no_file(scene, volumes, core, tmp_path, fraction):
    inputs, target = volumes
    state = _scene_state(scene)
    flag = _CancelWhenPast(fraction)
    if fraction < 0:
        flag.event.set()
    with pytest.raises(TrainingCancelled):
        core.train(tmp_path / "m.pt", inputs, target, progress=flag.progress, cancel=flag.event,
                   iterations=20, blockSize=16)
    assert _files(tmp_path) == {} and _scene_state(scene) == state


def test_cancelled_background_training_leaves_no_file(scene, volumes, core, tmp_path):
    inputs, target = volumes
    run = BackgroundTraining(core, core.prepareTraining(tmp_path / "m.pt", inputs, target, iterations=200,
                                                        blockSize=16))
    run.start()
    while run.isRunning() and run.progress[0] < 0.1:  # wait until it is fitting, then cancel
        run.wait(timeout=0.02)
    run.cancel()
    assert run.wait(timeout=120)
    with pytest.raises(TrainingCancelled):
        run.finish()
    assert _files(tmp_path) == {}


# -------------------------------------------------------------------------- refusals: clear message, nothing changed


def _bad_training_cases(scene, inputs, target, tmp_path):
    shifted = OBLIQUE.copy()
    shifted[:3, 3] += [5.0, 0.0, 0.0]
    moved_target = _add_volume(scene, _ideal(), shifted, name="moved ideal")
    small_target = _add_volume(scene, _ideal()[:, :10, :10].copy(), name="small ideal")
    # input 1 was loaded from (and would be saved to) ct.nrrd
    stored = tmp_path / "ct.nrrd"
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(stored))
    inputs[0].SetAndObserveStorageNodeID(storage.GetID())
    assert storage.WriteData(inputs[0])
    data = _write_case_folder(tmp_path)
    no_target = data.parent / "no_target"
    (no_target / "case1").mkdir(parents=True)
    for name in ("input_1.nii.gz", "input_2.nii.gz"):
        (no_target / "case1" / name).write_bytes((data / "case1" / name).read_bytes())
    (tmp_path / "existing.pt").write_bytes(b"keep me")
    model = tmp_path / "m.pt"
    return {
        "target geometry mismatch": (dict(inputVolumeNodes=inputs, targetVolumeNode=moved_target), "IJK-to-RAS"),
        "target dimensions differ": (dict(inputVolumeNodes=inputs, targetVolumeNode=small_target), "dimensions"),
        "no target": (dict(inputVolumeNodes=inputs), "needs a target"),
        "target is an input": (dict(inputVolumeNodes=inputs, targetVolumeNode=inputs[1]), "one of the inputs"),
        "one input": (dict(inputVolumeNodes=inputs[:1], targetVolumeNode=target), "at least 2"),
        "output is an input volume's file": (
            dict(outputModelPath=stored, inputVolumeNodes=inputs, targetVolumeNode=target), "training input"),
        "output is a training folder file": (
            dict(outputModelPath=data / "case1" / "target.nii.gz", trainingData=data), "training input"),
        "output is the shipped default model": (
            dict(outputModelPath=DEFAULT_MODEL_PATH, inputVolumeNodes=inputs, targetVolumeNode=target),
            "shipped default model"),
        "output exists": (
            dict(outputModelPath=tmp_path / "existing.pt", inputVolumeNodes=inputs, targetVolumeNode=target),
            "already exists"),
        "output not .pt": (
            dict(outputModelPath=tmp_path / "model.txt", inputVolumeNodes=inputs, targetVolumeNode=target), r"\.pt"),
        "output folder missing": (
            dict(outputModelPath=tmp_path / "nowhere" / "m.pt", inputVolumeNodes=inputs, targetVolumeNode=target),
            "does not exist"),
        "no output": (dict(outputModelPath="", inputVolumeNodes=inputs, targetVolumeNode=target), "choose where"),
        "missing folder": (dict(trainingData=tmp_path / "missing"), "no such folder"),
        "folder case without target": (dict(trainingData=no_target), "no target"),
        "volumes and folder": (dict(inputVolumeNodes=inputs, targetVolumeNode=target, trainingData=data), "not both"),
        "no training data": (dict(), "none given"),
        "bad family": (dict(inputVolumeNodes=inputs, targetVolumeNode=target, family="gan"), "family"),
        "block larger than the slices": (
            dict(inputVolumeNodes=inputs, targetVolumeNode=target, blockSize=32), "larger than the slices"),
        "block not a power of two": (
            dict(inputVolumeNodes=inputs, targetVolumeNode=target, blockSize=12), "power of two"),
        "zero iterations": (dict(inputVolumeNodes=inputs, targetVolumeNode=target, iterations=0), "iterations"),
        "bad device": (dict(inputVolumeNodes=inputs, targetVolumeNode=target, device="tpu"), "device"),
    }, model


BAD_TRAINING_CASES = [
    "target geometry mismatch", "target dimensions differ", "no target", "target is an input", "one input",
    "output is an input volume's file", "output is a training folder file", "output is the shipped default model",
    "output exists", "output not .pt", "output folder missing", "no output", "missing folder",
    "folder case without target", "volumes and folder", "no training data", "bad family",
    "block larger than the slices", "block not a power of two", "zero iterations", "bad device",
]


@pytest.mark.parametrize("case", BAD_TRAINING_CASES)
def test_bad_training_input_is_refused_and_changes_nothing(scene, volumes, core, tmp_path, case):
    inputs, target = volumes
    cases, model = _bad_training_cases(scene, inputs, target, tmp_path)
    kwargs, message = cases[case]
    kwargs.setdefault("outputModelPath", model)
    state, sources, files = _scene_state(scene), [_fingerprint(n) for n in (*inputs, target)], _files(tmp_path)
    shipped = hashlib.sha256(DEFAULT_MODEL_PATH.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=message):
        core.train(kwargs.pop("outputModelPath"), **{"iterations": 4, **kwargs})
    assert _scene_state(scene) == state
    assert [_fingerprint(n) for n in (*inputs, target)] == sources
    assert _files(tmp_path) == files  # nothing written, nothing replaced
    assert hashlib.sha256(DEFAULT_MODEL_PATH.read_bytes()).hexdigest() == shipped
