"""A study's run folder as a context: made before the work, removed on failure, reported after.

Kept apart from :mod:`._run` (the run folder and its files), which the report builder
imports: the report is built here, by the studies' runner, so nothing below the report
depends on it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator

from ._run import RunFolder, require_matplotlib
from .report import build_report


@contextlib.contextmanager
def open_run(out: str | os.PathLike, study: str, *, name: str | None = None, force: bool = False,
             run: RunFolder | None = None, report: bool = False) -> Iterator[RunFolder]:
    """The run folder a study writes into: ``run`` if given, else a new one.

    The folder is made *before* the study computes, so a refused folder fails at once
    rather than after minutes of work. If the study fails or is interrupted, a folder
    made here is removed again (nothing half-finished is left behind); a folder passed
    in as ``run`` belongs to the caller and is left alone. With ``report``, the report
    is built after the study's files are written.
    """
    if report:
        require_matplotlib()  # before the study runs, not after minutes of work
    created = run is None
    folder = RunFolder.create(out, study, name=name, force=force) if run is None else run
    try:
        yield folder
    except BaseException:
        if created:
            shutil.rmtree(folder.path, ignore_errors=True)
        raise
    if report:  # after the study is safely written: a failing figure must not cost the results
        build_report(folder.path)
