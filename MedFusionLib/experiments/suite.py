"""Every study into one run folder with one report: ``medfusion experiment all``.

Each study uses its own default data set (the comparison ten phantoms per pair, the
papers' tables ten per pair of the papers' two pairs, the block-size and perturbation
studies two per pair, as documented in each module) unless ``cases`` is given, in which
case all studies use it (the tables study is skipped, with the reason in ``run.json``,
when those cases have no target or none of the papers' modality pairs).
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping, Sequence

from ..fusion import Method
from ..progress import ProgressCallback
from ._run import RunFolder, StudyResult, no_progress
from ._study import open_run
from .data import Case

STUDY = "all"
#: The studies in the order they run.
STUDIES: tuple[str, ...] = ("compare", "tables", "repeat", "block_size", "perturbation", "convergence")


def run_all(
    out: str | os.PathLike = "experiments",
    cases: Sequence[Case] | None = None,
    *,
    studies: Iterable[str] = STUDIES,
    methods: Iterable[Method] | None = None,
    quick: bool = False,
    data_seed: int = 0,
    device: str | None = None,
    seed: int = 0,
    repeats: int | None = None,
    training_repeats: int | None = None,
    training_recipe: str = "smoke",
    training_seeds: Iterable[str] = ("same", "different"),
    dbm: Method | None = "dbm",
    exponents: Iterable[int] | None = None,
    block_model: Method = "default",
    train: bool = False,
    levels: Mapping[str, Iterable[float]] | None = None,
    draws: int | None = None,
    history: str | os.PathLike | None = None,
    window: int = 100,
    tolerance: float = 0.05,
    force: bool = False,
    name: str | None = None,
    report: bool = True,
    progress: ProgressCallback = no_progress,
) -> dict[str, StudyResult]:
    """Run the chosen studies into ``<out>/all-YYYYmmdd-HHMMSS`` and build one report.

    :param studies: any of :data:`STUDIES`.
    :param methods: for compare, tables, repeat and perturbation (default: their defaults).
    :param repeats: repeat study: R (default 50; quick 2).
    :param training_repeats: repeat study: on request, train this many models per seed mode
        (None: no repeated training).
    :param training_recipe: repeat study: the recipe of the repeated trainings.
    :param training_seeds: repeat study: ``"same"`` and/or ``"different"``.
    :param dbm: tables study: a DBM model for paper 000's table (default: the shipped ``"dbm"``),
        ``"train"`` (train one) or None.
    :param exponents: block-size study: the i values (default 1..4; quick 1..2).
    :param block_model: block-size study: the learned model fused in block mode.
    :param train: block-size study: also train a small model per n.
    :param levels: perturbation study: kind -> levels.
    :param draws: perturbation study: noise draws per level.
    :param history: convergence study: the training history (default: the shipped model's).
    :param window: convergence study: moving-average window.
    :param tolerance: convergence study: flattening band.
    Other parameters as in :func:`MedFusionLib.experiments.compare.run_compare`.
    :returns: study name -> result.
    """
    from . import block_size, compare, convergence, perturbation, repeat, tables

    chosen = list(dict.fromkeys(studies))
    unknown = [s for s in chosen if s not in STUDIES]
    if unknown or not chosen:
        from ..errors import InputError

        raise InputError(f"studies: unknown {unknown}; choose from {', '.join(STUDIES)}")
    if "tables" in chosen and dbm is not None and not (isinstance(dbm, str) and dbm == tables.TRAIN_DBM):
        tables.check_dbm(dbm)  # a wrong --dbm must fail now, not after the comparison has run
    results: dict[str, StudyResult] = {}
    with open_run(out, STUDY, name=name, force=force, report=report) as folder:
        for index, study in enumerate(chosen):
            def part(fraction: float, message: str, _index: int = index) -> None:
                progress((_index + fraction) / len(chosen), f"{chosen[_index]}: {message}")

            common = {"quick": quick, "seed": seed, "run": folder, "report": False, "progress": part}
            data = {"cases": cases, "data_seed": data_seed, "device": device}
            if study == "compare":
                results[study] = compare.run_compare(folder.path, methods=methods, **data, **common)
            elif study == "tables":
                reason = None if cases is None else tables.applicable(cases)
                if reason is not None:  # your data cannot fill the papers' tables: say so, run the rest
                    part(1.0, f"skipped: {reason}")
                    results[study] = folder.write_study(StudyResult(study, {}, {"skipped": reason}))
                    continue
                results[study] = tables.run_tables(folder.path, methods=methods, dbm=dbm, **data, **common)
            elif study == "repeat":
                results[study] = repeat.run_repeat(folder.path, methods=methods, repeats=repeats,
                                                   training_repeats=training_repeats, training_recipe=training_recipe,
                                                   training_seeds=training_seeds, **data, **common)
            elif study == "block_size":
                results[study] = block_size.run_block_size(folder.path, exponents=exponents, model=block_model,
                                                           train=train, **data, **common)
            elif study == "perturbation":
                extra = {} if methods is None else {"methods": methods}
                results[study] = perturbation.run_perturbation(folder.path, levels=levels, draws=draws, **extra,
                                                               **data, **common)
            else:
                results[study] = convergence.run_convergence(folder.path, history, window=window,
                                                             tolerance=tolerance, **common)
        progress(1.0, "all studies done")
    return results


__all__ = ["STUDIES", "run_all", "RunFolder"]
