"""Benchmark: fusion quality of a model against every built-in baseline on held-out phantoms.

For every modality pair, N phantoms with evaluation-only seeds (never used in training)
are fused by the model and by each baseline; the script prints the mean of Q^AB/F, MI,
SSIM-to-sources, VIF, QW and SF per method, the rank of each method per metric, the mean
rank, and whether the model passes the bars: Q^AB/F at least the best baseline's, and a
better mean rank than every baseline.

``--seed`` picks another held-out phantom set (evaluation seeds start at
``EVALUATION_SEED_BASE + seed``). ``--mni152`` scores six slices (axial, coronal and
sagittal) of MNI152-derived images instead: the real 1 mm ICBM152 T1 template shipped in
nilearn's wheel, with the other modalities made from its tissue maps (see
:func:`MedFusionLib.data.phantoms.mni152_slices`). No model is trained on them, so they
are a check on anatomy the procedural phantoms do not have; it needs ``pip install nilearn``.

``--model dbm`` scores the shipped DBM (paper 000's system, ``medfusion train --recipe dbm``)
instead of the default CNN, against the DBM's own bars: Q^AB/F and SSIM to the sources at least
the Laplacian pyramid's, a block-grid index within 0.03 of the pyramid's, and a fusion time
within 2x the default CNN's (measured here, interleaved). The block-grid index (GRID, see
:func:`MedFusionLib.metrics.block_grid_index`; not ranked) is printed for every method, and so is
COPY (not ranked), the share of the fused image's entropy that its closest source explains,
``max_k I(S_k; F) / H(F)``: 1.0 for a method that copies one source, which MI and VIF reward
(on the PET and SPECT phantoms the guided filter returns the MRI almost unchanged). Where a
baseline's COPY is at least 0.9, the first places are also counted without the copying baselines
(a second line per pair; not a bar). SEAM (not ranked, lower is better) is the share of the fused
image's edge strength that no source has at that pixel (:func:`invented_edge_share`): the seams of
rules that switch between sources, which SF counts as detail and Q^AB/F barely sees.

Per pair it also prints the model's sample std over the cases and the metrics on which it is
first against every baseline (the quality issue's bar: first on at least 4 of the 6 in every
pair). ``--seed 500,900,1300`` pools three held-out phantom sets.

``--model target`` scores the supervised target rule itself (:func:`MedFusionLib.data.targets.saliency_blend`,
the teacher every shipped CNN learns) in the model's row: the ceiling of a model that learned it
perfectly, in seconds, without training. A better teacher is where more first places have to start;
``tune_teacher.py`` searches a family of such rules automatically.

Run: ``python benchmarks/bench_quality.py [--cases 4] [--seed 500[,900,...]] [--mni152] [--model default|dbm|target|FILE]``
"""

from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
from _timing import interleaved_ratio

from MedFusionLib.baselines import BASELINES
from MedFusionLib.data.phantoms import mni152_slices
from MedFusionLib.data.targets import (
    EVALUATION_SEED_BASE,
    MODALITY_PAIRS,
    edge_strength,
    phantom_cases,
    saliency_blend,
    standardise_phantom,
)
from MedFusionLib.fusion import fuse, load_method
from MedFusionLib.metrics import block_grid_index, entropy, evaluate, mutual_information

RANK_METRICS = ["QABF", "MI", "SSIM_S", "VIF", "QW", "SF"]


def phantom_groups(modalities: tuple[str, str], cases: int, seed: int) -> list[list[np.ndarray]]:
    """Held-out procedural phantoms (evaluation seeds), standardised."""
    return [case.inputs for case in phantom_cases(cases, (256, 256), [modalities], seed=EVALUATION_SEED_BASE + seed)]


def mni152_groups(modalities: tuple[str, str], pair_index: int) -> list[list[np.ndarray]]:
    """Six slices (axial, coronal, sagittal at 40 % and 60 % of each axis) of MNI152-derived volumes."""
    phantom = mni152_slices(modalities, seed=EVALUATION_SEED_BASE + pair_index, resolution=1, volume=True)
    volumes = [phantom.images[m] for m in modalities]
    groups = []
    for axis in range(3):
        for fraction in (0.4, 0.6):
            index = int(fraction * volumes[0].shape[axis])
            groups.append([standardise_phantom(np.take(v, index, axis=axis), m) for v, m in zip(volumes, modalities)])
    return groups


#: Unranked columns after the ranked metrics: the block-grid index, the share of F one source explains,
#: and the share of F's edges no source has (seams).
EXTRA_COLUMNS = ["GRID", "COPY", "SEAM"]


def target_rule(inputs: list[np.ndarray]) -> np.ndarray:
    """The supervised target of standardised inputs, as the training sets make it (``phantom_cases``)."""
    return np.clip(saliency_blend(inputs), 0, 1).astype(np.float32)


def copied_share(fused: np.ndarray, inputs: list[np.ndarray]) -> float:
    """``max_k I(S_k; F) / H(F)``: 1 when the fused image is a function of one source alone (it copies
    that source, up to a grey-level mapping), lower the more it carries of the others.

    MI and VIF reward copying: a method that returns one source unchanged scores that source's whole
    entropy as MI and a VIF of 1 against it. This column shows where a lead on them comes from.
    """
    own = entropy(fused, data_range=(0, 1))  # bits, as the MI below
    if own == 0:
        return float("nan")  # a flat image carries nothing of any source: no share to give
    return max(mutual_information(x, fused, base=2.0, data_range=(0, 1)) for x in inputs) / own


def invented_edge_share(fused: np.ndarray, inputs: list[np.ndarray]) -> float:
    """``sum max(0, |grad F| - max_k |grad S_k|) / sum max_k |grad S_k|`` (Sobel magnitudes): the share
    of the fused image's edge strength that no source has at that pixel.

    0 for a copy of a source, and for any convex blend with weights that do not vary across the image
    (its gradient is a blend of the sources'). Where a rule switches between sources (a selection
    map, a cut, a halo), the step between two different grey levels is an edge neither source shows:
    a seam. Q^AB/F barely sees seams (it weights pixels by the sources' own edge strength) and SF
    counts them as detail, so this column shows what a lead on them costs.
    """
    strongest = np.max([edge_strength(x) for x in inputs], axis=0)
    total = strongest.sum()
    if total == 0:
        return float("nan")  # flat sources: no edge strength to compare with
    return float(np.maximum(edge_strength(fused) - strongest, 0).sum() / total)


def score_groups(model, groups: list[list[np.ndarray]],
                 baselines: Sequence[str] = tuple(BASELINES)) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Mean and sample std of the metrics per method (rows: the model, then ``baselines``) over input
    groups of one modality pair; the ranked metrics, then :data:`EXTRA_COLUMNS`."""
    methods = ["model", *baselines]
    totals = {m: [] for m in methods}
    for inputs in groups:
        for method in methods:
            if method == "model" and callable(model):
                fused = model(inputs)
            else:
                fused = fuse(inputs, method=model if method == "model" else method).image
            values = evaluate(fused, inputs, metrics=RANK_METRICS, data_range=(0, 1))
            totals[method].append([values[k] for k in RANK_METRICS]
                                  + [block_grid_index(fused), copied_share(fused, inputs),
                                     invented_edge_share(fused, inputs)])
    means = np.array([np.mean(totals[m], axis=0) for m in methods])
    spreads = np.array([np.std(totals[m], axis=0, ddof=1) if len(groups) > 1 else np.zeros(means.shape[1])
                        for m in methods])
    return methods, means, spreads


#: COPY at or above this: the method mostly returns one source (see :func:`copied_share`).
COPYING = 0.9


def firsts(means: np.ndarray, rivals: np.ndarray | None = None) -> list[str]:
    """The ranked metrics on which the model (row 0) is first against every baseline (ties count as first),
    or against the baselines selected by the boolean ``rivals`` (one per baseline row)."""
    others = means[1:] if rivals is None else means[1:][rivals]
    if len(others) == 0:
        return list(RANK_METRICS)
    return [key for index, key in enumerate(RANK_METRICS) if means[0, index] >= others[:, index].max()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=None, help="held-out phantoms per modality pair (default 4)")
    parser.add_argument("--seed", type=lambda text: [int(v) for v in text.split(",") if v.strip()], default=None,
                        help="held-out phantom set(s): seeds from EVALUATION_SEED_BASE + this (>= 0; default 500); "
                             "a comma list (e.g. 500,900,1300) pools several sets")
    parser.add_argument("--mni152", action="store_true",
                        help="score six fixed MNI152-derived slices per pair instead of procedural phantoms "
                             "(needs nilearn; not combinable with --cases or --seed)")
    parser.add_argument("--model", default="default",
                        help="'default', 'dbm', 'target' (the supervised target rule itself) or a model file")
    args = parser.parse_args()
    if args.mni152 and (args.cases is not None or args.seed is not None):
        parser.error("--mni152 scores six fixed slices per pair; --cases and --seed apply to phantoms only")
    args.cases = 4 if args.cases is None else args.cases
    args.seed = [500] if args.seed is None else args.seed
    if not args.seed or min(args.seed) < 0:
        parser.error("--seed must be >= 0 (smaller seeds are training seeds)")
    model = target_rule if args.model == "target" else load_method(args.model)
    dbm = getattr(model, "family", None) == "dbm"
    shown_model = "target" if args.model == "target" else (f"{model.family.upper()}" if dbm else "MedFusion")
    passed = 0
    first_groups = None
    first_counts: list[int] = []
    for pair_index, modalities in enumerate(MODALITY_PAIRS):
        if args.mni152:
            groups, label = mni152_groups(modalities, pair_index), "6 MNI152-derived slices"
        else:
            groups = [g for seed in args.seed for g in phantom_groups(modalities, args.cases, seed)]
            label = (f"{args.cases} held-out phantoms" + (f" x {len(args.seed)} seed sets "
                     f"({', '.join(map(str, args.seed))})" if len(args.seed) > 1 else f", seed +{args.seed[0]}"))
        first_groups = first_groups or groups
        methods, values, spreads = score_groups(model, groups)
        ranked = values[:, : len(RANK_METRICS)]
        ranks = (-ranked).argsort(axis=0).argsort(axis=0) + 1
        mean_rank = ranks.mean(axis=1)
        print(f"\n{' + '.join(modalities)} ({label}; means, the model's sample std below)")
        print(f"  {'method':14s}" + "".join(f"{k:>9s}" for k in RANK_METRICS + EXTRA_COLUMNS) + "   mean rank")
        for name, row, rank in zip(methods, values, mean_rank):
            shown = shown_model if name == "model" else name
            print(f"  {shown:14s}" + "".join(f"{v:9.4f}" for v in row) + f"   {rank:5.2f}")
            if name == "model":
                print(f"  {'  +- std':14s}" + "".join(f"{v:9.4f}" for v in spreads[0]))
        won = firsts(ranked)
        first_counts.append(len(won))
        print(f"  {shown_model} is first on {len(won)} of {len(RANK_METRICS)}: {', '.join(won) or 'none'}")
        copying = values[1:, len(RANK_METRICS) + EXTRA_COLUMNS.index("COPY")] >= COPYING
        if copying.any():  # not a bar: shows how much of the count the copying methods decide
            fusing = firsts(ranked, ~copying)
            copiers = ", ".join(m for m, c in zip(methods[1:], copying) if c)
            print(f"  ... and on {len(fusing)} of {len(RANK_METRICS)} against the baselines that do not copy one "
                  f"source (COPY < {COPYING}; leaving out {copiers}): {', '.join(fusing) or 'none'}")
        if dbm:  # the DBM's bars: at least the Laplacian pyramid on edges and structure, no block grid
            pyramid = values[methods.index("laplacian")]
            grid = len(RANK_METRICS) + EXTRA_COLUMNS.index("GRID")
            bars = {"Q^AB/F >= Laplacian": values[0, 0] >= pyramid[0],
                    "SSIM_S >= Laplacian": values[0, 2] >= pyramid[2],
                    "GRID <= Laplacian + 0.03": values[0, grid] <= pyramid[grid] + 0.03}
        else:
            bars = {"Q^AB/F >= best baseline": ranked[0, 0] >= ranked[1:, 0].max(),
                    "best mean rank": mean_rank[0] < mean_rank[1:].min()}
        passed += all(bars.values())
        print("  " + "; ".join(f"{name}: {'PASS' if ok else 'FAIL'}" for name, ok in bars.items()))
    print(f"\nmodality pairs passing {'all bars' if dbm else 'both bars'}: {passed} / {len(MODALITY_PAIRS)}")
    print(f"first places per pair ({shown_model}): {', '.join(map(str, first_counts))} of {len(RANK_METRICS)} "
          f"(the quality issue's bar: >= 4 in every pair; {sum(c >= 4 for c in first_counts)} of "
          f"{len(first_counts)} pairs now)")
    if dbm:
        default, inputs = load_method("default"), first_groups[0]
        cnn, mine, ratio = interleaved_ratio(lambda: fuse(inputs, method=default), lambda: fuse(inputs, method=model), 15)
        print(f"fusion time of one 256 x 256 pair: DBM {mine * 1e3:.1f} ms, default CNN {cnn * 1e3:.1f} ms, "
              f"ratio {ratio:.2f} (median of interleaved pairs; bar <= 2): {'PASS' if ratio <= 2 else 'FAIL'}")


if __name__ == "__main__":
    main()
