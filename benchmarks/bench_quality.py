"""Benchmark: fusion quality of a model against every built-in baseline on held-out phantoms.

For every modality pair, N phantoms with evaluation-only seeds (never used in training)
are fused by the model and by each baseline; the script prints the mean of Q^AB/F, MI,
SSIM-to-sources, VIF, QW and SF per method, the rank of each method per metric, the mean
rank, and whether the model passes the bars: Q^AB/F at least the best baseline's, and a
better mean rank than every baseline.

Run: ``python benchmarks/bench_quality.py [--cases 4] [--model default]``
"""

from __future__ import annotations

import argparse

import numpy as np

from MedFusionLib.baselines import BASELINES
from MedFusionLib.data.targets import (
    EVALUATION_SEED_BASE,
    MODALITY_PAIRS,
    phantom_cases,
)
from MedFusionLib.fusion import fuse, load_method
from MedFusionLib.metrics import evaluate

RANK_METRICS = ["QABF", "MI", "SSIM_S", "VIF", "QW", "SF"]


def score_pair(model, modalities: tuple[str, str], cases: int) -> tuple[list[str], np.ndarray]:
    """Mean metrics per method (rows) for one modality pair."""
    methods = ["model", *BASELINES]
    totals = {m: [] for m in methods}
    for case in phantom_cases(cases, (256, 256), [modalities], seed=EVALUATION_SEED_BASE + 500):
        for method in methods:
            fused = fuse(case.inputs, model=model if method == "model" else method).image
            values = evaluate(fused, case.inputs, metrics=RANK_METRICS, data_range=(0, 1))
            totals[method].append([values[k] for k in RANK_METRICS])
    return methods, np.array([np.mean(totals[m], axis=0) for m in methods])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=4, help="held-out phantoms per modality pair")
    parser.add_argument("--model", default="default", help="'default' or a model file")
    args = parser.parse_args()
    model = load_method(args.model)
    passed = 0
    for modalities in MODALITY_PAIRS:
        methods, values = score_pair(model, modalities, args.cases)
        ranks = (-values).argsort(axis=0).argsort(axis=0) + 1
        mean_rank = ranks.mean(axis=1)
        qabf_ok = values[0, 0] >= values[1:, 0].max()
        rank_ok = mean_rank[0] < mean_rank[1:].min()
        passed += qabf_ok and rank_ok
        print(f"\n{' + '.join(modalities)} ({args.cases} held-out phantoms)")
        print(f"  {'method':14s}" + "".join(f"{k:>9s}" for k in RANK_METRICS) + "   mean rank")
        for name, row, rank in zip(methods, values, mean_rank):
            label = "MedFusion" if name == "model" else name
            print(f"  {label:14s}" + "".join(f"{v:9.4f}" for v in row) + f"   {rank:5.2f}")
        print(f"  Q^AB/F >= best baseline: {'PASS' if qabf_ok else 'FAIL'}; "
              f"best mean rank: {'PASS' if rank_ok else 'FAIL'}")
    print(f"\nmodality pairs passing both bars: {passed} / {len(MODALITY_PAIRS)}")


if __name__ == "__main__":
    main()
