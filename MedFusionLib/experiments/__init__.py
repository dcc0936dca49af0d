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

from ._run import RunFolder, StudyResult, read_csv
from .block_size import block_size_study, run_block_size
from .compare import compare_methods, run_compare
from .convergence import convergence_curve, convergence_study, flattening_iteration, load_history, run_convergence
from .data import Case, dataset_from_source, phantom_dataset
from .paper_tables import PAPER_TABLES
from .perturbation import PRIMARY, SECONDARY, disturb, perturbation_study, run_perturbation
from .repeat import repeat_fusions, run_repeat
from .repeat_training import repeat_trainings
from .report import build_report
from .suite import STUDIES, run_all
from .tables import reproduce_tables, run_tables

__all__ = [
    "PAPER_TABLES", "PRIMARY", "SECONDARY", "STUDIES", "Case", "RunFolder", "StudyResult", "block_size_study",
    "build_report", "compare_methods", "convergence_curve", "convergence_study", "dataset_from_source", "disturb",
    "flattening_iteration", "load_history", "perturbation_study", "phantom_dataset", "read_csv", "repeat_fusions",
    "repeat_trainings", "reproduce_tables", "run_all", "run_block_size", "run_compare", "run_convergence",
    "run_perturbation", "run_repeat", "run_tables",
]
