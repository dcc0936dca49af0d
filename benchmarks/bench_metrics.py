"""Benchmark: the full fusion-metric set against one Laplacian-pyramid fusion, same run, same images.

Prints the median time of ``LaplacianPyramidFusion(levels=4).fuse([A, B])`` on a
256x256 pair, the median time of ``evaluate(F, [A, B])`` (every reference-free
metric) and of ``evaluate(F, [A, B], T)`` (all 20 metrics), their ratios to the
fusion (the bar: the full set under 10x), and a per-metric breakdown.

Run: ``python benchmarks/bench_metrics.py [--size 256] [--repeats 15]``
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
from _timing import median_time

from MedFusionLib.baselines import LaplacianPyramidFusion
from MedFusionLib.metrics import METRICS, evaluate, fmi_backend


def test_images(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CT-like and an MRI-like 8-bit image of one synthetic head, and their average as target."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size - 0.5
    radius = np.hypot(x / 0.42, y / 0.48)
    skull = (radius > 0.85) & (radius < 0.95)
    brain = radius < 0.85
    texture = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * np.exp(-(np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size))) * 40) ** 2)))
    texture /= np.abs(texture).max()
    ct = np.where(skull, 230, np.where(brain, 90 + 10 * texture, 0)) + rng.normal(0, 3, (size, size))
    mri = np.where(skull, 20, np.where(brain, 120 + 70 * texture, 0)) + rng.normal(0, 4, (size, size))
    a, b = (np.clip(v, 0, 255).astype(np.uint8) for v in (ct, mri))
    return a, b, ((a.astype(float) + b) / 2).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    a, b, target = test_images(args.size)
    laplacian = LaplacianPyramidFusion(levels=4)
    fused = laplacian.fuse([a, b])
    t_fusion = median_time(lambda: laplacian.fuse([a, b]), args.repeats)
    t_free = median_time(lambda: evaluate(fused, [a, b]), args.repeats)
    t_full = median_time(lambda: evaluate(fused, [a, b], target), args.repeats)

    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"FMI backend: {fmi_backend()}")
    print(f"images: {args.size}x{args.size} pair + fused + target, median of {args.repeats} runs")
    print(f"Laplacian-pyramid fusion (4 levels):  {t_fusion * 1e3:8.2f} ms   (baseline, 1.00x)")
    print(f"reference-free metrics (14):           {t_free * 1e3:8.2f} ms   ratio {t_free / t_fusion:5.2f}x")
    print(f"full metric set with target (20):      {t_full * 1e3:8.2f} ms   ratio {t_full / t_fusion:5.2f}x   "
          f"(bar: < 10x) {'PASS' if t_full / t_fusion < 10 else 'FAIL'}")
    print("per metric, each computed alone (shared intermediates not reused):")
    for key, info in METRICS.items():
        t = median_time(lambda key=key: evaluate(fused, [a, b], target, metrics=[key]), max(3, args.repeats // 3))
        print(f"  {info.label:14s} {t * 1e3:8.2f} ms   {t / t_fusion:5.2f}x")


if __name__ == "__main__":
    main()
