"""The papers' experiments, reproducible on any data set: one module per study, each usable alone.

=================  ==========================================================  =========================
module             what it measures                                            entry point
=================  ==========================================================  =========================
``compare``        every method on every group; mean ± std and ranks per pair  :func:`run_compare`
``tables``         the papers' Tables 1-3 filled with ours, beside their values :func:`run_tables`
``repeat``         R repeats per fusion (and on request per training): spread,  :func:`run_repeat`
                   bit-identical outputs / weights
``block_size``     block mode at n = 2^i (optionally a model trained per n)     :func:`run_block_size`
``perturbation``   Gaussian / salt-and-pepper inputs at graded levels           :func:`run_perturbation`
``convergence``    loss against iteration from a training history; flattening  :func:`run_convergence`
``report``         figures + one self-contained ``report.html`` of a run folder  :func:`build_report`
``suite``          all of the above into one folder and one report              :func:`run_all`
=================  ==========================================================  =========================

Every ``run_*`` writes into a **new** folder ``<out>/<study>-YYYYmmdd-HHMMSS`` (an existing
one is refused unless ``force=True``), records its configuration, seeds, versions and
machine in ``run.json``, writes tidy CSVs atomically, and (``report=True``) the figures
and ``report.html``. ``quick=True`` runs a smoke-sized version in seconds. Each study
also has a pure function (``compare_methods``, ``reproduce_tables``, ``repeat_fusions``,
``repeat_trainings``, ``block_size_study``, ``perturbation_study``, ``convergence_study``)
returning a :class:`StudyResult` without writing anything. Data sets:
:mod:`MedFusionLib.experiments.data`; the papers' transcribed tables:
:mod:`MedFusionLib.experiments.paper_tables`.

Example::

    from MedFusionLib.experiments import run_all
    results = run_all("results", quick=True)          # results/all-YYYYmmdd-HHMMSS/report.html
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use (PEP 562): the studies load PyTorch and SimpleITK, and ``medfusion
# --help`` (which builds the experiment parser from this package) must not wait for them.
_EXPORTS = {
    "RunFolder": "._run", "StudyResult": "._run", "read_csv": "._run",
    "block_size_study": ".block_size", "run_block_size": ".block_size",
    "compare_methods": ".compare", "run_compare": ".compare",
    "convergence_curve": ".convergence", "convergence_study": ".convergence",
    "flattening_iteration": ".convergence", "load_history": ".convergence", "run_convergence": ".convergence",
    "Case": ".data", "dataset_from_source": ".data", "phantom_dataset": ".data",
    "PAPER_TABLES": ".paper_tables",
    "PRIMARY": ".perturbation", "SECONDARY": ".perturbation", "disturb": ".perturbation",
    "perturbation_study": ".perturbation", "run_perturbation": ".perturbation",
    "repeat_fusions": ".repeat", "run_repeat": ".repeat",
    "repeat_trainings": ".repeat_training",
    "build_report": ".report",
    "STUDIES": ".suite", "run_all": ".suite",
    "reproduce_tables": ".tables", "run_tables": ".tables",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
