"""The papers' Tables 1-3 (:mod:`~MedFusionLib.experiments.paper_tables`) filled with our numbers.

For every modality pair of a table, ten held-out phantom groups (the papers' ten tests) are
fused by every method -- the shipped CNN (paper 002's counterpart), a DBM (paper 000's
counterpart: the shipped one, one trained here by :func:`dbm_training_spec`, or a model you give) and the
baselines -- and scored with :func:`~MedFusionLib.metrics.evaluate` on the metrics the
tables print. Each fusion runs ``time_repeats`` times, as the papers average repeated runs:
the outputs are checked to be bit-identical (so the metrics are those of one fusion) and
the time is the mean.

Tables (CSVs):

- ``paper_table1`` / ``paper_table2`` / ``paper_table3``: the paper's columns, one row per
  paper pair x our pair x method x test: ``<label>`` = ours on the paper's scale (see each
  column's ``scale``), ``<label> [paper]`` = the paper's printed value of that test (the
  paper's own method; the same printed values stand beside every method of ours).
  ``counterpart`` marks our model of the paper's family.
- ``tables_summary``: per table x pair x method x column: our mean, std, n; the paper's
  mean, std, min, max over its ten tests; whether our mean lies in the paper's range.
- ``tables_scores``: every group x method on our own 0-255 scale (all table metrics,
  time, repeats, bit-identical flag, output hash) -- what the table rows are made from.

Example::

    from MedFusionLib.experiments import tables
    result = tables.run_tables("results", quick=True)   # results/tables-YYYYmmdd-HHMMSS/
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..baselines import BASELINES
from ..engine.model import FusionModel
from ..errors import InputError
from ..fusion import Method, load_method
from ..metrics import HIGHER, LOWER
from ..validation import check_int
from ..progress import ProgressCallback
from ._common import (
    TIME_COLUMN,
    direction,
    fuse_case,
    output_digest,
    resolve_methods,
    score,
    seed_everything,
    spread,
    warm_up,
)
from ._run import Row, RunFolder, StudyResult, no_progress, resolved_device
from ._study import open_run
from .data import PAPER_PAIRS, Case, check_cases, describe, phantom_dataset
from .paper_tables import GENERAL_DIFFERENCES, PAPER_SUFFIX, PAPER_TABLES, TIME, PaperTable, paper_metrics

STUDY = "tables"
#: ``dbm=TRAIN_DBM``: train a DBM for paper 000's table in the study (:func:`dbm_training_spec`).
TRAIN_DBM = "train"
#: Suffix of the columns holding the paper's printed values.
#: The papers' ten tests per pair at 256 x 256, time averaged over 5 fusions; quick: 2 small groups, 1 fusion.
FULL = {"count_per_pair": 10, "pairs": PAPER_PAIRS, "shape": (256, 256), "time_repeats": 5}
QUICK = {"count_per_pair": 2, "pairs": PAPER_PAIRS, "shape": (64, 64), "time_repeats": 1}


def default_cases(quick: bool = False, data_seed: int = 0, shape: tuple[int, int] | None = None) -> list[Case]:
    """Held-out phantoms of the papers' two pairs (CT+MRI_T1, MRI_T1+SPECT): 10 each (quick: 2, 64 x 64)."""
    spec = QUICK if quick else FULL
    return phantom_dataset(spec["count_per_pair"], spec["pairs"], shape or spec["shape"], data_seed)


def dbm_training_spec(quick: bool = False, seed: int = 0, device: str | None = "cpu") -> dict[str, Any]:
    """The DBM trained for paper 000's table when no DBM model is given.

    The ``dbm`` recipe's network (8 x 8 blocks, RBM layers 128-64, CD-1 pre-training,
    supervised fine-tuning of per-block pyramid weights) on the papers' two pairs, shortened to
    1,500 iterations (quick: seconds). Training phantoms use training seeds only.
    ``medfusion train --recipe dbm`` makes the shipped model, the study's default.

    :param quick: the seconds-long variant (a smoke model, not a usable one).
    :param seed: training seed.
    :param device: training device.
    """
    from ..recipes import recipe

    spec = recipe("dbm")
    spec["name"] = "tables study DBM" + (" (quick)" if quick else "")
    spec["data"] = {"count_per_pair": 1 if quick else 3, "shape": (64, 64) if quick else (128, 128),
                    "pairs": PAPER_PAIRS, "seed": 0}
    spec["training"] = replace(spec["training"], iterations=20 if quick else 1500,
                               validation_every=10 if quick else 100, patience=None, seed=seed, device=device,
                               pretrain_epochs=1 if quick else 3, pretrain_blocks=500 if quick else 10000)
    spec["modalities"] = ["CT or MRI", "MRI or SPECT"]
    return spec


def _with_dbm(methods: Iterable[Method] | None, dbm: Method | None, quick: bool, seed: int,
              progress: ProgressCallback) -> tuple[list[Method], dict[str, Any]]:
    """The methods plus a DBM (given, or trained here unless one is among the methods)."""
    chosen = list(("default", *BASELINES) if methods is None else methods)
    if dbm is None:
        return chosen, {"source": "none"}
    if any(isinstance(m, FusionModel) and m.family == "dbm" for m in (load_method(x) for x in chosen)):
        return chosen, {"source": "among the methods"}
    if isinstance(dbm, str) and dbm == TRAIN_DBM:
        from ..recipes import train_recipe, training_summary

        spec = dbm_training_spec(quick, seed)
        model, history = train_recipe(spec, progress=lambda f, m: progress(0.5 * f, f"training the DBM: {m}"))
        record = {"source": "trained here (tables.dbm_training_spec)", "iterations": spec["training"].iterations,
                  "data": {k: list(v) if isinstance(v, tuple) else v for k, v in spec["data"].items()},
                  "seed": seed, **training_summary(history)}
        return [chosen[0], model, *chosen[1:]] if chosen else [model], record
    model = check_dbm(dbm)
    return [chosen[0], model, *chosen[1:]] if chosen else [model], {"source": str(dbm)}


def check_dbm(dbm: Method) -> FusionModel:
    """The DBM model ``dbm`` names (a file or a model), loaded; anything else is refused.

    :raises InputError: not loadable, or not of family ``"dbm"``.
    """
    model = load_method(dbm)
    if not (isinstance(model, FusionModel) and model.family == "dbm"):
        raise InputError(f"dbm: {dbm!r} is not a DBM model (give 'dbm', a .pt file of family 'dbm', 'train' or None)")
    return model


def modality_classes(pair: str) -> tuple[str, ...] | None:
    """The modality classes of a pair label, order-free: ``"MRI_T2+SPECT"`` -> ``("MRI", "SPECT")``.

    MRI of any weighting counts as MRI (the papers do not say which); None for a label
    without known modalities (``"all"``), so such groups never fill a paper's rows.
    """
    classes = []
    for modality in pair.split("+"):
        name = modality.strip().upper()
        if name.startswith(("MR", "T1", "T2", "FLAIR")):
            classes.append("MRI")
        elif name in ("CT", "SPECT", "PET"):
            classes.append(name)
        else:
            return None
    return tuple(sorted(classes)) if len(classes) >= 2 else None


def block_cases(block_pair: str, scores: Sequence[Row]) -> list[str]:
    """Our pair labels (in data order) whose modalities are the block pair's: the exact label first,
    else any label of the same modality classes (your data labelled ``CT+MRI`` fills ``CT+MRI_T1``)."""
    labels = list(dict.fromkeys(r["pair"] for r in scores))
    if block_pair in labels:
        return [block_pair]
    wanted = modality_classes(block_pair)
    return [label for label in labels if wanted is not None and modality_classes(label) == wanted]


def applicable(cases: Sequence[Case], tables: Iterable[str] | None = None) -> str | None:
    """Why these cases cannot fill the tables (None: they can): no target, or no group of any table's pairs."""
    chosen = [PAPER_TABLES[k] for k in (PAPER_TABLES if tables is None else tables) if k in PAPER_TABLES]
    if not any(c.target is not None for c in cases):
        return "no group has a target image (the tables' RMSE, PSNR, SSIM, ... need one)"
    rows = [{"pair": c.pair} for c in cases]
    if not any(block_cases(p, rows) for t in chosen for b in t.blocks for p in b.pairs):
        wanted = sorted({p for t in chosen for b in t.blocks for p in b.pairs})
        return (f"no group of the papers' modality pairs ({', '.join(wanted)}; any MRI weighting); "
                f"the data's pairs are {sorted({c.pair for c in cases})}")
    return None


def counterpart(table: PaperTable, methods: Mapping[str, Any]) -> str | None:
    """The label of our method standing in for the paper's: our first model of the table's
    family, else our first learned model, else None (baselines only).

    :param table: the paper's table.
    :param methods: label -> loaded method, in order.
    """
    models = [(label, m) for label, m in methods.items() if isinstance(m, FusionModel)]
    same = [label for label, m in models if m.family == table.family]
    return same[0] if same else (models[0][0] if models else None)


def score_cases(cases: Sequence[Case], methods: Iterable[Method], *, metrics: Sequence[str],
                time_repeats: int = 5, device: str | None = None,
                progress: ProgressCallback = no_progress) -> tuple[list[Row], dict[str, Any]]:
    """Fuse every case with every method ``time_repeats`` times; score the first output.

    :returns: ``(tables_scores rows, label -> loaded method)``.
    """
    time_repeats = check_int(time_repeats, "time_repeats")
    chosen = resolve_methods(methods)
    rows: list[Row] = []
    total = len(cases) * len(chosen)
    for m, (label, method) in enumerate(chosen):
        warm_up(method, cases[0], device)
        for c, case in enumerate(cases):
            progress((m * len(cases) + c) / total, f"{label}: {case.name}")
            results = [fuse_case(case, method, device=device) for _ in range(time_repeats)]
            digests = {output_digest(r.image) for r in results}
            family = method.family if isinstance(method, FusionModel) else "baseline"
            rows.append({"group": case.name, "pair": case.pair, "method": label, "family": family,
                         **score(results[0].image, case.inputs, case.target, metrics),
                         TIME_COLUMN: float(np.mean([r.seconds for r in results])),
                         "time_repeats": time_repeats, "bit_identical": len(digests) == 1,
                         "output_sha256": output_digest(results[0].image)})
    return rows, dict(chosen)


def fill_table(table: PaperTable, scores: Sequence[Row], counterpart_label: str | None) -> list[Row]:
    """The paper's columns filled with ours, the printed value beside each (one row per test).

    Test k of a pair is our k-th group of that pair (in data-set order); tests beyond the
    paper's ten have no printed value (None). A block's pairs are matched by
    :func:`block_cases` (exact label, else the same modality classes).

    :param table: the paper's table.
    :param scores: ``tables_scores`` rows (our 0-255 scale, time in seconds).
    :param counterpart_label: our method standing in for the paper's.
    """
    methods = list(dict.fromkeys(r["method"] for r in scores))
    rows: list[Row] = []
    for block in table.blocks:
        pairs = list(dict.fromkeys(label for wanted in block.pairs for label in block_cases(wanted, scores)))
        for pair in pairs:
            for method in methods:
                mine = [r for r in scores if r["pair"] == pair and r["method"] == method]
                for k, row in enumerate(mine):
                    printed = block.values[k] if k < len(block.values) else (None,) * len(table.columns)
                    out: Row = {"table": table.key, "paper_pair": block.paper_pair, "pair": pair,
                                "method": method, "counterpart": method == counterpart_label, "test": k + 1,
                                "group": row["group"]}
                    for column, value in zip(table.columns, printed):
                        ours = row.get(TIME_COLUMN if column.metric == TIME else column.metric)
                        out[column.label] = None if ours is None else ours * column.scale
                        out[column.label + PAPER_SUFFIX] = value
                    rows.append(out)
    return rows


def summarise_table(table: PaperTable, rows: Sequence[Row]) -> list[Row]:
    """Per paper pair x our pair x method x column: our mean / std / n beside the paper's
    mean / std / min / max over its tests, and whether our mean lies in the paper's range."""
    summary: list[Row] = []
    keys = list(dict.fromkeys((r["paper_pair"], r["pair"], r["method"], r["counterpart"]) for r in rows))
    for paper_pair, pair, method, is_counterpart in keys:
        mine = [r for r in rows if (r["paper_pair"], r["pair"], r["method"]) == (paper_pair, pair, method)]
        block = next(b for b in table.blocks if b.paper_pair == paper_pair)
        for j, column in enumerate(table.columns):
            ours = spread([r[column.label] for r in mine])
            theirs = spread([v[j] for v in block.values])
            better = direction(TIME_COLUMN if column.metric == TIME else column.metric)
            summary.append({
                "table": table.key, "paper_pair": paper_pair, "pair": pair, "method": method,
                "counterpart": is_counterpart, "column": column.label, "metric": column.metric,
                "scale": column.scale, "direction": {HIGHER: "higher", LOWER: "lower"}.get(better or "", "none"),
                "mean": ours["mean"], "std": ours["std"], "n": ours["n"], "paper_mean": theirs["mean"],
                "paper_std": theirs["std"],
                "paper_min": theirs["min"], "paper_max": theirs["max"], "paper_n": theirs["n"],
                "within_paper_range": bool(theirs["min"] <= ours["mean"] <= theirs["max"])})
    return summary


def table_config(table: PaperTable, counterpart_label: str | None) -> dict[str, Any]:
    """What the report needs to cite and explain a table, stored in ``run.json``."""
    return {"paper": table.paper, "number": table.number, "title": table.title, "reference": table.reference,
            "source": table.source, "method": table.method, "family": table.family,
            "counterpart": counterpart_label,
            "columns": [{"label": c.label, "metric": c.metric, "scale": c.scale, "note": c.note}
                        for c in table.columns],
            "blocks": [{"paper_pair": b.paper_pair, "pairs": list(b.pairs)} for b in table.blocks],
            "remarks": list(table.remarks)}


def reproduce_tables(
    cases: Sequence[Case],
    methods: Iterable[Method] | None = None,
    *,
    tables: Iterable[str] | None = None,
    dbm: Method | None = "dbm",
    quick_training: bool = False,
    time_repeats: int = 5,
    device: str | None = None,
    seed: int = 0,
    progress: ProgressCallback = no_progress,
) -> StudyResult:
    """Fill the papers' tables with our numbers (no files written).

    :param cases: the data set; its pair labels must include the tables' pairs
        (:data:`~MedFusionLib.experiments.data.PAPER_PAIRS`), else those rows stay empty.
    :param methods: default the shipped model and every baseline.
    :param tables: keys of :data:`PAPER_TABLES` (default all).
    :param dbm: a DBM model (file, shipped name or object) for paper 000's table, by default the
        shipped ``"dbm"``; :data:`TRAIN_DBM` trains one (:func:`dbm_training_spec`); None leaves it
        out (the CNN then stands in).
    :param quick_training: the seconds-long DBM training.
    :param time_repeats: fusions per group and method (the time is their mean).
    :param device: fusion device for learned models.
    :param seed: seeds torch/numpy and the DBM training.
    :param progress: ``progress(fraction, message)``.
    """
    cases = check_cases(cases)
    keys = list(PAPER_TABLES if tables is None else dict.fromkeys(tables))
    unknown = [k for k in keys if k not in PAPER_TABLES]
    if unknown or not keys:
        raise InputError(f"tables: unknown {unknown}; choose from {', '.join(PAPER_TABLES)}")
    chosen_tables = {k: PAPER_TABLES[k] for k in keys}
    reason = applicable(cases, keys)  # before any training: fail fast
    if reason is not None:
        raise InputError(f"tables: {reason}")
    seed_everything(seed)
    needs_dbm = any(t.family == "dbm" for t in chosen_tables.values())
    chosen, dbm_record = _with_dbm(methods, dbm if needs_dbm else None, quick_training, seed, progress)
    start = 0.5 if dbm_record.get("iterations") else 0.0  # the training took the first half of the bar
    metrics = paper_metrics(chosen_tables)
    scores, loaded = score_cases(cases, chosen, metrics=metrics, time_repeats=time_repeats, device=device,
                                 progress=lambda f, m: progress(start + (1 - start) * f, m))
    result_tables: dict[str, list[Row]] = {}
    summary: list[Row] = []
    configs: dict[str, Any] = {}
    for key, table in chosen_tables.items():
        label = counterpart(table, loaded)
        rows = fill_table(table, scores, label)
        result_tables[f"paper_{key}"] = rows
        summary.extend(summarise_table(table, rows))
        configs[key] = table_config(table, label)
    result_tables["tables_summary"] = summary
    result_tables["tables_scores"] = scores
    progress(1.0, "done")
    config = {"tables": configs, "differences": list(GENERAL_DIFFERENCES), "methods": list(loaded),
              "families": {label: (m.family if isinstance(m, FusionModel) else "baseline")
                           for label, m in loaded.items()},
              "dbm": dbm_record, "metrics": metrics, "time_repeats": time_repeats, "seed": seed,
              "device": resolved_device(device), "data": describe(cases)}
    return StudyResult(STUDY, result_tables, config)


def run_tables(
    out: str | os.PathLike = "experiments",
    cases: Sequence[Case] | None = None,
    *,
    methods: Iterable[Method] | None = None,
    tables: Iterable[str] | None = None,
    dbm: Method | None = "dbm",
    time_repeats: int | None = None,
    quick: bool = False,
    data_seed: int = 0,
    device: str | None = None,
    seed: int = 0,
    force: bool = False,
    name: str | None = None,
    report: bool = True,
    run: RunFolder | None = None,
    progress: ProgressCallback = no_progress,
) -> StudyResult:
    """Reproduce the papers' tables into a new run folder ``<out>/tables-YYYYmmdd-HHMMSS``.

    :param dbm: as in :func:`reproduce_tables` (quick mode trains the seconds-long DBM).
    :param time_repeats: fusions per group and method (default 5; quick 1).
    Other parameters as in :func:`MedFusionLib.experiments.compare.run_compare`.
    """
    spec = QUICK if quick else FULL
    with open_run(out, STUDY, name=name, force=force, run=run, report=report) as folder:
        data = default_cases(quick, data_seed) if cases is None else cases
        result = reproduce_tables(data, methods, tables=tables, dbm=dbm, quick_training=quick,
                                  time_repeats=time_repeats or spec["time_repeats"], device=device, seed=seed,
                                  progress=progress)
        result.config.update(quick=quick, data_seed=data_seed if cases is None else None)
        return folder.write_study(result)
