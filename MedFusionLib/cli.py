"""The ``medfusion`` command line: ``demo``, ``fuse``, ``batch``, ``train``, ``evaluate``, ``experiment``.

Every subcommand has ``--help``. Bad input ends with one line on stderr
(``medfusion: error: ...``) and exit code 2; ``--debug`` shows the traceback instead.
Nothing is downloaded, ever; outputs are written atomically and never over an input.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence


from . import __version__
from .errors import Cancelled, MedFusionError, first_line
from .progress import ProgressBar

EXIT_INPUT_ERROR = 2
EXIT_CANCELLED = 130


# ----------------------------------------------------------------------------- commands


def command_demo(args: argparse.Namespace) -> int:
    """Fuse the bundled examples with the default model and the baselines; print metrics."""
    from .baselines import BASELINES
    from .data.examples import example_path
    from .fusion import fuse, fuse_volume, unit_to_uint8
    from .io import read_image, write_image
    from .metrics import evaluate, format_table, metrics_table

    output = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="medfusion-demo-"))
    output.mkdir(parents=True, exist_ok=True)
    ct, mri = read_image(example_path("ct")), read_image(example_path("mri"))
    print(f"2D example: {example_path('ct').name} + {example_path('mri').name} ({ct.array.shape[1]}x{ct.array.shape[0]})")
    # Warm up first, so the table times fusion, not the one-off compilation of the numba kernels that a
    # new installation does on its first fusion (cached afterwards).
    start = time.perf_counter()
    fuse([ct.array[:64, :64], mri.array[:64, :64]])
    if time.perf_counter() - start > 2.0:
        print(f"(first run of this installation: compiled the fast kernels in {time.perf_counter() - start:.0f} s; "
              "cached from now on)")
    results = {}
    for method in ["default", *BASELINES]:
        fused = fuse([ct.array, mri.array], method=method)
        label = "MedFusion (default model)" if method == "default" else method
        results[label] = {**evaluate(fused.image, [ct.array / 255.0, mri.array / 255.0], data_range=(0, 1)),
                          "time_s": fused.seconds}
        if method == "default":
            write_image(unit_to_uint8(fused.image), output / "fused_ct_mri.png", overwrite=True)
    print(format_table(metrics_table(results, id_column="method")))

    pet = read_image(example_path("pet_colour"))
    coloured = fuse([mri.array, pet.array])
    write_image(unit_to_uint8(coloured.colour), output / "fused_mri_pet_colour.png", overwrite=True, is_color=True)
    print(f"\nMRI + pseudo-colour PET: fused on luminance, colour re-attached -> {output / 'fused_mri_pet_colour.png'}")

    volumes = [read_image(example_path("ct_volume")), read_image(example_path("mri_volume"))]
    bar = ProgressBar("volume", enabled=not args.quiet)
    start = time.perf_counter()
    fused_volume = fuse_volume(volumes, modalities=["CT", "MRI"], progress=bar).image
    bar.close()
    write_image(fused_volume, output / "fused_volume.nii.gz", overwrite=True)
    print(f"3D example: {volumes[0].array.shape} volumes fused slice by slice in {time.perf_counter() - start:.2f} s; "
          f"geometry kept (spacing {fused_volume.spacing}, origin {fused_volume.origin})")
    print(f"outputs written to {output}")
    return 0


def command_fuse(args: argparse.Namespace) -> int:
    """Fuse 2 or more registered images or volumes into one output file."""
    from .fusion import fuse_files

    bar = ProgressBar("fusing", enabled=not args.quiet)
    try:
        written = fuse_files(args.inputs, args.output, method=args.method, modalities=args.modality, axis=args.axis,
                             register=None if args.register == "none" else args.register,
                             denoise=None if args.denoise == "none" else args.denoise, block_size=args.block_size,
                             device=args.device, overwrite=args.overwrite, contributions=args.contributions,
                             progress=bar)
    finally:
        bar.close()
    print(f"fused with {written.method} in {written.seconds:.3f} s")
    print(f"wrote {written.path}")
    if written.contributions_path is not None:
        print(f"wrote {written.contributions_path} (component k: input k's share of each fused pixel)")
    return 0


def command_batch(args: argparse.Namespace) -> int:
    """Fuse every group of a manifest CSV or a folder of case folders."""
    from .batch import groups_from_folder, groups_from_manifest, run_batch

    source = Path(args.source)
    groups = groups_from_folder(source) if source.is_dir() else groups_from_manifest(source)
    bar = ProgressBar("batch", enabled=not args.quiet)
    report = run_batch(groups, args.output, method=args.method, overwrite=args.overwrite,
                       register=None if args.register == "none" else args.register,
                       denoise=None if args.denoise == "none" else args.denoise,
                       metrics=not args.no_metrics, progress=bar, block_size=args.block_size, device=args.device,
                       scheduler=args.scheduler, workers=args.workers)
    bar.close()
    print(report.summary())
    return 0 if not report.failed else 1


def command_train(args: argparse.Namespace) -> int:
    """Train a model by recipe (phantom data) or on your own triplets."""
    from .recipes import recipe, train_recipe, training_summary

    spec = recipe(args.recipe)
    changes = []
    if args.family and args.family != spec["family"]:
        # Another family needs its own block size, network and training settings: take the
        # shipped recipe of that family, keeping this recipe's data.
        family_recipe = recipe("dbm" if args.family == "dbm" else "default")
        for key in ("family", "block_size", "network", "training"):
            spec[key] = family_recipe[key]
        changes.append(f"--family {args.family}")
    if args.block_size is not None:
        spec["block_size"] = args.block_size
        changes.append(f"--block-size {args.block_size}")
    if args.iterations is not None:
        spec["training"].iterations = args.iterations
        changes.append(f"--iterations {args.iterations}")
    if args.seed is not None:
        spec["training"].seed = args.seed
        changes.append(f"--seed {args.seed}")
    if args.device:
        spec["training"].device = None if args.device == "auto" else args.device
    dataset = None
    if args.data:
        from .batch import load_training_triplets

        dataset = load_training_triplets(args.data)
        spec["n_inputs"] = dataset.n_inputs
        changes.append("--data <your triplets>")
    stop = threading.Event()
    from .engine.distributed import launched_by_torchrun, process_group

    if args.tune and launched_by_torchrun():
        raise MedFusionError("--tune runs in one process: tune first, then train the tuned settings under torchrun")
    if args.tune:
        from dataclasses import replace

        from .engine.tuning import tune
        from .recipes import recipe_dataset

        dataset = dataset if dataset is not None else recipe_dataset(spec)
        tuning_bar = ProgressBar("tuning", enabled=not args.quiet)
        base = replace(spec["training"], iterations=args.tune_iterations, patience=None, checkpoint=None)
        try:
            result = tune(dataset, spec["family"], n_trials=args.tune, base_config=base,
                          seed=spec["training"].seed, progress=tuning_bar, cancel=stop)
        finally:
            tuning_bar.close()
        family, block_size, network = result.best_model_kwargs()
        spec.update(family=family, block_size=block_size, network=network)
        spec["training"] = result.best_training_config(iterations=spec["training"].iterations)
        tuning_json = result.to_json()  # written next to the model once training succeeded
        print(f"tuning: best of {args.tune} trials {result.best_params} (validation loss {result.best_value:.5f})")
        changes.append(f"--tune {args.tune}")
    spec["command"] = " ".join(["medfusion train --recipe", args.recipe, *changes, "--output <file>"])
    # Under torchrun the processes train together (DistributedDataParallel); rank 0 reports and writes.
    with process_group(spec["training"].device) as ranks:
        bar = ProgressBar("training", enabled=not args.quiet and ranks.main)
        try:
            model, history = train_recipe(spec, args.output, progress=bar, cancel=stop, dataset=dataset)
        finally:
            bar.close()
    if not ranks.main:
        return 0
    if ranks.distributed:
        print(f"trained on {ranks.world_size} processes (torchrun)")
    if args.tune:
        from .io import atomic_output

        with atomic_output(f"{args.output}.tuning.json", overwrite=True) as temporary:
            temporary.write_text(tuning_json)
        print(f"all tuning trials in {args.output}.tuning.json")
    print(f"model written to {args.output}: {training_summary(history)}")
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    """Score a fused image (or volume) against its sources (and a target): metrics as CSV.

    Volumes are scored slice by slice along --axis: one row per slice that holds signal, after
    a first row with the mean over those slices (MedFusionLib.metrics.evaluate_volume).
    """
    from .io import read_image
    from .metrics import evaluate, format_table, metrics_table, table_to_csv

    fused = read_image(args.fused)
    sources = [read_image(path) for path in args.sources]
    target = read_image(args.target) if args.target else None
    images = [fused, *sources] + ([target] if target else [])
    dimensions = {image.dimension for image in images}
    if len(dimensions) > 1:
        shapes = ", ".join(f"{Path(p).name} {i.dimension}D" for p, i in
                           zip([args.fused, *args.sources, *([args.target] if args.target else [])], images))
        raise MedFusionError(f"evaluate: give 2D images or 3D volumes, not both ({shapes})")
    metrics = args.metrics.split(",") if args.metrics else None
    name = Path(args.fused).name
    if dimensions == {3}:
        rows = _volume_rows(name, fused, sources, target, metrics, args.axis)
    else:
        values = evaluate(fused.array, [s.array for s in sources], target.array if target else None, metrics=metrics)
        rows = metrics_table({name: values})
    if args.output:
        table_to_csv(rows, args.output)
        print(f"wrote {args.output}")
    print(format_table(rows) if not args.output or args.verbose else "", end="\n" if not args.output or args.verbose else "")
    return 0


def _volume_rows(name: str, fused, sources: list, target, metrics, axis: int) -> list[dict]:
    """The volume's mean row, then one row per slice that holds signal (skipped slices are left out)."""
    import math

    from .metrics import evaluate_volume, metrics_table

    for label, image in [*((f"source {i + 1}", s) for i, s in enumerate(sources)), ("target", target)]:
        if image is not None and not image.geometry_matches(fused):
            raise MedFusionError(f"evaluate: {label} is not on the fused volume's grid (shape, spacing, origin or "
                                 "direction differ); resample it onto the fused volume first")
    scores = evaluate_volume(fused.array, [s.array for s in sources],
                             target.array if target is not None else None, metrics, axis=axis)
    kept = [i for i in range(len(scores.slice_indices))
            if not all(math.isnan(v[i]) for v in scores.slice_metrics.values())]
    if not kept:
        raise MedFusionError("evaluate: no slice holds signal in any source (every slice is constant)")
    results = {f"{name} (mean of {len(kept)} slices)": scores.metrics}
    results.update({f"{name} slice {'KJI'[axis]}={int(scores.slice_indices[i])}":
                    {k: float(v[i]) for k, v in scores.slice_metrics.items()} for i in kept})
    return metrics_table(results)


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medfusion",
        description="Supervised deep-learning fusion of registered multimodal medical images, and fusion metrics.",
    )
    parser.add_argument("--version", action="version", version=f"medfusion {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="fuse the bundled examples and print metrics",
                          description=command_demo.__doc__)
    demo.add_argument("-o", "--output", help="folder for the fused images (default: a new temporary folder)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(handler=command_demo)

    def add_method_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("-m", "--method", default="default",
                       help="'default' (shipped CNN), 'dbm' (shipped DBM), a model file (.pt), or a baseline: "
                            "average, maximum, laplacian, guided_filter, wavelet (default: default)")
        p.add_argument("--block-size", type=int, default=None, help="fuse overlapping n x n blocks (n = 2^i)")
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    def add_preprocessing_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--register", choices=["none", "rigid", "affine"], default="none",
                       help="register inputs 2.. onto input 1 first (Mattes mutual information)")
        p.add_argument("--denoise", choices=["none", "curvature_flow", "gaussian", "median", "bilateral"],
                       default="none", help="denoise the inputs first")

    fuse = sub.add_parser("fuse", help="fuse registered images or volumes", description=command_fuse.__doc__)
    fuse.add_argument("inputs", nargs="+", help="2 or more images (PNG, TIFF, JPEG) or volumes (NIfTI, NRRD, MHA, DICOM folder)")
    fuse.add_argument("-o", "--output", required=True, help="output file (PNG for 2D, NIfTI/NRRD/MHA for 3D)")
    fuse.add_argument("--modality", nargs="+", help="modality per input for standardisation: CT MRI PET SPECT")
    fuse.add_argument("--axis", type=int, default=0, help="volume array axis to slice along (default 0)")
    add_preprocessing_options(fuse)
    fuse.add_argument("--contributions", metavar="FILE",
                      help="also write where each fused pixel came from: one component per input, its share "
                           "in [0, 1] (NIfTI, NRRD, MHA or TIFF; not for the DBM model)")
    fuse.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_method_options(fuse)
    fuse.set_defaults(handler=command_fuse)

    batch = sub.add_parser("batch", help="fuse every group of a manifest CSV or a folder", description=command_batch.__doc__)
    batch.add_argument("source", help="manifest CSV (name,input_1,input_2,...[,target]) or a folder of case folders")
    batch.add_argument("-o", "--output", required=True, help="output folder (a re-run skips finished outputs)")
    batch.add_argument("--overwrite", action="store_true", help="redo finished outputs")
    batch.add_argument("--no-metrics", action="store_true", help="skip the metrics (volumes: scored slice by slice)")
    cluster = batch.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="send each case to the Dask cluster at ADDRESS (e.g. tcp://host:8786); inputs and "
                              "outputs must be on a file system its workers share (pip install 'medfusion[cluster]')")
    cluster.add_argument("--workers", type=int, metavar="N",
                         help="start a Dask cluster of N worker processes on this machine and run the cases on it")
    add_preprocessing_options(batch)
    add_method_options(batch)
    batch.set_defaults(handler=command_batch)

    train = sub.add_parser("train", help="train a fusion model", description=command_train.__doc__)
    train.add_argument("-o", "--output", required=True, help="model file to write (.pt)")
    train.add_argument("--recipe", default="default", help="default, dbm or smoke (see MedFusionLib.recipes)")
    train.add_argument("--data", help="train on your triplets: manifest CSV or folder (inputs + target)")
    train.add_argument("--family", choices=["cnn", "dbm"], help="override the recipe's model family")
    train.add_argument("--block-size", type=int, help="override the block (training patch) size n = 2^i")
    train.add_argument("--iterations", type=int, help="override the number of training iterations")
    train.add_argument("--seed", type=int, help="override the seed")
    train.add_argument("--device", help="auto (CUDA when present), cpu or cuda (default: the recipe's; "
                                        "the shipped recipes train on the CPU, reproducibly)")
    train.add_argument("--tune", type=int, metavar="TRIALS",
                       help="first search block size, learning rate and network size with Optuna (needs medfusion[tune])")
    train.add_argument("--tune-iterations", type=int, default=300, help="training iterations per tuning trial")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=command_train)

    evaluate = sub.add_parser("evaluate", help="fusion metrics of a fused image or volume, as CSV",
                              description=command_evaluate.__doc__)
    evaluate.add_argument("fused", help="the fused image")
    evaluate.add_argument("sources", nargs="+", help="the source images it was fused from")
    evaluate.add_argument("--target", help="a target image (enables RMSE, PSNR, SSIM, REL, CE, H)")
    evaluate.add_argument("--axis", type=int, default=0, choices=(0, 1, 2),
                          help="volumes: the array axis to score slices along (default 0)")
    evaluate.add_argument("--metrics", help="comma-separated metric keys (default: all that apply)")
    evaluate.add_argument("-o", "--output", help="CSV file to write")
    evaluate.add_argument("-v", "--verbose", action="store_true", help="also print the table when writing CSV")
    evaluate.set_defaults(handler=command_evaluate)

    from .experiments.cli import add_experiment_parser

    add_experiment_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (KeyboardInterrupt, Cancelled):
        print("\nmedfusion: cancelled; nothing partial was written", file=sys.stderr)
        return EXIT_CANCELLED
    except (MedFusionError, ValueError, OSError) as error:
        if args.debug:
            raise
        print(f"medfusion: error: {first_line(error)}", file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
