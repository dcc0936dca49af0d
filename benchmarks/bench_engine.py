"""Benchmark: speed and memory of the default model against the Laplacian-pyramid baseline, same run.

Prints
- the CPU, torch's thread count and the instruction set torch's CPU kernels use, so figures from
  different machines can be told apart;
- 2D: the default model's ``fuse()`` of one 256x256 pair against ``fuse(..., method="laplacian")``
  (4 levels) of the same pair (bar: at most 1.5x), the same with the compiled kernels off (the
  PyTorch-only path of installations without numba), and the extra time of ``contributions=True``
  (bar: at most 15 %), each as the median of per-pair ratios timed in alternation;
- 3D: a 256x256 volume pair of 64, 128 and 256 slices through ``fuse_volume`` — time per
  slice against the 2D pair time (bar: within 1.5x), linearity in the slice count, the 256-slice
  time (bar: <= 2 s) and the peak resident memory of each run, measured in a fresh child process
  (bar: <= 2 GB).

51 pairs by default: on a shared 2-core VM the median of 15 pairs moved by +-0.15 between runs
minutes apart (1.27x to 1.58x); with 51 it moved by about half that.

Run: ``python benchmarks/bench_engine.py [--repeats 51] [--device auto]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

import numpy as np
import torch
from _timing import cpu_name, interleaved_ratio

from MedFusionLib.data.examples import example_path
from MedFusionLib.data.phantoms import make_pair
from MedFusionLib.engine import networks
from MedFusionLib.fusion import fuse, load_method
from MedFusionLib.io import read_image

_CHILD = r"""
import json, sys, time
import numpy as np
from MedFusionLib.fusion import fuse_volume
from MedFusionLib.io import LoadedImage
folder, slices, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
volumes = [LoadedImage.from_array(np.load(f"{folder}/{m}.npy", mmap_mode="r")[:slices].copy()) for m in ("ct", "mri")]
fuse_volume([LoadedImage.from_array(v.array[:2]) for v in volumes], modalities=["CT", "MRI"], device=device)  # warm-up
def high_water_mb():
    # VmHWM is this process's own peak; getrusage's ru_maxrss would include the parent's (Linux keeps it across exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
before = high_water_mb()
times = []
for _ in range(3):  # median of 3: this machine's timing noise is large next to one run
    start = time.perf_counter()
    fused = fuse_volume(volumes, modalities=["CT", "MRI"], device=device)
    times.append(time.perf_counter() - start)
    del fused
seconds = sorted(times)[1]
peak = high_water_mb()
print(json.dumps({"seconds": seconds, "peak_mb": peak, "before_mb": before,
                  "inputs_mb": 2 * volumes[0].array.nbytes / 2**20}))
"""


def volume_run(folder: str, slices: int, device: str) -> dict:
    """Fuse the first ``slices`` slices of the saved pair in a fresh process: median time of 3, peak memory."""
    out = subprocess.run([sys.executable, "-c", _CHILD, folder, str(slices), device],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=51)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-3d", action="store_true")
    args = parser.parse_args()

    ct, mri = read_image(example_path("ct")).array, read_image(example_path("mri")).array
    model = load_method("default")
    laplacian = lambda: fuse([ct, mri], method="laplacian")  # noqa: E731
    default = lambda: fuse([ct, mri], method=model, device=args.device)  # noqa: E731
    with_map = lambda: fuse([ct, mri], method=model, device=args.device, contributions=True)  # noqa: E731
    t_lap, t_model, ratio = interleaved_ratio(laplacian, default, args.repeats)
    _, t_map, map_ratio = interleaved_ratio(default, with_map, args.repeats)

    def pytorch_only() -> None:
        networks.USE_KERNELS = False
        try:
            default()
        finally:
            networks.USE_KERNELS = True

    _, t_torch, torch_ratio = interleaved_ratio(laplacian, pytorch_only, args.repeats)
    kernels = networks.compiled_kernels()
    print(f"CPU {cpu_name()}; torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, device {args.device}; "
          f"model: {model.family}, {sum(p.numel() for p in model.network.parameters())} parameters")
    print(f"2D 256x256 pair, medians of {args.repeats} interleaved pairs:")
    print(f"  Laplacian pyramid (4 levels)  {t_lap * 1e3:8.2f} ms   1.00x (baseline)")
    print(f"  default model                 {t_model * 1e3:8.2f} ms   {ratio:4.2f}x   (bar <= 1.5x) "
          f"{'PASS' if ratio <= 1.5 else 'FAIL'}   compiled kernels: "
          f"{'numba ' + __import__('numba').__version__ if kernels else 'none (numba not installed)'}")
    print(f"  default model, PyTorch only   {t_torch * 1e3:8.2f} ms   {torch_ratio:4.2f}x   (the path without numba)")
    print(f"  default model + contributions {t_map * 1e3:8.2f} ms   +{(map_ratio - 1) * 100:.1f} % over the model "
          f"(bar <= 15 %) {'PASS' if map_ratio <= 1.15 else 'FAIL'}")
    if args.skip_3d:
        return
    print("3D 256x256 volume pair (phantom, made once and loaded by each run), fuse_volume, fresh process per run;")
    print("peak RSS is the whole process: Python, torch and the loaded inputs included")
    folder = tempfile.mkdtemp(prefix="medfusion-bench-")
    phantom = make_pair((256, 256, 256), ("CT", "MRI_T1"), seed=1_000_777)
    np.save(f"{folder}/ct.npy", phantom.images["CT"])
    np.save(f"{folder}/mri.npy", phantom.images["MRI_T1"])
    del phantom
    runs = {}
    for slices in (64, 128, 256):
        runs[slices] = volume_run(folder, slices, args.device)
        r = runs[slices]
        per_slice = r["seconds"] / slices
        print(f"  {slices:3d} slices: {r['seconds']:7.2f} s  {per_slice * 1e3:7.2f} ms/slice "
              f"({per_slice / t_model:4.2f}x the 2D pair; bar <= 1.5x)  peak RSS {r['peak_mb']:7.0f} MB "
              f"(before fusing {r['before_mb']:.0f} MB; inputs {r['inputs_mb']:.0f} MB)")
    linear = runs[256]["seconds"] / runs[64]["seconds"]
    print(f"  256 / 64 slices time ratio: {linear:4.2f} (linear = 4.00); 256 slices in {runs[256]['seconds']:.2f} s "
          f"({256 ** 3 / runs[256]['seconds'] / 1e6:.1f} Mvoxel/s; bar <= 2 s) "
          f"{'PASS' if runs[256]['seconds'] <= 2 else 'FAIL'}")
    worst = max(r["seconds"] / s for s, r in runs.items()) / t_model
    peak = max(r["peak_mb"] for r in runs.values())
    print(f"  per-slice bar (<= 1.5x): {'PASS' if worst <= 1.5 else 'FAIL'};  memory bar (<= 2048 MB): "
          f"{'PASS' if peak <= 2048 else 'FAIL'} ({peak:.0f} MB)")


if __name__ == "__main__":
    main()
