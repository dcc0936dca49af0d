"""Benchmark: speed and memory of the default model against the Laplacian-pyramid baseline, same run.

Prints
- 2D: the default model's ``fuse()`` of one 256x256 pair against ``fuse(..., model="laplacian")``
  (4 levels) of the same pair (bar: at most 3x);
- 3D: a 256x256 volume pair of 64, 128 and 256 slices through ``fuse_volume`` — time per
  slice against the 2D pair time (bar: within 1.5x), linearity in the slice count, and the
  peak resident memory of each run, measured in a fresh child process (bar: <= 2 GB).

Run: ``python benchmarks/bench_engine.py [--repeats 15] [--device auto]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from MedFusionLib.data.examples import example_path
from MedFusionLib.fusion import fuse, load_method
from MedFusionLib.io import read_image


def median_time(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_CHILD = r"""
import json, resource, sys, time
import numpy as np
from MedFusionLib.data.phantoms import make_pair
from MedFusionLib.fusion import fuse_volume
from MedFusionLib.io import LoadedImage
slices, device = int(sys.argv[1]), sys.argv[2]
phantom = make_pair((slices, 256, 256), ("CT", "MRI_T1"), seed=1_000_777)
volumes = [LoadedImage.from_array(phantom.images[m]) for m in ("CT", "MRI_T1")]
del phantom
fuse_volume([LoadedImage.from_array(v.array[:2]) for v in volumes], modalities=["CT", "MRI"], device=device)  # warm-up
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
fused = fuse_volume(volumes, modalities=["CT", "MRI"], device=device, batch_size=16)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "inputs_mb": 2 * volumes[0].array.nbytes / 2**20,
                  "before_mb": baseline / 1024}))
"""


def volume_run(slices: int, device: str) -> dict:
    """Fuse a (slices, 256, 256) phantom pair in a fresh process; its time and peak memory."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(slices), device], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-3d", action="store_true")
    args = parser.parse_args()

    ct, mri = read_image(example_path("ct")).array, read_image(example_path("mri")).array
    model = load_method("default")
    t_lap = median_time(lambda: fuse([ct, mri], model="laplacian"), args.repeats)
    t_model = median_time(lambda: fuse([ct, mri], model=model, device=args.device), args.repeats)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"model: {model.family}, {sum(p.numel() for p in model.network.parameters())} parameters")
    print(f"2D 256x256 pair, median of {args.repeats}:")
    print(f"  Laplacian pyramid (4 levels)  {t_lap * 1e3:8.2f} ms   1.00x (baseline)")
    print(f"  default model                 {t_model * 1e3:8.2f} ms   {t_model / t_lap:4.2f}x   (bar <= 3x) "
          f"{'PASS' if t_model / t_lap <= 3 else 'FAIL'}")
    if args.skip_3d:
        return
    print("3D 256x256 volume pair, fuse_volume, fresh process per run:")
    runs = {}
    for slices in (64, 128, 256):
        runs[slices] = volume_run(slices, args.device)
        r = runs[slices]
        per_slice = r["seconds"] / slices
        print(f"  {slices:3d} slices: {r['seconds']:7.2f} s  {per_slice * 1e3:7.2f} ms/slice "
              f"({per_slice / t_model:4.2f}x the 2D pair; bar <= 1.5x)  peak RSS {r['peak_mb']:7.0f} MB "
              f"(inputs {r['inputs_mb']:.0f} MB)")
    linear = runs[256]["seconds"] / runs[64]["seconds"]
    print(f"  256 / 64 slices time ratio: {linear:4.2f} (linear = 4.00)")
    worst = max(r["seconds"] / s for s, r in runs.items()) / t_model
    peak = max(r["peak_mb"] for r in runs.values())
    print(f"  per-slice bar (<= 1.5x): {'PASS' if worst <= 1.5 else 'FAIL'};  memory bar (<= 2048 MB): "
          f"{'PASS' if peak <= 2048 else 'FAIL'} ({peak:.0f} MB)")


if __name__ == "__main__":
    main()
