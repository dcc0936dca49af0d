"""Background runs in a worker process, driven from a host that behaves like 3D Slicer's main thread.

Inside Slicer the main thread holds Python's GIL while it idles in the Qt event loop (PythonQt's
thread support is off), so a ``threading.Thread`` only advances while Python code runs on the
main thread. The host here does the same: between 100 ms ticks it sleeps in a C call made
through ``ctypes.PyDLL`` (which keeps the GIL, as PythonQt's event loop does), and once per
tick it polls the run the way the widget's QTimer does (``run.progress``, ``run.isRunning()``).
A run that only finished under ``wait()`` or ``join()`` would hang here.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (MRML scene)")
if os.name != "posix":
    pytest.skip("the GIL-holding host uses usleep from the C library", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedFusion"))

from MedFusionSlicerLib import BackgroundFusion, BackgroundTraining, WorkerError  # noqa: E402
from MedFusionSlicerLib.process import POOL  # noqa: E402

from MedFusionLib.engine.model import FusionModel  # noqa: E402
from MedFusionLib.engine.rbm import TrainingCancelled  # noqa: E402
from MedFusionLib.errors import InputError  # noqa: E402
from MedFusionLib.fusion import FusionCancelled  # noqa: E402
from MedFusionLib.io import read_image  # noqa: E402
from test_slicer_logic import _scene_state, core, scene  # noqa: E402,F401 (the scene and logic fixtures)

EXAMPLES = Path(__file__).resolve().parents[1] / "MedFusionLib" / "data" / "examples"
_USLEEP = ctypes.PyDLL(None).usleep  # a C call that keeps the GIL while it sleeps
TICK_US = 100_000


def _host(run, timeout: float = 120.0, until=None) -> float:
    """Poll ``run`` once per tick, holding the GIL in between, until it ends (or ``until()``); seconds taken."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        run.progress
        if not run.isRunning() or (until is not None and until()):
            break
        _USLEEP(TICK_US)
    return time.perf_counter() - start


@pytest.fixture
def example_volumes(scene):
    """The bundled CT and MRI volumes, with twice their slices, as scene volumes."""
    nodes = []
    for name in ("ct_volume.nii.gz", "mri_volume.nii.gz"):
        array = read_image(EXAMPLES / name).array
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name.split("_")[0].upper())
        slicer.util.updateVolumeFromArray(node, np.concatenate([array, array]))
        nodes.append(node)
    return nodes


@pytest.fixture
def ideal(scene, example_volumes):
    arrays = [slicer.util.arrayFromVolume(n).astype(np.float32) for n in example_volumes]
    scaled = [(a - a.min()) / np.ptp(a) for a in arrays]
    return slicer.util.addVolumeFromArray(np.maximum(*scaled), name="ideal")


@pytest.fixture
def job_folders(monkeypatch, tmp_path):
    """Runs make their temporary folders under tmp_path; returns a function listing those left behind."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return lambda: sorted(p.name for p in root.iterdir() if p.name.startswith(("MedFusion-fusion", "MedFusion-training")))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ------------------------------------------------------------------------------ the host is faithful


def test_the_host_starves_python_threads_as_slicer_does():
    """The emulation is real: a Python thread gets a small share of time in this host (it would hang a fusion)."""
    counts = {"free": 0, "host": 0}
    phase = {"name": "free", "stop": False}

    def count() -> None:
        while not phase["stop"]:
            counts[phase["name"]] += 1

    thread = threading.Thread(target=count, daemon=True)
    thread.start()
    time.sleep(0.5)  # releases the GIL: the thread runs freely
    phase["name"] = "host"
    for _ in range(5):  # 0.5 s of host ticks
        _USLEEP(TICK_US)
    phase["stop"] = True
    thread.join()
    assert counts["host"] < 0.25 * counts["free"], counts


# ------------------------------------------------------------------------------ runs finish in the host


def test_fusion_finishes_in_a_gil_holding_host(scene, example_volumes, core, job_folders):
    core.fuse(example_volumes)  # warms this process (numba kernels, the model)
    start = time.perf_counter()
    direct = core.fuse(example_volumes)
    direct_seconds = time.perf_counter() - start
    assert POOL.waitUntilWarm() is not None  # the widget warms a worker when the module opens
    before = _scene_state(scene)
    run = BackgroundFusion(core, core.prepare(example_volumes)).start()
    elapsed = _host(run)
    assert not run.isRunning()
    assert elapsed <= 3.0 + 2.0 * direct_seconds, (elapsed, direct_seconds)
    result = run.finish()
    assert np.array_equal(slicer.util.arrayFromVolume(result.outputVolumeNode),
                          slicer.util.arrayFromVolume(direct.outputVolumeNode))
    assert result.metrics.keys() == direct.metrics.keys()
    assert all(np.isclose(result.metrics[k], direct.metrics[k], equal_nan=True) for k in direct.metrics)
    assert len(_scene_state(scene)) > len(before) and job_folders() == []


def test_training_finishes_in_a_gil_holding_host(example_volumes, ideal, core, tmp_path, job_folders):
    options = dict(iterations=60, blockSize=32, seed=3)
    start = time.perf_counter()
    core.train(tmp_path / "direct.pt", example_volumes, ideal, **options)
    direct_seconds = time.perf_counter() - start
    POOL.waitUntilWarm()
    run = BackgroundTraining(core, core.prepareTraining(tmp_path / "m.pt", example_volumes, ideal, **options)).start()
    elapsed = _host(run)
    assert elapsed <= 3.0 + 2.0 * direct_seconds, (elapsed, direct_seconds)
    assert not (tmp_path / "m.pt").exists()  # the file is written by finish(), on the calling thread
    result = run.finish()
    trained, reference = FusionModel.load(result.modelPath), FusionModel.load(tmp_path / "direct.pt")
    for key, value in reference.network.state_dict().items():  # same seed, same data: the same weights
        assert np.array_equal(trained.network.state_dict()[key].numpy(), value.numpy()), key
    assert job_folders() == []


# ------------------------------------------------------------------------------ cancel, kill, errors, close


def _long_training(core, example_volumes, ideal, path):
    return BackgroundTraining(core, core.prepareTraining(path, example_volumes, ideal, iterations=5000, blockSize=32))


def test_cancel_mid_run_stops_the_worker_and_writes_nothing(scene, example_volumes, ideal, core, tmp_path,
                                                             job_folders):
    run = _long_training(core, example_volumes, ideal, tmp_path / "m.pt").start()
    _host(run, timeout=60, until=lambda: run.progress[0] > 0.06)  # fitting
    assert run.isRunning() and 0.06 < run.progress[0] < 0.9
    pid, state = run.pid, _scene_state(scene)
    started = time.perf_counter()
    run.cancel()
    assert time.perf_counter() - started < 0.5  # returns at once
    assert _host(run, timeout=10) < 5.0
    with pytest.raises(TrainingCancelled):
        run.finish()
    assert not _alive(pid)  # a cancelled worker is never reused
    assert not (tmp_path / "m.pt").exists() and _scene_state(scene) == state and job_folders() == []


def test_a_worker_killed_from_outside_is_a_clear_error(scene, example_volumes, ideal, core, tmp_path, job_folders):
    run = _long_training(core, example_volumes, ideal, tmp_path / "m.pt").start()
    _host(run, timeout=60, until=lambda: run.progress[0] > 0.06)
    os.kill(run.pid, signal.SIGKILL)
    _host(run, timeout=10)
    with pytest.raises(WorkerError, match=r"stopped unexpectedly \(killed by signal 9\); no model file was written"):
        run.finish()
    assert not (tmp_path / "m.pt").exists() and job_folders() == []


def test_a_fusion_worker_killed_from_outside_leaves_the_scene_unchanged(scene, example_volumes, core, job_folders):
    existing = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "previous result")
    slicer.util.updateVolumeFromArray(existing, np.full((4, 5, 6), 7.0, np.float32))
    state, image = _scene_state(scene), existing.GetImageData()
    run = BackgroundFusion(core, core.prepare(example_volumes, outputVolumeNode=existing, method="guided_filter"))
    run.start()
    os.kill(run.pid, signal.SIGKILL)
    _host(run, timeout=10)
    with pytest.raises(WorkerError, match="killed by signal 9.*the scene was not changed"):
        run.finish()
    assert _scene_state(scene) == state and existing.GetImageData() is image
    assert np.all(slicer.util.arrayFromVolume(existing) == 7.0) and job_folders() == []


def test_an_error_raised_in_the_worker_arrives_as_its_message(scene, example_volumes, core, job_folders):
    broken = slicer.util.addVolumeFromArray(np.full(slicer.util.arrayFromVolume(example_volumes[0]).shape, np.nan,
                                                    np.float32), name="broken")
    state = _scene_state(scene)
    run = BackgroundFusion(core, core.prepare([example_volumes[0], broken], computeMetrics=False)).start()
    _host(run, timeout=60)
    with pytest.raises(InputError, match="NaN"):
        run.finish()
    assert _scene_state(scene) == state and job_folders() == []
    # A refused input leaves the worker healthy: the next run gets the same process.
    again = BackgroundFusion(core, core.prepare(example_volumes, method="average", computeMetrics=False)).start()
    assert again.pid == run.pid
    _host(again)
    again.finish()


def test_close_returns_at_once_kills_the_worker_and_removes_the_folder(example_volumes, ideal, core, tmp_path,
                                                                       job_folders):
    run = _long_training(core, example_volumes, ideal, tmp_path / "m.pt").start()
    _host(run, timeout=60, until=lambda: run.progress[0] > 0.06)
    pid = run.pid
    started = time.perf_counter()
    run.close()  # scene closed, module cleaned up
    assert time.perf_counter() - started < 1.5
    assert not _alive(pid) and job_folders() == [] and not run.isRunning()
    with pytest.raises(TrainingCancelled):
        run.finish()
    run.close()  # idempotent
    assert not (tmp_path / "m.pt").exists()


def test_cancel_before_start_launches_nothing(example_volumes, core, job_folders):
    run = BackgroundFusion(core, core.prepare(example_volumes, method="average"))
    run.cancel()
    run.start()
    assert not run.isRunning() and run.pid is None and job_folders() == []
    with pytest.raises(FusionCancelled):
        run.finish()


def test_a_worker_serves_again_after_success_and_is_replaced_after_a_cancel(example_volumes, core, job_folders):
    first = BackgroundFusion(core, core.prepare(example_volumes, method="average", computeMetrics=False)).start()
    _host(first)
    first.finish()
    second = BackgroundFusion(core, core.prepare(example_volumes, method="average", computeMetrics=False)).start()
    assert second.pid == first.pid  # kept warm for the next run
    second.cancel()
    _host(second, timeout=10)
    with pytest.raises(FusionCancelled):
        second.finish()
    third = BackgroundFusion(core, core.prepare(example_volumes, method="average", computeMetrics=False)).start()
    assert third.pid != second.pid and not _alive(second.pid)
    _host(third)
    assert third.finish().outputVolumeNode is not None and job_folders() == []


# ------------------------------------------------------------------------------ where the files go


def test_exchange_files_go_to_ram_only_with_room_and_no_chosen_temporary_folder(monkeypatch, tmp_path):
    from MedFusionSlicerLib import process

    memory = tmp_path / "shm"
    memory.mkdir()
    monkeypatch.setattr(process, "MEMORY_FOLDER", memory)
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.delenv("TMPDIR", raising=False)
    free = process.shutil.disk_usage(memory).free
    assert process.exchange_root(free // 4) == str(memory)
    assert process.exchange_root(free // 2) is None  # not room for it three times over: the usual folder
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert process.exchange_root(1) is None  # the user chose a temporary folder
    monkeypatch.delenv("TMPDIR")
    monkeypatch.setattr(process, "MEMORY_FOLDER", tmp_path / "absent")
    assert process.exchange_root(1) is None


def test_a_run_through_the_ram_folder_leaves_nothing_there(monkeypatch, tmp_path, example_volumes, core):
    from MedFusionSlicerLib import process

    memory = tmp_path / "shm"
    memory.mkdir()
    monkeypatch.setattr(process, "MEMORY_FOLDER", memory)
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.delenv("TMPDIR", raising=False)
    run = BackgroundFusion(core, core.prepare(example_volumes, method="average", computeMetrics=False)).start()
    assert [p.name.startswith("MedFusion-fusion-") for p in memory.iterdir()] == [True]
    _host(run)
    assert run.finish().outputVolumeNode is not None
    assert list(memory.iterdir()) == []
