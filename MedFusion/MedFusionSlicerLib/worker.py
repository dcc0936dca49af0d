"""The worker process of a background run, and the files it shares with its parent.

Inside 3D Slicer the main thread holds Python's GIL while it waits in the Qt event loop
(PythonQt's thread support is off), so a Python thread barely advances there: long work
must run in another process, as SlicerMONAIAuto3DSeg and SlicerNNUnet do.
:class:`~.process.BackgroundFusion` and :class:`~.process.BackgroundTraining` start
``python -m MedFusionSlicerLib.worker FOLDER`` (``PythonSlicer`` inside Slicer), where
FOLDER is a private temporary folder holding:

- ``task.json`` (kind, options, LPS geometries) and ``inputs_<i>.npy`` / ``target.npy`` (the
  voxels copied out of the scene) and ``method.pt`` when the fusion method is a model (a
  baseline travels as its name and parameters in ``task.json``) -- written by the parent (:func:`write_task`);
- ``worker.out``: the job's reports, one JSON object per line: ``{"event": "ready"}`` when the
  worker takes the job, ``{"event": "progress", "fraction": f, "message": m}`` per step, and one
  closing line, ``{"event": "done"}``, ``{"event": "cancelled"}`` or ``{"event": "error", "type":
  ..., "message": ...}``, each with ``"reusable"`` (whether the worker may serve another job); the parent reads it at each poll without ever blocking (a file, not a
  pipe: reading it never waits, on every platform, and a slow reader never stalls the worker);
- ``worker.err``: the traceback of an unexpected error;
- ``cancel``: created by the parent to ask the worker to stop at its next check;
- the result, written atomically before the ``done`` line (:func:`write_result`):
  ``result.json`` plus ``fused.npy`` (fusion) or ``model.pt`` (training).

A worker is started as ``worker --serve`` (:func:`serve`): it imports torch and MedFusionLib and
warms up once, then takes one job folder per line of its stdin, so a run does not wait for
the imports when a warm worker is there (see :class:`~.process.WorkerPool`). The worker never
touches the scene or the user's files: the parent commits the result. A job stops when the
``cancel`` file appears, when its folder disappears (the parent closed the run), or when the
parent process is gone; an idle worker exits when its stdin closes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import numpy as np

from MedFusionLib.errors import Cancelled, InputError

from .jobs import FusionComputation, FusionTask, TrainingComputation, TrainingTask

TASK_FILE = "task.json"
RESULT_FILE = "result.json"
FUSED_FILE = "fused.npy"
CONTRIBUTIONS_FILE = "contributions.npy"
MODEL_FILE = "model.pt"
CANCEL_FILE = "cancel"
STDOUT_FILE = "worker.out"
STDERR_FILE = "worker.err"
#: Set to 1 in the worker's environment to have it report the peak of its traced (NumPy) allocations.
TRACE_MEMORY_VARIABLE = "MEDFUSION_WORKER_TRACEMALLOC"

_TASKS = {"fusion": FusionTask, "training": TrainingTask}
_ARRAY_LISTS = ("inputs",)
_ARRAYS = ("target",)
_GEOMETRY_LISTS = ("geometries",)
_GEOMETRIES = ("targetGeometry",)


# ------------------------------------------------------------------------------------------ files


def _replace_atomically(write: Any, path: Path) -> None:
    """``write(temporary)``, then rename onto ``path``: the file appears whole or not at all."""
    temporary = path.with_name(f".{path.name}.partial")
    write(temporary)
    os.replace(temporary, path)


def write_task(folder: Path, kind: str, task: Any) -> None:
    """Write a task into ``folder`` (parent side). Its arrays move to files: the task's lists are emptied.

    :param folder: the run's private folder.
    :param kind: ``"fusion"`` or ``"training"``.
    :param task: a :class:`~.jobs.FusionTask` or :class:`~.jobs.TrainingTask`.
    """
    options: dict[str, Any] = {}
    for field in dataclasses.fields(task):
        value = getattr(task, field.name)
        if field.name in _ARRAY_LISTS:
            options[field.name] = [f"{field.name}_{i}.npy" for i in range(len(value))]
            for name, array in zip(options[field.name], value):
                np.save(folder / name, array)
            value.clear()  # the worker reads them from disk: this process need not hold them any more
        elif field.name in _ARRAYS:
            options[field.name] = None if value is None else f"{field.name}.npy"
            if value is not None:
                np.save(folder / f"{field.name}.npy", value)
                setattr(task, field.name, None)
        elif field.name == "method":
            options["method"] = _write_method(folder, value)
        elif isinstance(value, Path):
            options[field.name] = str(value)
        else:
            options[field.name] = value
    (folder / TASK_FILE).write_text(json.dumps({"kind": kind, "options": options}), encoding="utf-8")


def _write_method(folder: Path, method: Any) -> dict[str, Any]:
    from MedFusionLib.engine.model import FusionModel

    if isinstance(method, FusionModel):
        method.save(folder / "method.pt")  # a snapshot: later edits of the model file do not reach the run
        return {"model": "method.pt"}
    # A baseline: its registry name and constructor parameters (plain data; no pickle crosses processes).
    return {"baseline": method.name, "params": method._params()}


def read_task(folder: Path) -> tuple[str, Any]:
    """The kind and task written by :func:`write_task` (worker side); arrays are memory-mapped, not copied."""
    document = json.loads((folder / TASK_FILE).read_text(encoding="utf-8"))
    kind, options = document["kind"], dict(document["options"])
    for name in _ARRAY_LISTS:
        options[name] = [np.load(folder / file, mmap_mode="r") for file in options[name]]
    for name in _ARRAYS:
        options[name] = None if options[name] is None else np.load(folder / options[name], mmap_mode="r")
    for name in _GEOMETRY_LISTS:
        options[name] = [tuple(tuple(part) for part in g) for g in options[name]]
    for name in _GEOMETRIES:
        if options.get(name) is not None:
            options[name] = tuple(tuple(part) for part in options[name])
    if "method" in options:
        method = options["method"]
        if "model" in method:
            from MedFusionLib.engine.model import FusionModel

            options["method"] = FusionModel.load(folder / method["model"])
        else:
            from MedFusionLib.baselines import get_baseline

            options["method"] = get_baseline(method["baseline"], **method["params"])
    if options.get("trainingData") is not None:
        options["trainingData"] = Path(options["trainingData"])
    return kind, _TASKS[kind](**options)


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as stream:  # a file object: np.save would add ".npy" to the temporary's name
        np.save(stream, array)


def _nan_to_none(values: Any) -> list:
    return [None if math.isnan(v) else float(v) for v in np.asarray(values, dtype=float).ravel()]


def write_result(folder: Path, kind: str, computation: Any) -> None:
    """Write a computation into ``folder`` (worker side), each file atomically, ``result.json`` last."""
    if kind == "fusion":
        _replace_atomically(lambda p: _save_array(p, computation.fused), folder / FUSED_FILE)
        if computation.contributions is not None:
            _replace_atomically(lambda p: _save_array(p, computation.contributions), folder / CONTRIBUTIONS_FILE)
        document = {
            "contributions": computation.contributions is not None,
            "seconds": computation.seconds,
            "methodName": computation.methodName,
            "metrics": {k: (None if math.isnan(v) else v) for k, v in computation.metrics.items()},
            "sliceMetrics": {k: _nan_to_none(v) for k, v in computation.sliceMetrics.items()},
            "sliceIndices": [int(i) for i in computation.sliceIndices],
            "metricsSeconds": computation.metricsSeconds,
        }
    else:
        _replace_atomically(lambda p: computation.model.save(p, overwrite=True), folder / MODEL_FILE)
        document = {
            "history": computation.history.to_dict(),
            "trainingSlices": computation.trainingSlices,
            "blockSize": computation.blockSize,
        }
    _replace_atomically(lambda p: p.write_text(json.dumps(document), encoding="utf-8"), folder / RESULT_FILE)


def read_result(folder: Path, kind: str) -> Any:
    """The computation written by :func:`write_result` (parent side); the fused volume is memory-mapped."""
    document = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
    if kind == "fusion":
        nan = lambda v: math.nan if v is None else float(v)  # noqa: E731
        return FusionComputation(
            fused=np.load(folder / FUSED_FILE, mmap_mode="r"),
            seconds=float(document["seconds"]),
            methodName=document["methodName"],
            metrics={k: nan(v) for k, v in document["metrics"].items()},
            sliceMetrics={k: np.array([nan(x) for x in v]) for k, v in document["sliceMetrics"].items()},
            sliceIndices=np.array(document["sliceIndices"], dtype=int),
            metricsSeconds=float(document["metricsSeconds"]),
            contributions=np.load(folder / CONTRIBUTIONS_FILE, mmap_mode="r") if document["contributions"] else None,
        )
    from MedFusionLib.engine.model import FusionModel
    from MedFusionLib.engine.training import TrainingHistory

    return TrainingComputation(
        model=FusionModel.load(folder / MODEL_FILE),
        history=TrainingHistory(**document["history"]),
        trainingSlices=int(document["trainingSlices"]),
        blockSize=int(document["blockSize"]),
    )


# ------------------------------------------------------------------------------------------ the process


class _StopSignals:
    """A job's cancel flag: the parent's ``cancel`` file, the job folder gone, or the parent process gone."""

    def __init__(self, folder: Path, parent: int) -> None:
        self.folder, self.parent = folder, parent

    def is_set(self) -> bool:
        return (
            (self.folder / CANCEL_FILE).exists()
            or not self.folder.is_dir()
            or (os.name == "posix" and os.getppid() != self.parent)
        )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def run_job(folder: Path, startup_error: Optional[BaseException] = None, parent: Optional[int] = None) -> bool:
    """Compute the task in ``folder``, reporting to ``folder/worker.out``; True when the worker stays usable.

    :param folder: the job's folder, written by :func:`write_task`.
    :param startup_error: why this worker could not import what it needs (reported as the job's error).
    :param parent: the parent's process id (default: this process's parent).
    """
    with open(folder / STDOUT_FILE, "a", encoding="utf-8") as stream:
        def emit(**event: Any) -> None:
            stream.write(json.dumps(event) + "\n")
            stream.flush()

        def close(reusable: bool, **event: Any) -> bool:
            """The closing report, which also tells the parent whether this worker may serve again."""
            emit(reusable=reusable, **event)
            return reusable

        if startup_error is not None:
            return close(False, event="error", type=type(startup_error).__name__,
                         message=f"the worker could not start ({_one_line(startup_error)})")
        try:
            from .compute import compute_fusion, compute_training

            if os.environ.get(TRACE_MEMORY_VARIABLE) == "1":
                import tracemalloc

                tracemalloc.start()
                tracemalloc.reset_peak()
            kind, task = read_task(folder)
            emit(event="ready", time=time.time(), pid=os.getpid())
            compute = compute_fusion if kind == "fusion" else compute_training
            computation = compute(task, lambda f, m: emit(event="progress", fraction=float(f), message=str(m)),
                                  _StopSignals(folder, os.getppid() if parent is None else parent))
            del task  # the memory-mapped inputs: released before the next job
            write_result(folder, kind, computation)
            return close(True, event="done", peak_traced_bytes=_traced_peak())
        except Cancelled as error:
            return close(False, event="cancelled", message=str(error))
        except InputError as error:  # a refused input: the worker itself is fine
            return close(True, event="error", type="InputError", message=" ".join(str(error).split()))
        except Exception as error:
            with open(folder / STDERR_FILE, "a", encoding="utf-8") as log:
                traceback.print_exc(file=log)  # shown only when asked for (MEDFUSION_DEBUG=1)
            return close(False, event="error", type=type(error).__name__, message=_one_line(error))


def _traced_peak() -> Optional[int]:
    import tracemalloc

    return tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else None


def _warm_up() -> None:
    """Load what the first job would otherwise wait for: the default model and the compiled metric kernels.

    64 px: the smallest side whose pyramid has the default model's 4 levels, the depth of real slices
    (the compiled kernels that take one array per level are compiled, or loaded, per depth).
    """
    from MedFusionLib.fusion import fuse
    from MedFusionLib.metrics import evaluate

    rng = np.random.default_rng(0)
    images = [rng.random((64, 64), dtype=np.float32) for _ in range(2)]
    evaluate(fuse(images).image, images)


def serve() -> int:
    """A pooled worker: import and warm up once, then run one job per folder path read from stdin.

    It prints ``{"event": "ready"}`` on stdout once warm, and exits at end of input (its parent
    closed the pipe or is gone) or after a job that left it unusable (see :func:`run_job`).
    """
    started = time.time()
    parent = os.getppid()
    startup_error: Optional[BaseException] = None
    try:
        from . import compute  # noqa: F401 -- torch, MedFusionLib: the fixed cost, paid once
        imported = time.time()
        _warm_up()
    except Exception as error:  # reported to the first job, which tells the user
        startup_error, imported = error, time.time()
    print(json.dumps({"event": "ready", "imports_s": imported - started, "warm_s": time.time() - started}),
          flush=True)
    for line in sys.stdin:
        folder = Path(line.strip())
        if not folder.is_dir():
            continue
        if not run_job(folder, startup_error, parent):
            return 1
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """``worker --serve`` (a pooled worker, see :func:`serve`) or ``worker FOLDER`` (one job, for debugging)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--serve"]:
        return serve()
    if len(argv) != 1:
        print("usage: python -m MedFusionSlicerLib.worker (--serve | FOLDER)", file=sys.stderr)
        return 2
    return 0 if run_job(Path(argv[0])) else 1


if __name__ == "__main__":
    sys.exit(main())
