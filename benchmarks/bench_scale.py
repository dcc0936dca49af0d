"""Benchmark: scaling out. Prints figures; fails nothing.

- Batch: ``run_batch`` of N cases made of the bundled volume pair (CT + MRI, 48 x 96 x 96, default
  model, metrics on), in this process, then on a local Dask cluster of 1 and 2 worker processes
  (``workers=``, cluster start-up included and also shown apart). Cases per minute, each Dask
  run's ratio against the in-process run, and 2 workers against 1. Outputs are checked identical.
- Training: the default recipe for a fixed number of steps (no early stopping) in one process, then
  under ``torchrun --nproc_per_node=2`` (gloo on the CPU). Steps per second and blocks per second
  (each torchrun step trains one batch per rank), as ratios against the single process.

Run: ``python benchmarks/bench_scale.py [--cases 16] [--steps 150]``
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _timing import cpu_name

from MedFusionLib.batch import Group, run_batch
from MedFusionLib.data.examples import example_path


def _batch(cases: int, folder: Path, **where: object) -> tuple[float, object]:
    groups = [Group(f"case{i}", (example_path("ct_volume"), example_path("mri_volume")), modalities=("CT", "MRI"))
              for i in range(cases)]
    start = time.perf_counter()
    report = run_batch(groups, folder, **where)
    return time.perf_counter() - start, report


def _cluster_start(workers: int) -> float:
    from MedFusionLib.cluster import local_cluster

    start = time.perf_counter()
    with local_cluster(workers):
        started = time.perf_counter() - start
    return started


def _train(processes: int, steps: int, folder: Path) -> dict:
    """The default recipe for ``steps`` steps in ``processes`` processes; its history."""
    output = folder / f"model_{processes}.pt"
    arguments = ["train", "--recipe", "default", "--iterations", str(steps), "-o", str(output), "-q"]
    if processes == 1:
        command = [sys.executable, "-m", "MedFusionLib.cli", *arguments]
    else:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={processes}",
                   "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "MedFusionLib.cli", *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    return json.loads(Path(f"{output}.history.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    print(f"CPU {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads in this process")
    work = Path(tempfile.mkdtemp(prefix="medfusion-scale-"))

    print(f"\nbatch: {args.cases} cases of the bundled CT + MRI volumes (48x96x96), default model, metrics on")
    _batch(2, work / "warm")  # imports, model, numba kernels
    local_s, _ = _batch(args.cases, work / "local")
    print(f"  in this process           {local_s:7.1f} s  {60 * args.cases / local_s:6.1f} cases/min   1.00x")
    dask_s = {}
    for workers in (1, 2):
        seconds, report = _batch(args.cases, work / f"dask{workers}", workers=workers)
        dask_s[workers] = seconds
        same = all(filecmp.cmp(work / "local" / n, work / f"dask{workers}" / n, shallow=False)
                   for n in os.listdir(work / "local") if n.endswith(".nii.gz"))
        start_s = _cluster_start(workers)
        print(f"  Dask, {workers} worker process(es) {seconds:7.1f} s  {60 * args.cases / seconds:6.1f} cases/min  "
              f"{local_s / seconds:5.2f}x  (cluster start-up {start_s:.1f} s of it; "
              f"{60 * args.cases / max(seconds - start_s, 1e-9):.1f} cases/min without; "
              f"outputs identical: {same}; {report.done} done)")
    print(f"  2 workers against 1 worker: {dask_s[1] / dask_s[2]:.2f}x (each worker runs PyTorch on one thread; "
          "the in-process run uses every core)")

    print(f"\ntraining: default recipe, {args.steps} steps (batch 16 blocks of 64x64 per rank and step)")
    single = _train(1, args.steps, work)
    rates = {}
    for processes, history in ((1, single), (2, _train(2, args.steps, work))):
        steps = len(history["train_loss"])
        rates[processes] = steps / history["seconds"]
        print(f"  {processes} process(es){' (torchrun)' if processes > 1 else '           '}  {history['seconds']:6.1f} s  "
              f"{rates[processes]:6.2f} steps/s  {rates[processes] * 16 * processes:7.1f} blocks/s  "
              f"{rates[processes] / rates[1]:4.2f}x steps/s, {rates[processes] * processes / rates[1]:4.2f}x blocks/s")


if __name__ == "__main__":
    main()
