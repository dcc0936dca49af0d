"""Benchmark: the Slicer module's background fusion (worker process, file exchange) against MedFusionLib.

Fuses a 256x256x128 phantom pair with the default model, no metric tables:

(a) ``MedFusionLib.fusion.fuse_volume`` on the arrays, in this process (the baseline);
(b) the module's background run on volume nodes of a real MRML scene (slicer-core): prepare,
    ``BackgroundFusion`` with a warm worker process (task written to ``.npy`` files, computed
    there, result read back memory-mapped), commit -- polled as the widget polls it.

Prints the median time of each (5 interleaved pairs) and the median of the pairs' ratios (bar <= 1.3x); the fixed cost of a new
worker (process start plus imports, bar < 3 s; then its warm-up); and peak memory in float32
volume copies: this process's peak (the larger of prepare -- the voxel copies, freed once written
for the worker -- and commit, whose output image VTK allocates) plus the worker's own traced
peak, less what ``fuse_volume`` alone needs (bar: at most 3 extra copies).

Run: ``python benchmarks/bench_slicer_glue.py`` (needs ``pip install slicer-core``).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import slicer

from _timing import cpu_name
from MedFusionLib.data.phantoms import make_pair
from MedFusionLib.fusion import fuse_volume
from MedFusionLib.io import LoadedImage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedFusion"))
from MedFusionSlicerLib import BackgroundFusion, MedFusionLogicCore  # noqa: E402
from MedFusionSlicerLib.process import POOL, exchange_root  # noqa: E402
from MedFusionSlicerLib.worker import TRACE_MEMORY_VARIABLE  # noqa: E402

REPEATS = 5


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    phantom = make_pair((128, 256, 256), ("CT", "MRI_T1"), seed=1_000_888)
    arrays = [phantom.images["CT"], phantom.images["MRI_T1"]]
    del phantom
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    nodes = []
    for name, array in zip(("CT", "MRI"), arrays):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(node, array)
        nodes.append(node)
    volumes = [LoadedImage.from_array(a) for a in arrays]
    logic = MedFusionLogicCore()
    runs = []

    def library() -> None:
        fuse_volume(volumes, modalities=["CT", "MRI"])

    def background() -> None:
        run = BackgroundFusion(logic, logic.prepare(nodes, modalities=["CT", "MRI"], computeMetrics=False)).start()
        while run.isRunning():
            run.progress
            time.sleep(0.01)  # the widget polls every 100 ms; finer here, so polling adds little to the figure
        result = run.finish()
        runs.append(run)
        scene.RemoveNode(result.outputVolumeNode)

    print(f"CPU: {cpu_name()}; 256x256x128 pair {arrays[0].dtype}/{arrays[1].dtype}, default model, no metrics")
    print(f"  exchange folder: {exchange_root(4 * arrays[0].astype(np.float32).nbytes) or 'the temporary folder (disk)'}")
    cold = POOL.waitUntilWarm(timeout=120)
    # Interleaved (library, background) pairs: on a shared 2-core machine the speed drifts by
    # 20-40 % over a minute, so timing all of one and then all of the other measures the drift.
    library()
    background()
    pairs = [(timed(library), timed(background)) for _ in range(REPEATS)]
    t_library = statistics.median(p[0] for p in pairs)
    t_background = statistics.median(p[1] for p in pairs)
    ratio = statistics.median(b / a for a, b in pairs)
    print("  pairs (library s, background s):", ", ".join(f"({a:.2f}, {b:.2f})" for a, b in pairs))
    print(f"  MedFusionLib fuse_volume:         {t_library:6.2f} s   1.00x")
    print(f"  background run (warm worker):     {t_background:6.2f} s   {ratio:4.2f}x   (median of the pairs' "
          f"ratios; bar <= 1.3x) "
          f"{'PASS' if ratio <= 1.3 else 'FAIL'}   (worker took the job {runs[-1].workerStartSeconds:.3f} s "
          "after start())")
    print(f"  a new worker: process start + imports {cold['imports_s']:.2f} s (bar < 3 s) "
          f"{'PASS' if cold['imports_s'] < 3 else 'FAIL'}; with its warm-up (model, metric kernels) "
          f"{cold['warm_s']:.2f} s -- paid once, while the user sets up the module, not per run")

    # Memory, in a fresh worker that traces its NumPy allocations (tracing slows it: not timed).
    tracemalloc.start()
    library()
    library_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    POOL.shutdown()
    os.environ[TRACE_MEMORY_VARIABLE] = "1"
    POOL.waitUntilWarm(timeout=120)
    tracemalloc.start()
    run = BackgroundFusion(logic, logic.prepare(nodes, modalities=["CT", "MRI"], computeMetrics=False)).start()
    while run.isRunning():
        time.sleep(0.01)
    prepare_peak = tracemalloc.get_traced_memory()[1]  # the voxel copies, freed once written for the worker
    tracemalloc.reset_peak()
    scene.RemoveNode(run.finish().outputVolumeNode)
    commit_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    volume_bytes = arrays[0].astype(np.float32).nbytes
    vtk_output = volume_bytes  # the output image, allocated by VTK at commit (not traced)
    main_peak = max(prepare_peak, commit_peak + vtk_output)
    worker_peak = run.workerPeakTracedBytes
    # Conservative: the two processes' peaks are added although they do not coincide (the worker
    # computes after this process has written and freed its copies).
    extra = (main_peak + worker_peak - library_peak) / volume_bytes
    print(f"  peak memory: fuse_volume {library_peak / 2**20:.0f} MB; background run: this process "
          f"{main_peak / 2**20:.0f} MB (prepare {prepare_peak / 2**20:.0f} MB traced; commit "
          f"{commit_peak / 2**20:.0f} MB traced + {vtk_output / 2**20:.0f} MB output image), worker "
          f"{worker_peak / 2**20:.0f} MB traced: {extra:.1f} float32 volumes more than fuse_volume "
          f"(bar <= 3) {'PASS' if extra <= 3 else 'FAIL'}")
    POOL.shutdown()


if __name__ == "__main__":
    main()
