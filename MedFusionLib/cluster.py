"""Running many cases on a Dask cluster: :func:`run_tasks`, the engine of ``medfusion batch --scheduler/--workers``.

``run_batch(..., scheduler="tcp://host:8786")`` (``medfusion batch --scheduler``) sends its cases to a
running Dask cluster -- a SLURM/PBS cluster started with ``dask-jobqueue``, a Kubernetes one, or
``dask scheduler`` + ``dask worker`` by hand; ``workers=N`` (``--workers N``) starts a
:class:`distributed.LocalCluster` of N worker processes on this machine first.

Each case is one Dask task that runs the in-process batch's own per-case code on a worker; the
arguments are paths, not arrays, so inputs and outputs must be on a file system the workers share.
This process alone writes the report and calls the progress callback, as results arrive. The
model goes to each worker once (:func:`run_tasks`'s ``shared``). A worker that dies mid-case
(killed, out of memory) has its case retried on another worker by Dask; a case writes its output
atomically, so the output is written once, by the retry. A cancel (or Ctrl-C) cancels the tasks
not yet finished.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Iterator, Optional, Sequence

from .errors import Cancelled, InputError, first_line
from .progress import CancelFlag
from .validation import check_int

#: How often the client looks at the cancel flag while waiting for results.
POLL_S = 0.1

__all__ = ["DaskRunCancelled", "local_cluster", "run_tasks"]


class DaskRunCancelled(Cancelled):
    """The cancel flag was set: the pending tasks were cancelled."""


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise InputError(
            "a Dask cluster needs the 'distributed' package: pip install 'medfusion[cluster]' "
            "(or pip install 'dask[distributed]')"
        ) from None
    return distributed


@contextlib.contextmanager
def local_cluster(workers: int, host: str = "127.0.0.1") -> Iterator[str]:
    """A :class:`distributed.LocalCluster` of ``workers`` single-threaded worker processes, for the block.

    Each worker runs PyTorch on one thread (``OMP_NUM_THREADS=1``), so N workers use N cores
    without fighting over them. Nothing listens beyond ``host``: the scheduler, the workers and
    Dask's dashboard (on a free port, so two clusters never collide) all bind to it.

    :param workers: the number of worker processes, >= 1.
    :param host: the interface the scheduler and workers listen on.
    :returns: (yields) the scheduler's address.
    """
    distributed = _distributed()
    workers = check_int(workers, "workers", minimum=1)
    # Dask's nanny sets its workers' variables (OMP_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_, ...) in
    # *this* process's environment before spawning them, and leaves them there: every process started
    # later (Slicer's fusion worker, a training run) would then run PyTorch on one thread.
    saved = dict(os.environ)
    try:
        with distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host=host, dashboard_address=f"{host}:0",
            env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        ) as cluster:
            _restore_environment(saved)
            yield cluster.scheduler_address
    finally:
        _restore_environment(saved)


def _restore_environment(saved: dict[str, str]) -> None:
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@contextlib.contextmanager
def _client(address: str) -> Iterator[Any]:
    distributed = _distributed()
    try:
        client = distributed.Client(address, timeout="20s", set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise InputError(f"scheduler {address}: cannot connect ({first_line(error)})") from None
    try:
        yield client
    finally:
        client.close()


def _call(function: Callable[..., Any], shared: Any, arguments: tuple) -> Any:
    """A task on a worker: PyTorch on the worker's threads, then ``function(shared, *arguments)``."""
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return function(shared, *arguments)


def run_tasks(
    function: Callable[..., Any],
    arguments: Sequence[tuple],
    on_result: Callable[[int, Any, Optional[BaseException]], None],
    *,
    shared: Any = None,
    scheduler: Optional[str] = None,
    workers: Optional[int] = None,
    cancel: Optional[CancelFlag] = None,
) -> None:
    """``function(shared, *arguments[i])`` for every i, as tasks of a Dask cluster; results as they come.

    :param function: a module-level function (workers import it by name).
    :param arguments: one tuple of picklable arguments per task (paths, not arrays).
    :param on_result: ``on_result(i, result, None)`` when task i returned, ``on_result(i, None, error)``
        when it raised or could not run (its workers kept dying); called in this process.
    :param shared: sent to every worker once (e.g. a model), given to every call.
    :param scheduler: address of a running scheduler (``tcp://host:8786``).
    :param workers: start a :func:`local_cluster` of this many worker processes instead.
    :param cancel: ``cancel.is_set()`` is polled; the pending tasks are cancelled and
        :class:`DaskRunCancelled` raised. Ctrl-C (or an error in ``on_result``) cancels them too.
    """
    if (scheduler is None) == (workers is None):
        raise InputError("give either scheduler (the address of a running Dask scheduler) or workers, not both")
    if scheduler is not None:
        with _client(scheduler) as client:
            return _run(client, function, arguments, on_result, shared, cancel)
    with local_cluster(workers) as address, _client(address) as client:
        return _run(client, function, arguments, on_result, shared, cancel)


def _run(client: Any, function: Callable[..., Any], arguments: Sequence[tuple],
         on_result: Callable[[int, Any, Optional[BaseException]], None], shared: Any,
         cancel: Optional[CancelFlag]) -> None:
    distributed = _distributed()
    if shared is not None:
        shared = client.scatter(shared, broadcast=True, hash=False)  # once per worker, not once per task
    run_id = f"medfusion-{os.getpid()}-{time.time_ns()}"
    futures = {client.submit(_call, function, shared, tuple(args), key=f"{run_id}-{index}", pure=False): index
               for index, args in enumerate(arguments)}
    pending = set(futures)
    waiting = distributed.as_completed(list(futures), loop=client.loop)
    try:
        while pending:
            if cancel is not None and cancel.is_set():
                raise DaskRunCancelled(f"cancelled with {len(pending)} of {len(futures)} task(s) not finished")
            finished = waiting.next_batch(block=False)
            if not finished:
                time.sleep(POLL_S)
                continue
            for future in finished:
                pending.discard(future)
                if future.status == "finished":
                    on_result(futures[future], future.result(), None)
                else:
                    on_result(futures[future], None, future.exception())
    except BaseException:
        if pending:
            with contextlib.suppress(Exception):
                client.cancel(list(pending), force=True)
        raise
