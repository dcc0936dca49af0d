"""``medfusion experiment ...``: the studies from the command line.

Wiring (in ``MedFusionLib/cli.py: build_parser``, after the other subcommands)::

    from .experiments.cli import add_experiment_parser
    add_experiment_parser(sub)

``add_experiment_parser`` sets ``handler=command_experiment``, which ``main`` calls.
Examples::

    medfusion experiment all --quick -o results          # every study, one folder, one report
    medfusion experiment compare --data cases.csv -o results --methods default,laplacian
    medfusion experiment tables -o results                # the papers' Tables 1-3 beside ours
    medfusion experiment repeat --repeat-training 3       # also 3 trainings per seed mode
    medfusion experiment perturbation --gaussian 0.01,0.02,0.05 --salt-pepper 0.01,0.05
    medfusion experiment convergence --history my_model.pt.history.json
    medfusion experiment report results/compare-20260101-120000
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..progress import ProgressBar

_SUBCOMMANDS = ("all", "compare", "tables", "repeat", "block-size", "perturbation", "convergence", "report")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="experiments",
                   help="parent folder; each run makes <output>/<study>-YYYYmmdd-HHMMSS (default: experiments)")
    p.add_argument("--name", help="run folder name instead of the time stamp")
    p.add_argument("--force", action="store_true", help="replace an existing run folder of the same name")
    p.add_argument("--quick", action="store_true", help="smoke-sized run (seconds): 2 groups x 2 pairs, fewer levels")
    p.add_argument("--seed", type=int, default=0, help="seed of torch/numpy and of the noise (default 0)")
    p.add_argument("--no-report", action="store_true", help="CSVs only: no figures, no report.html")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="your groups: manifest CSV or folder of case folders (default: held-out phantoms)")
    p.add_argument("--per-pair", type=int, help="phantom groups per modality pair (default: the study's)")
    p.add_argument("--pairs", type=_names, help="phantom modality pairs, e.g. CT+MRI_T1,MRI_T1+SPECT")
    p.add_argument("--size", type=int, help="phantom image side in pixels (default 256; quick 64-96)")
    p.add_argument("--data-seed", type=int, default=0, help="which held-out phantom set (default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")


def _add_methods(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", type=_names,
                   help="comma-separated: default, model files (.pt), average, maximum, laplacian, guided_filter, "
                        "wavelet (default: the study's)")


def _add_study_options(p: argparse.ArgumentParser, study: str) -> None:
    if study in ("repeat", "all"):
        p.add_argument("--repeats", type=int, help="repeats per fusion (default 50; quick 2)")
        p.add_argument("--repeat-training", type=int, metavar="R",
                       help="also train R models per seed mode (same seed / different seeds), fuse and score "
                            "with each: the spread training adds and whether it is bit-reproducible (R >= 2)")
        p.add_argument("--training-recipe", default="smoke",
                       help="recipe of the repeated trainings (default smoke: seconds per model)")
        p.add_argument("--training-seeds", type=_names, default=["same", "different"],
                       help="seed modes: same, different or both (default same,different)")
    if study in ("tables", "all"):
        p.add_argument("--dbm", default="dbm",
                       help="DBM model for paper 000's table: 'dbm' (the shipped one, made by 'medfusion train "
                            "--recipe dbm'; the default), a .pt file of family dbm, 'train' (train a shortened "
                            "DBM here, a few minutes) or 'none'")
    if study in ("block-size", "all"):
        p.add_argument("--exponents", type=_ints, help="i values, n = 2^i (default 1,2,3,4; quick 1,2)")
        p.add_argument("--model", default="default", help="learned model fused in block mode (default: shipped)")
        p.add_argument("--train", action="store_true",
                       help="also train a small model per block size and family (--train-families)")
        p.add_argument("--train-families", type=_names, default=["cnn", "dbm"],
                       help="families trained per block size with --train: cnn, dbm or both (default cnn,dbm)")
    if study in ("perturbation", "all"):
        p.add_argument("--gaussian", type=_floats, help="Gaussian sigmas, fractions of the [0, 1] range")
        p.add_argument("--salt-pepper", type=_floats, help="salt-and-pepper fractions of pixels")
        p.add_argument("--speckle", type=_floats, help="speckle sigmas (multiplicative)")
        p.add_argument("--draws", type=int, help="noise draws per level (default 3; quick 1)")
    if study in ("convergence", "all"):
        p.add_argument("--history", help="<model>.history.json or a model file next to one (default: shipped model's)")
        p.add_argument("--window", type=int, default=100, help="moving-average window in iterations (default 100)")
        p.add_argument("--tolerance", type=float, default=0.05, help="flattening band, fraction of the final loss")


def add_experiment_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``experiment`` (with its study subcommands) to the ``medfusion`` subparsers.

    :param subparsers: the object ``ArgumentParser.add_subparsers()`` returned.
    :returns: the ``experiment`` parser.
    """
    parser = subparsers.add_parser(
        "experiment", help="the papers' studies with a report (compare, repeat, block-size, perturbation, ...)",
        description="Run the papers' experiments on phantoms or your data; each run writes a new folder with "
                    "tidy CSVs, figures and a self-contained report.html.")
    studies = parser.add_subparsers(dest="experiment_study", metavar="STUDY", required=True)
    helps = {"all": "every study into one folder and one report",
             "compare": "every method on every group: metrics, time, mean ± std and ranks per pair",
             "tables": "the papers' Tables 1-3 filled with our numbers, beside the values they print",
             "repeat": "each fusion repeated: spread and bit-identical outputs",
             "block-size": "block mode at n = 2^i: metrics and time against i",
             "perturbation": "Gaussian / salt-and-pepper disturbed inputs at graded levels",
             "convergence": "loss against iteration from a training history; where it flattens",
             "report": "(re)build the figures and report.html of a run folder"}
    for study in _SUBCOMMANDS:
        p = studies.add_parser(study, help=helps[study], description=helps[study])
        if study == "report":
            p.add_argument("folder", help="a run folder (holding run.json)")
        else:
            _add_run_options(p)
            if study != "convergence":
                _add_data_options(p)
            if study in ("all", "compare", "tables", "repeat", "perturbation"):
                _add_methods(p)
            _add_study_options(p, study)
        p.set_defaults(handler=command_experiment)
    parser.set_defaults(handler=command_experiment)
    return parser


def _cases(args: argparse.Namespace, module: Any) -> Any:
    """The data set the options ask for, or None for the study's own default."""
    from .data import dataset_from_source, phantom_dataset

    if getattr(args, "data", None):
        return dataset_from_source(args.data)
    if args.per_pair is None and args.pairs is None and args.size is None:
        return None
    spec = module.QUICK if args.quick else module.FULL
    pairs = [tuple(p.split("+")) for p in args.pairs] if args.pairs else spec["pairs"]
    shape = (args.size, args.size) if args.size else spec["shape"]
    return phantom_dataset(args.per_pair or spec["count_per_pair"], pairs, shape, args.data_seed)


def _dbm(text: str | None) -> str | None:
    """``--dbm``: 'none' -> None (no DBM row), else 'train' or a model path as given."""
    return None if text is None or text.strip().lower() == "none" else text


def _levels(args: argparse.Namespace) -> dict[str, list[float]] | None:
    chosen = {kind: values for kind, values in (("gaussian", args.gaussian), ("salt_and_pepper", args.salt_pepper),
                                                ("speckle", args.speckle)) if values}
    return chosen or None


def command_experiment(args: argparse.Namespace) -> int:
    """Run one study (or all, or the report) as the options say; print where the results are."""
    from . import block_size, compare, convergence, perturbation, repeat, tables
    from ._run import require_matplotlib
    from .report import build_report
    from .suite import run_all

    study = getattr(args, "experiment_study", None)
    if study is None:
        raise InputError("experiment: choose a study: " + ", ".join(_SUBCOMMANDS))
    if study == "report":
        require_matplotlib()
        print(f"report written to {build_report(args.folder)}")
        return 0
    device = None if getattr(args, "device", "auto") in (None, "auto") else args.device
    bar = ProgressBar(study, enabled=not args.quiet)
    common = {"quick": args.quick, "seed": args.seed, "force": args.force, "name": args.name,
              "report": not args.no_report, "progress": bar}
    try:
        if study == "convergence":
            result = convergence.run_convergence(args.output, args.history, window=args.window,
                                                 tolerance=args.tolerance, **common)
            folder = result.folder
        else:
            data = {"data_seed": args.data_seed, "device": device}
            if study == "all":
                results = run_all(args.output, _cases(args, compare), methods=args.methods, repeats=args.repeats,
                                  training_repeats=args.repeat_training, training_recipe=args.training_recipe,
                                  training_seeds=args.training_seeds, dbm=_dbm(args.dbm),
                                  exponents=args.exponents, block_model=args.model, train=args.train,
                                  levels=_levels(args), draws=args.draws, history=args.history,
                                  window=args.window, tolerance=args.tolerance, **data, **common)
                folder = next(iter(results.values())).folder
            elif study == "compare":
                folder = compare.run_compare(args.output, _cases(args, compare), methods=args.methods,
                                             **data, **common).folder
            elif study == "tables":
                folder = tables.run_tables(args.output, _cases(args, tables), methods=args.methods,
                                           dbm=_dbm(args.dbm), **data, **common).folder
            elif study == "repeat":
                folder = repeat.run_repeat(args.output, _cases(args, repeat), methods=args.methods,
                                           repeats=args.repeats, training_repeats=args.repeat_training,
                                           training_recipe=args.training_recipe,
                                           training_seeds=args.training_seeds, **data, **common).folder
            elif study == "block-size":
                folder = block_size.run_block_size(args.output, _cases(args, block_size), exponents=args.exponents,
                                                   model=args.model, train=args.train,
                                                   train_families=args.train_families, **data, **common).folder
            else:
                methods = {"methods": args.methods} if args.methods else {}
                folder = perturbation.run_perturbation(args.output, _cases(args, perturbation), levels=_levels(args),
                                                       draws=args.draws, **methods, **data, **common).folder
    finally:
        bar.close()
    print(f"results written to {folder}")
    if not args.no_report:
        print(f"report: {Path(folder) / 'report.html'}")
    return 0

