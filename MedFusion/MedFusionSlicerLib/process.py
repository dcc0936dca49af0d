"""Background runs: the computation in a worker process, polled from the scene's thread without blocking.

Inside 3D Slicer the main thread keeps Python's GIL while it idles in the Qt event loop
(PythonQt's thread support is off), so a Python thread only advances while Python code runs
on the main thread -- a fusion in a ``threading.Thread`` would appear to hang. So, as
SlicerMONAIAuto3DSeg and SlicerNNUnet do, the computation runs in a separate Python process
(``PythonSlicer`` inside Slicer, ``sys.executable`` elsewhere; see :mod:`.worker` for what it
reads and writes). This process keeps the two cheap phases: prepare (read the nodes, check
every input) before :meth:`~_BackgroundRun.start`, commit (write nodes, tables, plot or the
model file) in :meth:`~_BackgroundRun.finish`.

The contract the widget, the self-test and batch scripts use::

    run = BackgroundFusion(core, core.prepare(...)).start()
    while run.isRunning():          # never blocks: reads whatever the worker has reported
        fraction, message = run.progress
        ...                         # one poll per QTimer tick in the widget
    result = run.finish()           # commits on the calling thread; raises on cancel or failure

``run.cancel()`` returns at once: it asks the worker to stop and terminates it, killing it
after a short grace if it is still there at a later poll. ``run.close()`` abandons a run
(scene closed, module cleaned up): the worker is killed and the temporary folder removed.
Cancel, failure, a worker killed from outside, and close all leave the scene unchanged and
remove the temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import atexit
import importlib.util

from MedFusionLib.errors import Cancelled, InputError

from . import worker
from .jobs import MedFusionResult, MedFusionTrainingResult

#: Seconds a terminated worker gets to exit before it is killed.
TERMINATE_GRACE_SECONDS = 2.0
#: Environment variable naming the Python interpreter for the worker (default: see :func:`worker_command`).
PYTHON_VARIABLE = "MEDFUSION_WORKER_PYTHON"
#: Set to 1 to have a worker's traceback appended to its error message.
DEBUG_VARIABLE = "MEDFUSION_DEBUG"


#: A RAM-backed folder for the files a run exchanges with its worker, where the system has one (Linux).
MEMORY_FOLDER = Path("/dev/shm")


def exchange_root(task_bytes: int) -> Optional[str]:
    """Where a run's private folder goes: RAM when there is room for it, else the usual temporary folder.

    The exchange files live for one run. On a disk, the kernel writes them back while the worker
    computes, which cost 10-20 % of a 256x256x128 fusion on the benchmark machine; in RAM it does
    not. ``/dev/shm`` is used only when it has room for the task and its result three times over
    (a container's default of 64 MB does not) and nobody chose a temporary folder
    (``tempfile.tempdir`` or ``TMPDIR``); otherwise None, which means ``tempfile``'s default.

    :param task_bytes: the bytes of the task's arrays plus the result's.
    """
    if tempfile.tempdir is not None or os.environ.get("TMPDIR") or not MEMORY_FOLDER.is_dir():
        return None
    try:
        free = shutil.disk_usage(MEMORY_FOLDER).free
    except OSError:
        return None
    return str(MEMORY_FOLDER) if os.access(MEMORY_FOLDER, os.W_OK) and free > 3 * task_bytes else None


class WorkerError(RuntimeError):
    """The worker process failed for a reason that is not the input's fault, or stopped unexpectedly."""


def worker_command() -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start a pooled worker (``worker --serve``).

    Inside 3D Slicer: ``PythonSlicer`` (the application's Python, with its packages), started
    with the application's startup environment as ``slicer.util.launchConsoleProcess`` does.
    Elsewhere (``slicer-core``, batch scripts): this interpreter, ``sys.executable``.
    ``MEDFUSION_WORKER_PYTHON`` overrides both. The folders holding ``MedFusionLib`` and this
    package are put on ``PYTHONPATH`` so the worker imports the same code.
    """
    app = getattr(sys.modules.get("slicer"), "app", None)  # only the Slicer application has slicer.app
    if os.environ.get(PYTHON_VARIABLE):
        python, environment = os.environ[PYTHON_VARIABLE], dict(os.environ)
    elif app is not None:
        import slicer

        suffix = ".exe" if os.name == "nt" else ""
        python = shutil.which("PythonSlicer") or os.path.join(app.slicerHome, "bin", f"PythonSlicer{suffix}")
        environment = dict(slicer.util.startupEnvironment())
    else:
        python, environment = sys.executable, dict(os.environ)
    library = Path(importlib.util.find_spec("MedFusionLib").origin).resolve().parents[1]
    paths = [str(Path(__file__).resolve().parents[1]), str(library)]
    if environment.get("PYTHONPATH"):
        paths.append(environment["PYTHONPATH"])
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return [python, "-m", f"{__package__}.worker", "--serve"], environment


#: A worker serves at most this many jobs, then is replaced (bounds what a long session can accumulate).
MAX_JOBS_PER_WORKER = 20


class WorkerPool:
    """At most one idle, warm worker process, handed to the next run so it does not wait for the imports.

    How workers are kept healthy: a worker runs one job at a time; it goes back to the pool only
    after a job that ended normally (a result, or an input it refused) and while it has served
    fewer than :data:`MAX_JOBS_PER_WORKER` jobs; a worker whose run was cancelled, failed
    unexpectedly, was killed or closed is never reused. An idle worker that died meanwhile is
    noticed when it is taken and replaced. Idle workers exit when this process closes their
    stdin (:meth:`shutdown`, also at interpreter exit) or dies.
    """

    def __init__(self) -> None:
        self._idle: Optional[subprocess.Popen] = None
        self._jobs: dict[int, int] = {}
        self._logs: Optional[Path] = None
        self._launched = 0

    def warmUp(self) -> subprocess.Popen:
        """Start a worker now, if none is idle, so the next run finds it warm; returns at once."""
        if self._idle is None or self._idle.poll() is not None:
            self._idle = self._launch()
        return self._idle

    def take(self) -> subprocess.Popen:
        """A worker for a run: the idle one (started earlier, probably warm) or a new one."""
        process = self.warmUp()
        self._idle = None
        return process

    def giveBack(self, process: subprocess.Popen) -> None:
        """A worker whose job ended normally: kept as the idle one, or stopped when it served enough."""
        self._jobs[process.pid] = self._jobs.get(process.pid, 0) + 1
        if process.poll() is None and self._idle is None and self._jobs[process.pid] < MAX_JOBS_PER_WORKER:
            self._idle = process
        else:
            self.discard(process)

    def discard(self, process: subprocess.Popen) -> None:
        """Stop a worker for good (its process group: a launcher's child too); never blocks for long."""
        self._jobs.pop(process.pid, None)
        if process.poll() is None:
            _signal(process, kill=True)
            try:
                process.wait(timeout=1.0)  # a killed process is gone within milliseconds
            except subprocess.TimeoutExpired:
                pass
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def waitUntilWarm(self, timeout: float = 60.0) -> Optional[dict]:
        """Block until the idle worker has imported and warmed up; its ``ready`` report (None: none came)."""
        process = self.warmUp()
        log = process.logPath
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    report = json.loads(line)
                except ValueError:
                    continue
                if isinstance(report, dict) and report.get("event") == "ready":
                    return report
            time.sleep(0.05)
        return None

    def shutdown(self) -> None:
        """Stop the idle worker and remove the workers' log folder."""
        if self._idle is not None:
            self.discard(self._idle)
            self._idle = None
        if self._logs is not None:
            shutil.rmtree(self._logs, ignore_errors=True)
            self._logs = None

    def _launch(self) -> subprocess.Popen:
        if self._logs is None or not self._logs.is_dir():
            self._logs = Path(tempfile.mkdtemp(prefix="MedFusion-workers-"))
        command, environment = worker_command()
        options: dict[str, Any] = {}
        if os.name == "posix":
            options["start_new_session"] = True  # its own process group: a kill reaches a launcher's child too
        else:
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        self._launched += 1
        log_path = self._logs / f"worker-{self._launched}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                       env=environment, cwd=self._logs, **options)
        process.logPath = log_path  # type: ignore[attr-defined]
        return process


#: The pool of this process (Slicer, a batch script, the tests).
POOL = WorkerPool()
atexit.register(POOL.shutdown)


def warmUp() -> None:
    """Start a worker in the background so that the next Fuse or Train does not wait for its imports."""
    POOL.warmUp()


def _signal(process: subprocess.Popen, kill: bool) -> None:
    """Terminate (or kill) a worker and anything it started (a PythonSlicer launcher starts the real Python)."""
    try:
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        else:
            subprocess.Popen(["taskkill", "/PID", str(process.pid), "/T", "/F"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        pass  # already gone


class _BackgroundRun:
    """A run whose computation happens in a worker process; every method returns at once except :meth:`wait`.

    :param core: the logic that prepared ``job`` (its commit phase writes the result).
    :param job: from the core's prepare step. The run takes it over: its arrays move to the
        worker's files when the run starts.
    """

    #: What the run does, for messages.
    what = "computation"
    #: The worker's task kind (see :mod:`.worker`).
    kind = ""

    def __init__(self, core: Any, job: Any) -> None:
        self.core, self.job = core, job
        self._folder: Optional[Path] = None
        self._process: Optional[subprocess.Popen] = None
        self._reader: Any = None
        self._pending = b""
        self._progress: tuple[float, str] = (0.0, "starting")
        self._outcome: Optional[dict[str, Any]] = None
        self._started = self._finished = self._closed = self._cancelRequested = False
        self._terminatedAt: Optional[float] = None
        self._launchedAt = 0.0
        #: Seconds from :meth:`start` to the worker taking the job (about 0 with a warm worker), once known.
        self.workerStartSeconds: Optional[float] = None
        #: Peak traced NumPy memory of the worker, when it was asked to trace it (``MEDFUSION_WORKER_TRACEMALLOC=1``).
        self.workerPeakTracedBytes: Optional[int] = None

    def _bytes(self) -> int:
        """The task's voxel bytes, twice (inputs and target in, about as much out)."""
        task = self.job.task
        arrays = list(getattr(task, "inputs", []) or []) + [getattr(task, "target", None)]
        return 2 * sum(a.nbytes for a in arrays if a is not None)

    # What a subclass provides: the commit phase and its cancel exception.
    def _commit(self, computation: Any) -> Any:
        raise NotImplementedError

    def _cancelled(self) -> Cancelled:
        raise NotImplementedError

    # ------------------------------------------------------------------ start

    def start(self) -> "_BackgroundRun":
        """Write the task to a private temporary folder and hand it to a worker; returns self at once."""
        if self._started:
            raise RuntimeError(f"this {self.what} was already started")
        self._started = True
        if self._cancelRequested or self._closed:
            return self  # cancelled before it started: nothing to launch
        self._folder = Path(tempfile.mkdtemp(prefix=f"MedFusion-{self.kind}-", dir=exchange_root(self._bytes())))
        try:
            worker.write_task(self._folder, self.kind, self.job.task)
            (self._folder / worker.STDOUT_FILE).touch()
            self._reader = open(self._folder / worker.STDOUT_FILE, "rb")
            self._launchedAt = time.time()
            self._process = POOL.take()
            self._process.stdin.write(f"{self._folder}\n".encode())
            self._process.stdin.flush()
        except BaseException:
            if self._process is not None:
                POOL.discard(self._process)
            self._remove_folder()
            raise
        return self

    # ------------------------------------------------------------------ polling

    @property
    def pid(self) -> Optional[int]:
        """The worker's process id (None before start)."""
        return self._process.pid if self._process is not None else None

    @property
    def progress(self) -> tuple[float, str]:
        """The latest ``(fraction, message)`` the worker reported."""
        self._read_reports()
        return self._progress

    @property
    def cancelRequested(self) -> bool:
        """Whether :meth:`cancel` (or :meth:`close`) was called."""
        return self._cancelRequested

    def isRunning(self) -> bool:
        """Whether the worker is still on this run; never blocks (reads whatever it has reported)."""
        if self._process is None or self._closed:
            return False
        self._read_reports()
        if self._outcome is not None and not self._cancelRequested:
            return False  # it reported its end; the (reusable) process lives on
        if self._process.poll() is None:
            if self._terminatedAt is not None and time.monotonic() - self._terminatedAt > TERMINATE_GRACE_SECONDS:
                _signal(self._process, kill=True)
            return True
        self._read_reports()  # the last lines it wrote before exiting
        return False

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the run ends (or ``timeout`` seconds pass); True when it has ended. For scripts."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.isRunning():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def _read_reports(self) -> None:
        if self._reader is None:
            return
        self._pending += self._reader.read()  # a regular file: returns what is there, never waits
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            try:
                report = json.loads(line)
            except ValueError:
                continue  # not a protocol line
            event = report.get("event") if isinstance(report, dict) else None
            if event == "progress":
                self._progress = (float(report["fraction"]), str(report["message"]))
            elif event == "ready":
                self.workerStartSeconds = max(float(report["time"]) - self._launchedAt, 0.0)
            elif event in ("done", "cancelled", "error"):
                self._outcome = report
                if event == "done":
                    self.workerPeakTracedBytes = report.get("peak_traced_bytes")
                    self._progress = (1.0, "done")

    # ------------------------------------------------------------------ stopping

    def cancel(self) -> None:
        """Ask the worker to stop and terminate it; returns at once (it is killed after a short grace)."""
        self._cancelRequested = True
        if self._process is None or self._process.poll() is not None:
            return
        try:
            (self._folder / worker.CANCEL_FILE).touch()
        except OSError:
            pass
        _signal(self._process, kill=False)
        self._terminatedAt = time.monotonic()

    def close(self) -> None:
        """Abandon the run: stop its worker, remove the temporary folder; never commits. Safe to repeat."""
        if self._closed:
            return
        self._closed = True
        if not self._finished:
            self._cancelRequested = True
        if self._process is not None:
            # The worker's closing report says whether it may serve again (a result, or an input it refused).
            reusable = self._finished and self._outcome is not None and self._outcome.get("reusable") is True
            if reusable and not self._cancelRequested:
                POOL.giveBack(self._process)
            else:
                POOL.discard(self._process)
        self._remove_folder()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to report to
            pass

    def _remove_folder(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    # ------------------------------------------------------------------ the end

    def finish(self) -> Any:
        """Commit the result on the calling thread, once :meth:`isRunning` is False; removes the temporary folder.

        :raises RuntimeError: the worker is still running, or finish() was already called.
        :raises Cancelled: the run was cancelled or closed (nothing was written).
        :raises InputError: the worker refused an input, with its message (nothing was written).
        :raises WorkerError: the worker failed otherwise or stopped unexpectedly (nothing was written).
        """
        if self._finished:
            raise RuntimeError(f"finish() was already called for this {self.what}")
        if self._closed:
            raise self._cancelled()
        if self.isRunning():
            raise RuntimeError(f"the {self.what} is still running; call finish() once isRunning() is False")
        self._finished = True
        try:
            if self._cancelRequested:
                raise self._cancelled()
            if self._outcome is None or self._outcome["event"] != "done":
                raise self._failure()
            return self._commit(worker.read_result(self._folder, self.kind))
        finally:
            self.close()

    def _failure(self) -> Exception:
        outcome = self._outcome or {}
        if outcome.get("event") == "error" and outcome.get("type") == "InputError":
            return InputError(outcome["message"])
        if outcome.get("event") == "error":
            message = f"{self.what} failed in the worker process: {outcome.get('type')}: {outcome.get('message')}"
        else:
            code = self._process.poll()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            message = f"the {self.what} worker process stopped unexpectedly ({how})"
        message += f"; {self._nothing_changed}"
        if os.environ.get(DEBUG_VARIABLE) == "1":
            message += "\n" + self.workerLog()
        return WorkerError(message)

    def workerLog(self) -> str:
        """What the worker printed besides its reports (a traceback of an unexpected error), while the folder exists."""
        try:
            return (self._folder / worker.STDERR_FILE).read_text(encoding="utf-8", errors="replace")[-4000:]
        except (OSError, TypeError):
            return ""

    _nothing_changed = "nothing was changed"


class BackgroundFusion(_BackgroundRun):
    """A fusion computed in a worker process; :meth:`finish` writes the nodes (:meth:`FusionLogic.commit`).

    :param core: the logic that prepared ``job``.
    :param job: a :class:`~.jobs.FusionJob` from :meth:`FusionLogic.prepare`.

    :meth:`finish` returns a :class:`~.jobs.MedFusionResult`, or raises :class:`FusionCancelled`
    when the run was cancelled.
    """

    what = "fusion"
    kind = "fusion"
    _nothing_changed = "the scene was not changed"

    def _commit(self, computation: Any) -> MedFusionResult:
        return self.core.commit(self.job, computation)

    def _cancelled(self) -> Cancelled:
        from MedFusionLib.fusion import FusionCancelled

        return FusionCancelled("fusion cancelled; the scene was not changed")


class BackgroundTraining(_BackgroundRun):
    """A training run in a worker process; :meth:`finish` writes the model file (:meth:`TrainingLogic.commitTraining`).

    :param core: the logic that prepared ``job``.
    :param job: a :class:`~.jobs.TrainingJob` from :meth:`TrainingLogic.prepareTraining`.

    :meth:`finish` returns a :class:`~.jobs.MedFusionTrainingResult`, or raises
    :class:`TrainingCancelled` when the run was cancelled (no file is written).
    """

    what = "training"
    kind = "training"
    _nothing_changed = "no model file was written"

    def _commit(self, computation: Any) -> MedFusionTrainingResult:
        return self.core.commitTraining(self.job, computation)

    def _cancelled(self) -> Cancelled:
        from MedFusionLib.engine.rbm import TrainingCancelled

        return TrainingCancelled("training cancelled; no model file was written")
