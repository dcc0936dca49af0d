"""Automatic search over teacher rules (the supervised target) against the quality issue's bar.

The shipped CNN learns :func:`MedFusionLib.data.targets.saliency_blend`; a model that learns a rule
perfectly scores what ``bench_quality.py --model target`` prints for it, so whether any rule of a family
can be first on 4 of the 6 headline metrics in every modality pair is a question about rules, answered
here in seconds per rule without training.

The family (:func:`teacher_rule`, :data:`CURRENT` reproduces ``saliency_blend`` bit for bit) spans the
knobs tried by hand before: saliency scale and pre-smoothing, soft or hard decision masks, masks made
sharper (mixed with their argmax) at every pyramid level, max-abs detail selection per level, an averaged base level, the clamp, and a final
mix with plain pixel selection (the decision map applied to pixels, no pyramid: seams included).

Two modes, both Optuna (seeded, so a run repeats):

- The default: one objective. Per pair, the 4th-best of the six margins
  ``rule / best baseline - 1`` (>= 0 means first on 4), capped at +0.02, summed over pairs; minus
  5 x the relative Q^AB/F lost against the current rule (the bar: no Q^AB/F loss), minus the seam
  share (``bench_quality.invented_edge_share``) above 1.1 x the current rule's, relative. Prints the
  best rule that loses no Q^AB/F and keeps SEAM within 1.1x in every pair, and the rules with the most
  first places regardless of that.
- ``--frontier A,B``: two objectives, NSGA-II. The worst-pair margins of metrics A and B over the
  chosen pairs; prints the Pareto front and whether any rule is first on both in every pair.

Choose on one phantom set (``--seed 500``), confirm what you pick with ``bench_quality.py`` on others.

Run: ``python benchmarks/tune_teacher.py [--trials 250] [--seed 500] [--cases 4] [--pairs all|pet-spect]
[--frontier SSIM_S,SF] [--mni152]`` (about 1.3 s per trial for 24 phantoms on 2 cores; needs optuna).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage

from bench_quality import RANK_METRICS, EXTRA_COLUMNS, firsts, mni152_groups, phantom_groups, score_groups
from MedFusionLib.baselines import BASELINES
from MedFusionLib.baselines.pixel import select_max_abs
from MedFusionLib.baselines.pyramid import gaussian_pyramid, laplacian_pyramid, reconstruct_laplacian_pyramid
from MedFusionLib.data.targets import MODALITY_PAIRS, edge_strength

#: The shipped rule's parameters: with these, :func:`teacher_rule` is ``saliency_blend`` (levels 4, sigma 4).
CURRENT: dict[str, Any] = {
    "saliency_sigma": 4.0, "saliency_presmooth": 0.0, "weight_power": "hard", "mask_sharpness": 0.0,
    "max_abs_detail_0": 0.0, "max_abs_detail_1": 0.0, "max_abs_detail_2": 0.0, "max_abs_detail_3": 0.0,
    "average_base": 0.0, "clamp": True, "pixel_selection": 0.0,
}
LEVELS = 4
SEAM = len(RANK_METRICS) + EXTRA_COLUMNS.index("SEAM")


def teacher_rule(images: Sequence[np.ndarray], params: dict[str, Any]) -> np.ndarray:
    """One rule of the family, on standardised inputs; returns the target in [0, 1] (float32).

    Saliency: Gaussian(``saliency_sigma``) of the Sobel magnitude of each input, pre-smoothed by
    ``saliency_presmooth`` px. Masks: 1 for the most salient input (``weight_power`` "hard", ties share)
    or ``(s / max s) ** power``, normalised. Level i of the Laplacian pyramid takes the masks' Gaussian
    pyramid, mixed by ``mask_sharpness`` with its hard (argmax) version, then mixed by
    ``max_abs_detail_i`` with max-abs selection; the base level is mixed by ``average_base`` with the
    inputs' mean. The collapsed image is clamped to the inputs' range per pixel (``clamp``), then mixed
    by ``pixel_selection`` with the most salient input's pixel value.
    """
    stack = np.stack([np.asarray(x, np.float64) for x in images])
    presmooth = params["saliency_presmooth"]
    saliency = np.stack([
        ndimage.gaussian_filter(edge_strength(y), params["saliency_sigma"])
        for y in (ndimage.gaussian_filter(x, presmooth) if presmooth > 0 else x for x in stack)
    ])
    if params["weight_power"] == "hard":
        masks = (saliency == saliency.max(axis=0)).astype(np.float64)
    else:
        masks = (saliency / np.maximum(saliency.max(axis=0), 1e-12)) ** float(params["weight_power"])
    total = masks.sum(axis=0)
    # Where no input has any saliency (a flat background), they share equally rather than divide 0 by 0.
    masks = np.where(total > 0, masks / np.where(total > 0, total, 1.0), 1.0 / len(stack))
    image_levels = laplacian_pyramid(stack, LEVELS)
    mask_levels = gaussian_pyramid(masks, len(image_levels) - 1)
    fused_levels = []
    for i, (m, x) in enumerate(zip(mask_levels, image_levels)):
        sharp = params["mask_sharpness"]
        if sharp > 0:
            hard = (m == m.max(axis=0)).astype(np.float64)
            m = (1 - sharp) * m + sharp * hard / hard.sum(axis=0)
        level = np.sum(m * x, axis=0)
        coarsest = i == len(image_levels) - 1
        mix = params["average_base"] if coarsest else params.get(f"max_abs_detail_{i}", 0.0)
        if mix > 0:
            level = (1 - mix) * level + mix * (x.mean(axis=0) if coarsest else select_max_abs(x))
        fused_levels.append(level)
    fused = reconstruct_laplacian_pyramid(fused_levels)
    if params["clamp"]:
        fused = np.clip(fused, stack.min(axis=0), stack.max(axis=0))
    if params["pixel_selection"] > 0:
        chosen = np.take_along_axis(stack, saliency.argmax(axis=0)[None], axis=0)[0]
        fused = (1 - params["pixel_selection"]) * fused + params["pixel_selection"] * chosen
    return np.clip(fused, 0, 1).astype(np.float32)


def suggest(trial: Any) -> dict[str, Any]:
    """The search space: one Optuna trial's rule parameters."""
    params: dict[str, Any] = {
        "saliency_sigma": trial.suggest_float("saliency_sigma", 1.5, 10.0, log=True),
        "saliency_presmooth": trial.suggest_float("saliency_presmooth", 0.0, 2.0),
        "weight_power": trial.suggest_categorical("weight_power", [1, 2, 4, 8, 16, "hard"]),
        "mask_sharpness": trial.suggest_float("mask_sharpness", 0.0, 1.0),
    }
    for i in range(LEVELS):
        params[f"max_abs_detail_{i}"] = trial.suggest_float(f"max_abs_detail_{i}", 0.0, 1.0)
    params["average_base"] = trial.suggest_float("average_base", 0.0, 1.0)
    params["clamp"] = trial.suggest_categorical("clamp", [True, False])
    params["pixel_selection"] = trial.suggest_float("pixel_selection", 0.0, 1.0)
    return params


@dataclass
class PairSet:
    """One modality pair's held-out input groups and its baselines' mean scores (computed once)."""

    modalities: tuple[str, ...]
    groups: list[list[np.ndarray]]
    baselines: np.ndarray  # rows: BASELINES; columns: RANK_METRICS + EXTRA_COLUMNS

    def score(self, rule: Callable[[list[np.ndarray]], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The rule's mean row and its margins ``rule / best baseline - 1`` on the ranked metrics."""
        _, means, _ = score_groups(rule, self.groups, baselines=())
        row = means[0]
        best = self.baselines[:, : len(RANK_METRICS)].max(axis=0)
        return row, row[: len(RANK_METRICS)] / best - 1

    def first_places(self, row: np.ndarray) -> list[str]:
        return firsts(np.vstack([row[None, : len(RANK_METRICS)], self.baselines[:, : len(RANK_METRICS)]]))


def pair_sets(pairs: Sequence[tuple[str, ...]], cases: int, seed: int, mni152: bool = False) -> list[PairSet]:
    """Held-out phantoms (or ``bench_quality``'s six MNI152-derived slices) per pair, with their
    baselines scored (the slow part, done once per run)."""
    sets = []
    for modalities in pairs:
        groups = (mni152_groups(modalities, MODALITY_PAIRS.index(tuple(modalities))) if mni152
                  else phantom_groups(modalities, cases, seed))
        _, means, _ = score_groups(lambda inputs: inputs[0], groups)  # the model row is unused here
        sets.append(PairSet(tuple(modalities), groups, means[1:]))
    return sets


def bar_objective(sets: list[PairSet], reference: list[np.ndarray]) -> Callable[[Any], float]:
    """The single-objective score (see the module docstring) against the current rule's rows."""

    def objective(trial: Any) -> float:
        params = suggest(trial)
        total, counts, seams, feasible = 0.0, [], [], True
        for pair, ref in zip(sets, reference):
            row, margins = pair.score(lambda inputs: teacher_rule(inputs, params))
            total += min(np.sort(margins)[::-1][3], 0.02)
            total -= 5.0 * max(0.0, ref[0] - row[0]) / ref[0]
            total -= max(0.0, row[SEAM] - 1.1 * ref[SEAM]) / ref[SEAM]
            counts.append(len(pair.first_places(row)))
            seams.append(round(float(row[SEAM]), 4))
            feasible = feasible and row[0] >= ref[0] and row[SEAM] <= 1.1 * ref[SEAM]
        trial.set_user_attr("firsts", counts)
        trial.set_user_attr("seams", seams)
        trial.set_user_attr("feasible", bool(feasible))  # no Q^AB/F lost, seams within 1.1x, in every pair
        return total

    return objective


def frontier_objective(sets: list[PairSet], metrics: tuple[str, str]) -> Callable[[Any], tuple[float, float]]:
    """Two objectives: the worst-pair margins of two ranked metrics."""
    columns = [RANK_METRICS.index(m) for m in metrics]

    def objective(trial: Any) -> tuple[float, float]:
        params = suggest(trial)
        margins = np.array([pair.score(lambda inputs: teacher_rule(inputs, params))[1] for pair in sets])
        return float(margins[:, columns[0]].min()), float(margins[:, columns[1]].min())

    return objective


def _shown(params: dict[str, Any]) -> str:
    return json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in params.items()})


def run(sets: list[PairSet], trials: int, frontier: tuple[str, str] | None = None, sampler_seed: int = 0) -> Any:
    """Run the search and print its findings; returns the Optuna study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    reference = [pair.score(lambda inputs: teacher_rule(inputs, CURRENT))[0] for pair in sets]
    print("current rule: first places " + ", ".join(str(len(p.first_places(r))) for p, r in zip(sets, reference))
          + "; Q^AB/F " + ", ".join(f"{r[0]:.4f}" for r in reference)
          + "; SEAM " + ", ".join(f"{r[SEAM]:.4f}" for r in reference))
    start = time.perf_counter()
    trial_params = {k: v for k, v in CURRENT.items()}
    if frontier is None:
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=sampler_seed))
        study.enqueue_trial(trial_params)
        study.optimize(bar_objective(sets, reference), n_trials=trials)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        print(f"\n{trials} trials in {time.perf_counter() - start:.0f} s ({len(done)} completed)")
        feasible = [t for t in done if t.user_attrs["feasible"]]  # the current rule is one
        best = max(feasible, key=lambda t: t.value)
        print(f"best that loses no Q^AB/F and keeps SEAM within 1.1x in every pair (score {best.value:+.4f}): "
              f"first places {best.user_attrs['firsts']}, SEAM {best.user_attrs['seams']}\n  {_shown(best.params)}")
        most = sorted(done, key=lambda t: (min(t.user_attrs["firsts"]), sum(t.user_attrs["firsts"])),
                      reverse=True)[:5]
        print("most first places, constraints ignored (min over pairs, then sum):")
        for t in most:
            print(f"  {t.user_attrs['firsts']} SEAM {t.user_attrs['seams']} score {t.value:+.3f}\n    {_shown(t.params)}")
        reached = sum(min(t.user_attrs["firsts"]) >= 4 for t in done)
        print(f"rules first on >= 4 of 6 in every pair: {reached} of {trials}")
    else:
        study = optuna.create_study(directions=["maximize", "maximize"],
                                    sampler=optuna.samplers.NSGAIISampler(seed=sampler_seed))
        study.enqueue_trial(trial_params)
        study.optimize(frontier_objective(sets, frontier), n_trials=trials)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        print(f"\n{trials} trials in {time.perf_counter() - start:.0f} s; Pareto front of the worst-pair margins "
              f"({frontier[0]}, {frontier[1]}) over {', '.join('+'.join(p.modalities) for p in sets)}:")
        shown = set()
        for t in sorted(study.best_trials, key=lambda t: t.values[0]):
            if tuple(t.values) not in shown:  # NSGA-II evaluates some rules twice
                shown.add(tuple(t.values))
                print(f"  {t.values[0]:+.4f} {t.values[1]:+.4f}  {_shown(t.params)}")
        both = [t for t in done if min(t.values) >= 0]
        print(f"rules first on both {frontier[0]} and {frontier[1]} in every pair: {len(both)} of {trials}")
    return study


def main(argv: Sequence[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=250)
    parser.add_argument("--seed", type=int, default=None,
                        help="held-out phantom set: seeds from EVALUATION_SEED_BASE + this (>= 0; default 500)")
    parser.add_argument("--cases", type=int, default=None, help="phantoms per pair (default 4)")
    parser.add_argument("--pairs", choices=["all", "pet-spect"], default="all")
    parser.add_argument("--frontier", default=None, help="two ranked metrics, e.g. SSIM_S,SF")
    parser.add_argument("--mni152", action="store_true",
                        help="search on bench_quality's MNI152-derived slices instead (needs nilearn)")
    args = parser.parse_args(argv)
    if args.mni152 and (args.cases is not None or args.seed is not None):
        parser.error("--mni152 scores six fixed slices per pair; --cases and --seed apply to phantoms only")
    args.cases = 4 if args.cases is None else args.cases
    args.seed = 500 if args.seed is None else args.seed
    if args.seed < 0:
        parser.error("--seed must be >= 0 (smaller seeds are training seeds)")
    if args.trials < 1 or args.cases < 1:
        parser.error("--trials and --cases must be >= 1")
    frontier = None
    if args.frontier:
        frontier = tuple(m.strip() for m in args.frontier.split(","))
        if len(frontier) != 2 or not set(frontier) <= set(RANK_METRICS):
            parser.error(f"--frontier: two of {', '.join(RANK_METRICS)}")
    pairs = MODALITY_PAIRS if args.pairs == "all" else [p for p in MODALITY_PAIRS if p[1] in ("PET", "SPECT")]
    return run(pair_sets(pairs, args.cases, args.seed, args.mni152), args.trials, frontier)


if __name__ == "__main__":
    main()
