"""Block-size study (paper 002, "Correlation between grid block size and method validity").

For each i in a range (default 1..4, the papers' range) with n = 2^i:

- the learned model (default: the shipped one) fuses each group in **block mode**
  (``fuse(..., block_size=n)``: overlapping n x n blocks, stride n/2, overlap-averaged),
  so each block sees only its own n x n context -- which is what the papers vary;
- the shipped DBM (``dbm=``; paper 000's system) fuses each group at the one n it
  was trained for (8: the rows of i = 3), so both families' block-grid index stands
  side by side there;
- optionally (``train=True``) a small model of each family (``train_families``) is
  trained at block size n (:func:`training_spec`: the recipe's network on a few
  training phantoms, training seeds only, never the evaluation set) and fuses at n too:
  the CNN in block mode, the DBM with its blocks of n. That gives both families'
  metrics and block-grid index for every n.

Metrics: the papers' RMSE, EN, MEAN, GRAD, REL and SSIM against the target (the
target-based ones only when the group has a target), plus Q^AB/F, and the fusion time.

Tables: ``block_size_rows`` (group x method x i) and ``block_size_summary``
(per pair and over ``"all"`` groups: mean, std, n of each quantity against i).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Iterable, Sequence

from ..data.targets import MODALITY_PAIRS
from ..engine.blocks import validate_block_size
from ..errors import InputError
from ..fusion import Method
from ..metrics import block_grid_index
from ..progress import ProgressCallback
from ._common import GRID_COLUMN, TIME_COLUMN, fuse_case, metric_columns, method_label, score, seed_everything, spread, \
    warm_up
from ._run import Row, RunFolder, StudyResult, no_progress, resolved_device
from ._study import open_run
from .data import PAPER_PAIRS, Case, check_cases, describe, phantom_dataset

STUDY = "block_size"
#: The papers' block-size metrics, plus Q^AB/F (the project's headline quality metric).
BLOCK_METRICS: tuple[str, ...] = ("RMSE", "EN", "MEAN", "GRAD", "REL", "SSIM", "QABF")
#: Defaults. Paper 002 uses four pairs of images here; we take 2 groups of every pair.
FULL = {"count_per_pair": 2, "pairs": MODALITY_PAIRS, "shape": (256, 256), "exponents": (1, 2, 3, 4)}
QUICK = {"count_per_pair": 2, "pairs": PAPER_PAIRS, "shape": (64, 64), "exponents": (1, 2)}
ALL_PAIRS = "all"


def default_cases(quick: bool = False, data_seed: int = 0, shape: tuple[int, int] | None = None) -> list[Case]:
    spec = QUICK if quick else FULL
    return phantom_dataset(spec["count_per_pair"], spec["pairs"], shape or spec["shape"], data_seed)


#: The model families trained per n with ``train=True``, and the label of their rows.
TRAINED_LABELS = {"cnn": "trained at n", "dbm": "DBM trained at n"}


def training_spec(block_size: int, quick: bool = False, seed: int = 0, device: str | None = "cpu",
                  family: str = "cnn") -> dict[str, Any]:
    """The recipe of the small model trained per block size (``train=True``).

    The shipped model's network and loss (``family="dbm"``: the shipped DBM's, with blocks
    of n); fewer, smaller training phantoms and iterations so four models train in minutes
    (quick: seconds). Data seeds start at 0 (training range), the evaluation set never enters.

    :param block_size: n, the training block size.
    :param quick: the seconds-long variant.
    :param seed: training seed.
    :param device: training device (the CPU by default: reproducible weights).
    :param family: ``"cnn"`` or ``"dbm"``.
    """
    from ..recipes import recipe

    if family not in TRAINED_LABELS:
        raise InputError(f"family: expected one of {sorted(TRAINED_LABELS)}, got {family!r}")
    spec = recipe("default" if family == "cnn" else "dbm")
    spec["name"] = f"block-size study n={block_size}" + ("" if family == "cnn" else " (DBM)")
    spec["block_size"] = block_size
    spec["data"] = {"count_per_pair": 1 if quick else 3, "shape": (64, 64) if quick else (128, 128),
                    "pairs": PAPER_PAIRS if quick else MODALITY_PAIRS, "seed": 0}
    # "Trained at n" means every step at n: no small-block steps (the default recipe has them). The DBM
    # trains on patches of several blocks (as large as the images allow, up to 64 px).
    spec["training"] = replace(spec["training"], iterations=30 if quick else 1500,
                               validation_every=10 if quick else 100, patience=None, seed=seed, device=device,
                               small_block_fraction=0.0, patch_size=None,
                               pretrain_epochs=min(spec["training"].pretrain_epochs, 1 if quick else 3),
                               pretrain_blocks=min(spec["training"].pretrain_blocks, 500 if quick else 10000))
    return spec


def block_size_study(
    cases: Sequence[Case],
    exponents: Iterable[int] = (1, 2, 3, 4),
    *,
    model: Method = "default",
    dbm: Method | None = "dbm",
    train: bool = False,
    train_families: Sequence[str] = ("cnn", "dbm"),
    quick_training: bool = False,
    device: str | None = None,
    seed: int = 0,
    metrics: Sequence[str] = BLOCK_METRICS,
    progress: ProgressCallback = no_progress,
) -> StudyResult:
    """Fuse every case at n = 2^i for each exponent i (no files written).

    :param cases: the data set (targets enable RMSE, REL, SSIM).
    :param exponents: the i values; every n = 2^i must fit the images.
    :param model: the learned model fused in block mode (default: the shipped model). A DBM
        fuses only at the n it was trained for.
    :param dbm: a DBM fused at its own n beside it (default: the shipped one; None: none).
    :param train: also train a small model per n and family (:func:`training_spec`) and fuse with it.
    :param train_families: the families trained per n (``"cnn"``, ``"dbm"``).
    :param quick_training: the seconds-long training variant.
    :param device: fusion device (None: CUDA when present); training runs on the CPU unless this is set.
    :param seed: seeds torch/numpy and the per-n training.
    :param metrics: metric keys to compute.
    :param progress: ``progress(fraction, message)``.
    """
    from ..fusion import load_method

    cases = check_cases(cases)
    exponents = [int(i) for i in exponents]
    if not exponents:
        raise InputError("exponents: give at least one i")
    side = min(min(x.shape) for c in cases for x in c.inputs)
    for i in exponents:
        validate_block_size(2**i, (side, side))  # fail before any work when a block cannot fit
    families = list(dict.fromkeys(train_families)) if train else []
    for family in families:
        if family not in TRAINED_LABELS:
            raise InputError(f"train_families: expected some of {sorted(TRAINED_LABELS)}, got {family!r}")
    skipped: dict[str, str] = {}
    counts = sorted({len(c.inputs) for c in cases})
    if "dbm" in families and counts != [2]:  # the per-n DBM learns from 2-input phantoms and fuses 2 inputs only
        families.remove("dbm")
        skipped["dbm"] = f"the groups have {', '.join(map(str, counts))} inputs; a DBM fuses the 2 it was trained with"
    seed_everything(seed)
    base = load_method(model)
    base_label = f"{method_label(model)} (block mode)"
    fixed = [(base_label, base)]
    extra = None if dbm is None else load_method(dbm)
    # (beside the model, where it fuses these groups: a DBM takes the number of inputs it was trained for)
    if extra is not None and extra is not base and all(extra.accepts(len(c.inputs)) for c in cases):
        fixed.append((f"{method_label(dbm)} (its own n)", extra))
    if getattr(base, "family", None) == "dbm" and base.block_size not in [2**i for i in exponents]:
        raise InputError(f"model: this DBM fuses with {base.block_size}x{base.block_size} blocks only; "
                         f"include i = {base.block_size.bit_length() - 1} in the exponents")
    rows: list[Row] = []
    trained: dict[str, dict[int, dict[str, Any]]] = {family: {} for family in families}
    steps = len(exponents) * (1 + len(families))
    for step, i in enumerate(exponents):
        n = 2**i
        # A DBM fuses with blocks of the size it was trained on, and only with those.
        methods = [(label, m) for label, m in fixed if getattr(m, "family", None) != "dbm" or m.block_size == n]
        for family in families:
            progress(step / steps, f"training a {family} model at n = {n}")
            methods.append((TRAINED_LABELS[family], _train_at(n, quick_training, seed, device, trained[family],
                                                              family)))
        for label, method in methods:
            warm_up(method, cases[0], device, block_size=n)
            for case in cases:
                progress(step / steps, f"{label}: n = {n}, {case.name}")
                result = fuse_case(case, method, block_size=n, device=device)
                rows.append({"group": case.name, "pair": case.pair, "method": label, "i": i, "n": n,
                             **score(result.image, case.inputs, case.target, metrics),
                             GRID_COLUMN: block_grid_index(result.image), TIME_COLUMN: result.seconds})
    progress(1.0, "done")
    columns = ["group", "pair", "method", "i", "n", *metric_columns(rows)]
    rows = [{c: row.get(c) for c in columns} for row in rows]
    config = {"model": method_label(model), "dbm": None if dbm is None else method_label(dbm),
              "exponents": exponents, "block_sizes": [2**i for i in exponents],
              "train": train, "training": trained, "training_skipped": skipped, "metrics": list(metrics), "seed": seed,
              "device": resolved_device(device), "stride": "n / 2", "data": describe(cases)}
    return StudyResult(STUDY, {"block_size_rows": rows, "block_size_summary": summarise(rows)}, config)


def _train_at(n: int, quick: bool, seed: int, device: str | None, record: dict[int, dict[str, Any]],
              family: str = "cnn"):
    """Train the per-n model of ``family``; its recipe and headline numbers go into the run's config."""
    from ..recipes import train_recipe, training_summary

    spec = training_spec(n, quick, seed, device or "cpu", family)
    model, history = train_recipe(spec)
    record[n] = {"data": {k: list(v) if isinstance(v, tuple) else v for k, v in spec["data"].items()},
                 "iterations": spec["training"].iterations, "seed": seed, **training_summary(history)}
    return model


def summarise(rows: Sequence[Row]) -> list[Row]:
    """mean, std, n of each quantity per method x i, per pair and over all groups (``pair = "all"``)."""
    quantities = metric_columns(rows)
    pairs = [ALL_PAIRS, *dict.fromkeys(row["pair"] for row in rows)]
    keys = list(dict.fromkeys((row["method"], row["i"], row["n"]) for row in rows))
    summary = []
    for pair in pairs:
        for method, i, n in keys:
            mine = [r for r in rows if r["method"] == method and r["i"] == i and pair in (ALL_PAIRS, r["pair"])]
            for quantity in quantities:
                s = spread([r[quantity] for r in mine])
                summary.append({"pair": pair, "method": method, "i": i, "n": n, "quantity": quantity,
                                "mean": s["mean"], "std": s["std"], "count": s["n"]})
    return summary


def run_block_size(
    out: str | os.PathLike = "experiments",
    cases: Sequence[Case] | None = None,
    *,
    exponents: Iterable[int] | None = None,
    model: Method = "default",
    dbm: Method | None = "dbm",
    train: bool = False,
    train_families: Sequence[str] = ("cnn", "dbm"),
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
    """Run the block-size study into a new run folder ``<out>/block_size-YYYYmmdd-HHMMSS``.

    :param exponents: i values (default 1..4; quick 1..2).
    :param model: the learned model fused in block mode.
    :param dbm: a DBM fused at its own n (default: the shipped one; None: none).
    :param train: also train a small model per n and family (quick mode trains the seconds-long variant).
    :param train_families: the families trained per n.
    Other parameters as in :func:`MedFusionLib.experiments.compare.run_compare`.
    """
    spec = QUICK if quick else FULL
    with open_run(out, STUDY, name=name, force=force, run=run, report=report) as folder:
        data = default_cases(quick, data_seed) if cases is None else cases
        result = block_size_study(data, spec["exponents"] if exponents is None else exponents, model=model,
                                  dbm=dbm, train=train, train_families=train_families, quick_training=quick,
                                  device=device, seed=seed, progress=progress)
        result.config.update(quick=quick, data_seed=data_seed if cases is None else None)
        return folder.write_study(result)
