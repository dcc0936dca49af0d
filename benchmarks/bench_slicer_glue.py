"""Benchmark: overhead of the Slicer module's MRML logic over MedFusionLib's volume fusion, same run.

Fuses a 256x256x128 phantom pair (a) with ``MedFusionLib.fusion.fuse_volume`` on the arrays
and (b) through ``MedFusionLogicCore.fuse`` on volume nodes of a real MRML scene (slicer-core),
without metric tables, with the default model. Prints the median time of each (3 runs) and
the ratio (bar: <= 1.3x), and the peak extra memory of (b) in volume copies, measured with
tracemalloc on NumPy allocations (bar: at most two extra copies of one volume).

Run: ``python benchmarks/bench_slicer_glue.py`` (needs ``pip install slicer-core``).
"""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np
import slicer

from _timing import median_time
from MedFusionLib.data.phantoms import make_pair
from MedFusionLib.fusion import fuse_volume
from MedFusionLib.io import LoadedImage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedFusion"))
from MedFusionSlicerLib import MedFusionLogicCore  # noqa: E402


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

    def library() -> None:
        fuse_volume(volumes, modalities=["CT", "MRI"])

    def through_logic() -> None:
        result = logic.fuse(nodes, modalities=["CT", "MRI"], computeMetrics=False)
        scene.RemoveNode(result.outputVolumeNode)

    t_library = median_time(library, 3)
    t_logic = median_time(through_logic, 3)
    peaks = {}
    for label, run in (("library", library), ("logic", through_logic)):
        tracemalloc.start()
        run()
        peaks[label] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    volume_bytes = arrays[0].astype(np.float32).nbytes
    # Bar: the logic holds at most two more volume-sized arrays than the library at its peak;
    # 1 MB of slack covers the small non-volume allocations (node names, metadata).
    extra_bytes = peaks["logic"] - peaks["library"]
    extra = extra_bytes / volume_bytes
    print("256x256x128 pair, default model, median of 3 runs")
    print(f"  MedFusionLib fuse_volume:   {t_library:6.2f} s   1.00x")
    print(f"  MRML logic (no metrics):    {t_logic:6.2f} s   {t_logic / t_library:4.2f}x   (bar <= 1.3x) "
          f"{'PASS' if t_logic / t_library <= 1.3 else 'FAIL'}")
    print(f"  peak NumPy memory (tracemalloc): library {peaks['library'] / 2**20:.0f} MB, logic "
          f"{peaks['logic'] / 2**20:.0f} MB: {extra:.1f} extra float32 volumes "
          f"(bar <= 2) {'PASS' if extra_bytes <= 2 * volume_bytes + 2**20 else 'FAIL'}")

if __name__ == "__main__":
    main()
