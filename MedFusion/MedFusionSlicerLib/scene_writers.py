"""What a fusion writes into the scene: the fused volume, the metric tables and the per-slice plot.

Each writer records how to undo what it changed (``undo``: callables run in reverse order
when a later step fails), so the commit phase can leave the scene exactly as it was.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import slicer  # the MRML classes: from the Slicer application or the slicer-core wheel
import vtk
import vtk.util.numpy_support

from MedFusionLib.metrics import METRICS

from .checks import parent_transform_id
from .geometry import array_to_matrix
from .jobs import FusionComputation, FusionJob

Undo = list[Callable[[], None]]

_MEDFUSION_METRIC_ATTRIBUTE = "MedFusion.metric"  # marks plot series this logic made (reused on re-runs)
# Colour-blind-safe (Okabe-Ito) colours for the plot series.
_PLOT_COLOURS = [(0.0, 0.45, 0.70), (0.90, 0.62, 0.0), (0.0, 0.62, 0.45), (0.80, 0.47, 0.65),
                 (0.34, 0.71, 0.91), (0.84, 0.37, 0.0), (0.94, 0.89, 0.26)]


def write_volume(job: FusionJob, fused: np.ndarray, undo: Undo) -> Any:
    """The fused voxels into the output node (created when the job has none), on input 1's exact grid."""
    return _write_scalar_volume(job, fused, vtk.VTK_FLOAT, job.outputVolumeNode, job.outputName, undo)


def _write_scalar_volume(job: FusionJob, voxels: np.ndarray, vtk_type: int, node: Any, name: str, undo: Undo) -> Any:
    """``voxels`` (k, j, i) into ``node`` (or a new scalar volume called ``name``) on input 1's exact grid."""
    image = vtk.vtkImageData()
    image.SetDimensions(*reversed(voxels.shape))  # VTK wants (i, j, k); the array is (k, j, i)
    image.AllocateScalars(vtk_type, 1)
    # One copy, straight into VTK's buffer (like slicer.util.updateVolumeFromArray), from a possibly
    # non-contiguous (moved-axis) view or a memory-mapped file of the array.
    target = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(voxels.shape)
    target[...] = voxels
    output = node
    if output is None:
        output = job.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", job.scene.GenerateUniqueName(name))
    else:
        # Swap a new image in rather than reallocating the old one in place, so the old one can
        # be put back untouched if a later step fails.
        old_image, old_matrix = output.GetImageData(), vtk.vtkMatrix4x4()
        output.GetIJKToRASMatrix(old_matrix)
        old_transform = parent_transform_id(output)
        undo.append(lambda: (
            output.SetIJKToRASMatrix(old_matrix),
            output.SetAndObserveImageData(old_image),
            output.SetAndObserveTransformNodeID(old_transform),
        ))
    output.SetIJKToRASMatrix(array_to_matrix(job.referenceIJKToRAS))  # exactly input 1's geometry
    output.SetAndObserveImageData(image)
    output.SetAndObserveTransformNodeID(job.parentTransformNodeID)
    if output.GetDisplayNode() is None:
        output.CreateDefaultDisplayNodes()
    return output


#: Input colours of the contribution maps: input 1 orange, input 2 blue, then the plot colours.
_INPUT_COLOURS = [(0.90, 0.62, 0.0), (0.0, 0.45, 0.70), *_PLOT_COLOURS[2:]]


def write_contributions(job: FusionJob, contributions: np.ndarray, undo: Undo) -> Any:
    """The contribution map as a volume to overlay on the fused one, with its own colour table.

    - Two inputs: input 1's share of every fused voxel, ``float32`` in [0, 1] (input 2's is one
      minus it), coloured from input 2's blue (0: all from input 2) through white (0.5: equal
      shares) to input 1's orange (1: all from input 1).
    - Three or more: the number of the input with the largest share (1..K), each input in its own
      colour, named after its volume in the colour table (Slicer's Data Probe shows the name).

    :param job: the fusion job (the node to write, if chosen, and the inputs' names).
    :param contributions: ``(K, k, j, i)`` shares from the computation.
    :param undo: as for the other writers.
    """
    count = contributions.shape[0]
    name = f"{job.outputName} contributions"
    colours = job.scene.AddNewNodeByClass("vtkMRMLColorTableNode", job.scene.GenerateUniqueName(f"{name} colours"))
    colours.SetTypeToUser()
    if count == 2:
        voxels = contributions[0]
        colours.SetNumberOfColors(256)
        (r1, g1, b1), (r2, g2, b2) = _INPUT_COLOURS[0], _INPUT_COLOURS[1]
        for index in range(256):
            t = index / 255.0  # input 1's share
            far, near = ((r2, g2, b2), 1.0 - 2.0 * t) if t < 0.5 else ((r1, g1, b1), 2.0 * t - 1.0)
            rgb = [1.0 + (c - 1.0) * near for c in far]  # white at equal shares
            colours.SetColor(index, f"{job.inputNames[0]} {round(100 * t)}%", *rgb, 1.0)
        node = _write_scalar_volume(job, voxels, vtk.VTK_FLOAT, job.contributionVolumeNode, name, undo)
        window = (0.0, 1.0)
    else:
        voxels = np.argmax(contributions, axis=0).astype(np.uint8) + 1
        colours.SetNumberOfColors(count + 1)
        colours.SetColor(0, "none", 0.0, 0.0, 0.0, 0.0)
        for index in range(count):
            rgb = _INPUT_COLOURS[index % len(_INPUT_COLOURS)]
            colours.SetColor(index + 1, job.inputNames[index], *rgb, 1.0)
        node = _write_scalar_volume(job, voxels, vtk.VTK_UNSIGNED_CHAR, job.contributionVolumeNode, name, undo)
        window = (0.0, float(count))
    display = node.GetDisplayNode()
    old = (display.GetColorNodeID(), display.GetAutoWindowLevel(), display.GetWindow(), display.GetLevel())
    undo.append(lambda: (display.SetAndObserveColorNodeID(old[0]), display.SetAutoWindowLevel(old[1]),
                         display.SetWindowLevel(old[2], old[3])))
    display.SetAndObserveColorNodeID(colours.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*window)
    return node


def table_node(node: Any, scene: Any, name: str, undo: Undo) -> Any:
    """The given table node (its old table restorable), or a new one."""
    if node is None:
        return scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    old_table = node.GetTable()
    undo.append(lambda: node.SetAndObserveTable(old_table))
    return node


def metrics_table(computation: FusionComputation) -> vtk.vtkTable:
    """One row per metric: key, label, value, direction, definition, reference; then fusion time."""
    columns = {name: vtk.vtkStringArray() for name in ("metric", "name", "direction", "definition", "reference")}
    value = vtk.vtkDoubleArray()
    value.SetName("value")
    rows = [
        (key, METRICS[key].label, v, METRICS[key].direction, METRICS[key].definition, METRICS[key].reference)
        for key, v in computation.metrics.items()
    ]
    rows.append(("time_s", "fusion time", computation.seconds, "lower is better",
                 f"wall time of the fusion ({computation.methodName}), seconds, metrics excluded", "-"))
    for key, label, v, direction, definition, reference in rows:
        columns["metric"].InsertNextValue(key)
        columns["name"].InsertNextValue(label)
        value.InsertNextValue(v)
        columns["direction"].InsertNextValue(direction)
        columns["definition"].InsertNextValue(definition)
        columns["reference"].InsertNextValue(reference)
    table = vtk.vtkTable()
    for name in ("metric", "name"):
        columns[name].SetName(name)
        table.AddColumn(columns[name])
    table.AddColumn(value)
    for name in ("direction", "definition", "reference"):
        columns[name].SetName(name)
        table.AddColumn(columns[name])
    return table


def describe_metrics_columns(node: Any) -> None:
    node.SetUseColumnTitleAsColumnHeader(True)
    node.SetColumnDescription(
        "value", "volume value: mean of the per-slice values over slices where some input is not constant"
    )


def slice_table(computation: FusionComputation, keys: Sequence[str]) -> vtk.vtkTable:
    """One row per slice: its index and the value of each metric (NaN on skipped slices)."""
    table = vtk.vtkTable()
    index = vtk.vtkIntArray()
    index.SetName("slice")
    for s in computation.sliceIndices:
        index.InsertNextValue(int(s))
    table.AddColumn(index)
    for key in keys:
        column = vtk.vtkDoubleArray()
        column.SetName(key)
        for v in computation.sliceMetrics[key]:
            column.InsertNextValue(float(v))
        table.AddColumn(column)
    return table


def plot(job: FusionJob, slice_table_node: Any, undo: Undo) -> tuple[Any, list[Any]]:
    """The chosen metrics against the slice index, in the job's chart (reusing its series) or a new one."""
    scene = job.scene
    chart = job.plotChartNode
    reusable: dict[str, Any] = {}
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName("MedFusion metrics per slice"))
    else:
        old_ids = [chart.GetNthPlotSeriesNodeID(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
        old_titles = (chart.GetTitle(), chart.GetXAxisTitle(), chart.GetYAxisTitle())

        def restore_chart() -> None:
            chart.RemoveAllPlotSeriesNodeIDs()
            for node_id in old_ids:
                chart.AddAndObservePlotSeriesNodeID(node_id)
            chart.SetTitle(old_titles[0])
            chart.SetXAxisTitle(old_titles[1])
            chart.SetYAxisTitle(old_titles[2])

        undo.append(restore_chart)
        # Series this logic made on an earlier run are reused, so re-running does not pile them up.
        for node_id in old_ids:
            node = scene.GetNodeByID(node_id)
            key = node.GetAttribute(_MEDFUSION_METRIC_ATTRIBUTE) if node is not None else None
            if key:
                reusable[key] = node
        chart.RemoveAllPlotSeriesNodeIDs()
    chart.SetTitle("MedFusion: fusion quality per slice")
    chart.SetXAxisTitle(f"slice index (along {'KJI'[job.task.axis]})")
    chart.SetYAxisTitle("metric value")
    series_nodes = []
    for key in job.plotMetrics:
        series = reusable.get(key)
        if series is None:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(METRICS[key].label))
            series.SetAttribute(_MEDFUSION_METRIC_ATTRIBUTE, key)
            # A fixed palette, not SetUniqueColor(): the same metric keeps its colour across runs,
            # and it does not depend on the Colors module's random colour table being loaded.
            series.SetColor(*_PLOT_COLOURS[len(series_nodes) % len(_PLOT_COLOURS)])
        else:
            old = (series.GetTableNodeID(), series.GetXColumnName(), series.GetYColumnName())
            undo.append(lambda s=series, o=old: (
                s.SetAndObserveTableNodeID(o[0]), s.SetXColumnName(o[1]), s.SetYColumnName(o[2])
            ))
        series.SetAndObserveTableNodeID(slice_table_node.GetID())
        series.SetXColumnName("slice")
        series.SetYColumnName(key)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        series_nodes.append(series)
    return chart, series_nodes
