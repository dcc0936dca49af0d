"""Repeated training (the repeat study's "on request" part): R models trained by one recipe,
each fused and scored on the same groups -- the spread that training adds, and whether
training with one seed is reproducible bit for bit.

Seed modes (``seeds``):

- ``"same"``: R trainings with the same seed. On the CPU the training is meant to be
  deterministic (same data, seed, machine type and torch thread count -> the same
  weights), so this shows zero spread unless something in training is not seeded.
  Every training runs at the thread count the study started with (recorded).
- ``"different"``: R trainings with seeds ``seed, seed + 1, ..., seed + R - 1``: the
  spread of the results over initialisation and block sampling -- what the papers'
  repeated runs of a learned method would average over.

The recipe defaults to ``smoke`` (seconds per model; :data:`MedFusionLib.recipes.RECIPES`),
so the study measures the *variation* training brings, not the quality of a usable model.
Training data is made once and shared; only the seed changes between trainings.

Tables:

- ``repeat_training_runs``: one row per mode x run x group: the training seed, the weights'
  SHA-256, training seconds, final training loss, every metric, ``time_s``, ``output_sha256``.
- ``repeat_training_summary``: per mode x group x quantity the spread over the R runs
  (mean, sample std, min, max, n); ``group = "all"`` rows are the spread over runs of each
  run's mean over the groups (the model-level spread).
- ``repeat_training_determinism``: per mode: distinct weights and outputs, whether all runs
  are bit-identical, the largest |output difference| to run 1 and the largest per-group metric
  std (and which metric: the metrics' scales differ, EOG's is in grey levels squared).
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..engine.model import FusionModel
from ..errors import InputError
from ..validation import check_int
from ..progress import ProgressCallback
from ._common import TIME_COLUMN, fuse_case, metric_columns, output_digest, score, spread
from ._run import Row, StudyResult, no_progress, resolved_device
from .data import Case, check_cases, describe

#: The seed modes, in the order they run.
SEED_MODES: tuple[str, ...] = ("same", "different")
#: The recipe trained by default: seconds per model.
DEFAULT_RECIPE = "smoke"
#: ``group`` of the summary rows over all groups.
ALL_GROUPS = "all"


def weights_digest(model: FusionModel) -> str:
    """SHA-256 over the network's parameters and buffers (names, dtypes, shapes, bytes), in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.network.state_dict().items():
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def training_seeds(mode: str, runs: int, seed: int) -> list[int]:
    """The seeds of the R trainings of one mode (see the module docstring)."""
    if mode == "same":
        return [seed] * runs
    if mode == "different":
        return [seed + r for r in range(runs)]
    raise InputError(f"training seeds: unknown mode {mode!r}; choose from {', '.join(SEED_MODES)}")


def repeat_trainings(
    cases: Sequence[Case],
    runs: int = 3,
    *,
    recipe: str | dict[str, Any] = DEFAULT_RECIPE,
    seeds: Iterable[str] = SEED_MODES,
    seed: int = 0,
    device: str | None = None,
    metrics: Sequence[str] | None = None,
    progress: ProgressCallback = no_progress,
) -> StudyResult:
    """Train ``runs`` models per seed mode, fuse and score every case with each (no files written).

    :param cases: the data set the models fuse.
    :param runs: R >= 2 trainings per mode (one training has no spread).
    :param recipe: a :data:`~MedFusionLib.recipes.RECIPES` name or a recipe dict (its seed is replaced).
    :param seeds: seed modes, any of :data:`SEED_MODES`.
    :param seed: the base training seed.
    :param device: fusion device (training runs on the recipe's device: the CPU for the shipped recipes).
    :param metrics: metric keys (default every metric the cases allow).
    :param progress: ``progress(fraction, message)``.
    :returns: a :class:`StudyResult` of study ``"repeat"`` with the three tables above.
    """
    from dataclasses import replace

    from ..recipes import recipe as named_recipe
    from ..recipes import recipe_dataset, train_recipe

    runs = check_int(runs, "training repeats", minimum=2)
    cases = check_cases(cases)
    modes = list(dict.fromkeys(seeds))
    for mode in modes:
        training_seeds(mode, 1, seed)  # an unknown mode fails before any training
    if not modes:
        raise InputError(f"training seeds: choose at least one of {', '.join(SEED_MODES)}")
    spec = named_recipe(recipe) if isinstance(recipe, str) else dict(recipe)
    dataset = recipe_dataset(spec)  # the same triplets for every run: only the seed varies
    # CPU training is bit-reproducible only at one intra-op thread count (1 and 2 threads give
    # different last bits), and scoring between trainings can change it (numba's OpenMP
    # kernels share the runtime with torch): every training runs at the count the study began with
    threads = torch.get_num_threads()
    rows: list[Row] = []
    first_outputs: dict[tuple[str, str], np.ndarray] = {}
    largest: dict[str, float] = {}
    total = len(modes) * runs
    for m, mode in enumerate(modes):
        largest[mode] = 0.0
        scored: dict[str, dict[str, float]] = {}  # output digest -> scores (identical outputs score alike)
        for r, training_seed in enumerate(training_seeds(mode, runs, seed), start=1):
            step = m * runs + r - 1
            progress(step / total, f"{mode} seed: training run {r}/{runs} (seed {training_seed})")
            spec_r = {**spec, "training": replace(spec["training"], seed=training_seed)}
            torch.set_num_threads(threads)
            model, history = train_recipe(spec_r, dataset=dataset)
            weights = weights_digest(model)
            progress((step + 0.5) / total, f"{mode} seed: run {r}/{runs}: fusing {len(cases)} groups")
            for case in cases:
                result = fuse_case(case, model, device=device)
                digest = output_digest(result.image)
                if digest not in scored:
                    scored[digest] = score(result.image, case.inputs, case.target, metrics)
                reference = first_outputs.setdefault((mode, case.name), result.image.copy())
                largest[mode] = max(largest[mode], float(np.max(np.abs(result.image.astype(np.float64) - reference))))
                rows.append({"mode": mode, "run": r, "training_seed": training_seed, "weights_sha256": weights,
                             "training_seconds": history.seconds,
                             "final_loss": (history.full_size_losses()[1] or [None])[-1],
                             "group": case.name, "pair": case.pair, **scored[digest],
                             TIME_COLUMN: result.seconds, "output_sha256": digest})
    torch.set_num_threads(threads)  # leave the caller's setting as it found it
    progress(1.0, "done")
    columns = ["mode", "run", "training_seed", "weights_sha256", "training_seconds", "final_loss", "group", "pair",
               *metric_columns(rows), "output_sha256"]
    rows = [{c: row.get(c) for c in columns} for row in rows]
    summary = summarise(rows)
    determinism = determinism_table(rows, summary, largest)
    config = {"recipe": spec.get("name", "custom"), "runs": runs, "seed_modes": modes, "seed": seed,
              "seeds": {mode: training_seeds(mode, runs, seed) for mode in modes},
              "training_iterations": spec["training"].iterations, "training_device": spec["training"].device,
              "training_threads": threads,
              "device": resolved_device(device), "data": describe(cases)}
    return StudyResult("repeat", {"repeat_training_runs": rows, "repeat_training_summary": summary,
                                  "repeat_training_determinism": determinism}, config)


def summarise(rows: Sequence[Row]) -> list[Row]:
    """Spread over runs per mode x group x quantity, and of each run's group mean (``group = "all"``)."""
    quantities = ["final_loss", *metric_columns(rows)]
    summary: list[Row] = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        run_ids = list(dict.fromkeys(r["run"] for r in mine))
        for quantity in quantities:
            per_run = [_mean([r[quantity] for r in mine if r["run"] == run]) for run in run_ids]
            summary.append({"mode": mode, "group": ALL_GROUPS, "pair": ALL_GROUPS, "quantity": quantity,
                            **spread(per_run)})
        for group, pair in dict.fromkeys((r["group"], r["pair"]) for r in mine):
            for quantity in quantities:
                if quantity == "final_loss":
                    continue  # one value per run, already in the "all" rows
                summary.append({"mode": mode, "group": group, "pair": pair, "quantity": quantity,
                                **spread([r[quantity] for r in mine if r["group"] == group])})
    return summary


def _mean(values: Sequence[Any]) -> float | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(v == present[0] for v in present):
        return present[0]  # exactly that value: n copies can average to something a bit off
    return float(np.mean(present))


def determinism_table(rows: Sequence[Row], summary: Sequence[Row], largest: dict[str, float]) -> list[Row]:
    """Per mode: how many distinct weights and outputs R trainings gave, and how far apart they are."""
    table: list[Row] = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        weights = {r["weights_sha256"] for r in mine}
        outputs = max(len({r["output_sha256"] for r in mine if r["group"] == g}) for g in {r["group"] for r in mine})
        spreads = [(s["std"], s["quantity"]) for s in summary if s["mode"] == mode and s["group"] != ALL_GROUPS
                   and s["quantity"] != TIME_COLUMN and s["std"] is not None and np.isfinite(s["std"])]
        widest = max(spreads) if spreads else (None, None)
        if widest[0] == 0.0:
            widest = (0.0, None)  # no metric varies: naming one would mislead
        table.append({"mode": mode, "runs": len({r["run"] for r in mine}),
                      "training_seeds": " ".join(str(s) for s in dict.fromkeys(r["training_seed"] for r in mine)),
                      "distinct_weights": len(weights), "bit_identical_weights": len(weights) == 1,
                      "distinct_outputs": outputs, "bit_identical_outputs": outputs == 1,
                      "max_abs_difference": largest.get(mode, 0.0),
                      "largest_metric_std": widest[0], "largest_std_metric": widest[1],
                      "mean_training_seconds": float(np.mean([r["training_seconds"] for r in mine]))})
    return table
