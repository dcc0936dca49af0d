"""The MedFusion Slicer module's MRML logic, run against a real MRML scene.

``slicer-core`` (PyPI) provides Slicer's MRML library without the Qt application:
``slicer.vtkMRMLScene``, volume/table/plot nodes and ``slicer.util``. These tests build
volumes with known geometry (oblique direction, anisotropic spacing, non-zero origin),
run :class:`MedFusionLogicCore` on them, and check the output geometry and values, the
metric tables and the plot, that inputs are untouched, and that every refused input,
cancel and failure leaves the scene exactly as it was. No fake ``slicer`` module.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import slicer
    import vtk

    _SLICER_CORE = hasattr(slicer, "vtkMRMLScene") and hasattr(slicer, "util")
    _WHY = "" if _SLICER_CORE else "the installed 'slicer' package is not slicer-core (no vtkMRMLScene)"
except ImportError as error:  # only when the wheel is missing for this platform/Python
    _SLICER_CORE, _WHY = False, f"slicer-core cannot be imported: {error}"
if not _SLICER_CORE:
    pytest.skip(f"MRML scene unavailable: {_WHY} (pip install slicer-core)", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedFusion"))

from MedFusionSlicerLib import (
    DEFAULT_PLOT_METRICS,
    BackgroundFusion,
    MedFusionLogicCore,
    geometry_from_ijk_to_ras,
    ijk_to_ras_from_geometry,
)

from MedFusionLib.errors import InputError
from MedFusionLib.fusion import FusionCancelled, fuse_volume, to_unit_range
from MedFusionLib.metrics import METRICS, metric_names

SHAPE = (6, 24, 20)  # (k, j, i): small, so the whole file runs in seconds


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


#: Oblique direction, anisotropic spacing (0.7, 0.9, 2.5 mm), non-zero origin.
OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = _rotation(0.3, -0.2, 0.5) @ np.diag([0.7, 0.9, 2.5])
OBLIQUE[:3, 3] = [12.5, -31.0, 47.25]


def _phantom(seed: int, dtype: type = np.float32, scale: float = 1000.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    blob = np.exp(-((i - 0.2 * seed % 1) ** 2 + j**2 + 0.5 * k**2) * (2 + seed))
    return (scale * (blob + 0.1 * rng.random(SHAPE))).astype(dtype)


def _add_volume(scene, array: np.ndarray, matrix: np.ndarray = OBLIQUE, name: str = "volume",
                cls: str = "vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(cls, name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    slicer.util.updateVolumeFromArray(node, array)
    if cls == "vtkMRMLScalarVolumeNode":  # slicer-core has no colour tables for label/vector display nodes
        node.CreateDefaultDisplayNodes()
    return node


def _matrix(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def _fingerprint(node) -> tuple:
    """What must not change on a node: its voxels (hash), its geometry and its image object."""
    array = slicer.util.arrayFromVolume(node)
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(), _matrix(node).tobytes(), \
        array.shape, node.GetImageData()


def _scene_state(scene) -> list[tuple[str, str]]:
    return sorted((scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetClassName())
                  for i in range(scene.GetNumberOfNodes()))


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene  # slicer.util helpers look for the scene there, as in the application
    yield scene
    scene.Clear(True)


@pytest.fixture
def inputs(scene):
    return [_add_volume(scene, _phantom(1, np.int16), name="CT"), _add_volume(scene, _phantom(2), name="MRI")]


@pytest.fixture
def core():
    return MedFusionLogicCore()


def _column(table_node, name: str) -> list:
    column = table_node.GetTable().GetColumnByName(name)
    assert column is not None, f"no column {name!r}"
    return [column.GetValue(r) for r in range(column.GetNumberOfTuples())]


# -------------------------------------------------------------------------- geometry


def test_ras_lps_conversion_agrees_with_simpleitk():
    """The RAS <-> LPS conversion, checked against SimpleITK's own index-to-point mapping."""
    import SimpleITK as sitk

    spacing, origin, direction = geometry_from_ijk_to_ras(OBLIQUE)
    np.testing.assert_allclose(spacing, [0.7, 0.9, 2.5])
    np.testing.assert_allclose(ijk_to_ras_from_geometry(spacing, origin, direction), OBLIQUE, atol=1e-12)
    image = sitk.Image(4, 5, 6, sitk.sitkFloat32)
    image.SetSpacing(spacing), image.SetOrigin(origin), image.SetDirection(direction)
    for index in [(0, 0, 0), (3, 0, 0), (0, 4, 0), (0, 0, 5), (3, 4, 5)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = OBLIQUE @ np.array([*index, 1.0])
        np.testing.assert_allclose(lps * [-1, -1, 1], ras[:3], atol=1e-9)


# -------------------------------------------------------------------------- fusion on a real scene


def test_average_fusion_writes_volume_tables_and_plot(scene, inputs, core):
    before_inputs = [_fingerprint(n) for n in inputs]
    count_before = scene.GetNumberOfNodes()
    reports = []
    result = core.fuse(inputs, method="average", progress=lambda f, m: reports.append(f))

    output = result.outputVolumeNode
    assert output.GetClassName() == "vtkMRMLScalarVolumeNode" and output.GetScene() is scene
    assert np.array_equal(_matrix(output), _matrix(inputs[0]))  # exactly input 1's IJK-to-RAS
    fused = slicer.util.arrayFromVolume(output)
    assert fused.shape == SHAPE and fused.dtype == np.float32
    expected = (to_unit_range(_phantom(1, np.int16)) + to_unit_range(_phantom(2))) / 2
    np.testing.assert_allclose(fused, expected, atol=1e-6)
    assert [_fingerprint(n) for n in inputs] == before_inputs  # inputs untouched

    metric_keys = [k for k in metric_names() if METRICS[k].family != "target"]
    table = result.metricsTableNode
    assert table.IsA("vtkMRMLTableNode") and table.GetNumberOfRows() == len(metric_keys) + 1
    assert [table.GetTable().GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())] == \
        ["metric", "name", "value", "direction", "definition", "reference"]
    assert _column(table, "metric") == [*metric_keys, "time_s"]
    assert _column(table, "direction")[:len(metric_keys)] == [METRICS[k].direction for k in metric_keys]
    assert _column(table, "reference")[:len(metric_keys)] == [METRICS[k].reference for k in metric_keys]
    values = dict(zip(_column(table, "metric"), _column(table, "value")))
    assert values["QABF"] == pytest.approx(result.metrics["QABF"]) and 0 < values["QABF"] <= 1
    # the volume value is the mean of the per-slice values
    assert result.metrics["MI"] == pytest.approx(np.nanmean(result.sliceMetrics["MI"]))

    per_slice = result.sliceTableNode
    assert per_slice.GetNumberOfRows() == SHAPE[0]
    assert _column(per_slice, "slice") == list(range(SHAPE[0]))
    assert per_slice.GetTable().GetColumnByName("QABF") is not None

    chart = result.plotChartNode
    assert chart.GetNumberOfPlotSeriesNodes() == len(DEFAULT_PLOT_METRICS) == len(result.plotSeriesNodes)
    for key, series in zip(DEFAULT_PLOT_METRICS, result.plotSeriesNodes):
        assert series.GetTableNodeID() == per_slice.GetID()
        assert (series.GetXColumnName(), series.GetYColumnName()) == ("slice", key)
    # new nodes: volume + its display node, two tables, the chart and its series
    assert scene.GetNumberOfNodes() - count_before == 2 + 2 + 1 + len(DEFAULT_PLOT_METRICS)
    assert reports == sorted(reports) and reports[-1] == 1.0


def test_rerun_into_existing_nodes_adds_nothing(scene, inputs, core):
    first = core.fuse(inputs, method="average")
    count = scene.GetNumberOfNodes()
    second = core.fuse(inputs, outputVolumeNode=first.outputVolumeNode, method="maximum",
                       metricsTableNode=first.metricsTableNode, sliceTableNode=first.sliceTableNode,
                       plotChartNode=first.plotChartNode)
    assert scene.GetNumberOfNodes() == count
    assert second.outputVolumeNode is first.outputVolumeNode
    assert second.plotChartNode.GetNumberOfPlotSeriesNodes() == len(DEFAULT_PLOT_METRICS)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(second.outputVolumeNode),
                               np.maximum(to_unit_range(_phantom(1, np.int16)), to_unit_range(_phantom(2))), atol=1e-6)


def test_other_axis_and_target_metrics(scene, inputs, core):
    expected = (to_unit_range(_phantom(1, np.int16)) + to_unit_range(_phantom(2))) / 2
    target = _add_volume(scene, expected.astype(np.float32), name="ideal")
    result = core.fuse(inputs, targetVolumeNode=target, method="average", axis=2, plotMetrics=["PSNR", "QABF"])
    assert result.sliceTableNode.GetNumberOfRows() == SHAPE[2]
    assert result.metrics["RMSE"] == pytest.approx(0.0, abs=1e-3)  # the target is the exact average
    assert result.metrics["SSIM"] == pytest.approx(1.0, abs=1e-4)
    assert [s.GetYColumnName() for s in result.plotSeriesNodes] == ["PSNR", "QABF"]
    assert result.metricsTableNode.GetNumberOfRows() == len(metric_names()) + 1


def test_default_model_through_the_scene_equals_the_library(scene, inputs, core):
    result = core.fuse(inputs, method="default", computeMetrics=False)
    fused = slicer.util.arrayFromVolume(result.outputVolumeNode)
    direct = fuse_volume([_phantom(1, np.int16), _phantom(2)], method="default").array
    np.testing.assert_allclose(fused, direct, atol=1e-6)  # the glue changes no number
    assert np.array_equal(_matrix(result.outputVolumeNode), _matrix(inputs[0]))
    assert result.metricsTableNode is None and result.plotChartNode is None


def test_resample_onto_first_grid(scene, inputs, core):
    coarse = OBLIQUE.copy()
    coarse[:3, :3] = OBLIQUE[:3, :3] @ np.diag([2.0, 2.0, 1.0])  # half the in-plane resolution, same extent
    low = _add_volume(scene, _phantom(3)[:, ::2, ::2].copy(), coarse, name="PET")
    with pytest.raises(InputError, match="dimensions"):
        core.fuse([inputs[0], low], method="average")
    result = core.fuse([inputs[0], low], method="average", resampleToFirst=True, computeMetrics=False)
    assert slicer.util.arrayFromVolume(result.outputVolumeNode).shape == SHAPE
    assert np.array_equal(_matrix(result.outputVolumeNode), _matrix(inputs[0]))


def test_inputs_are_copied_before_the_background_computation(scene, inputs, core):
    job = core.prepare(inputs, method="average", computeMetrics=False)
    slicer.util.arrayFromVolume(inputs[1])[:] = 0  # the user edits a volume while fusing
    slicer.util.arrayFromVolumeModified(inputs[1])
    computation = core.compute(job)
    expected = (to_unit_range(_phantom(1, np.int16)) + to_unit_range(_phantom(2))) / 2
    np.testing.assert_allclose(computation.fused, expected, atol=1e-6)


def test_background_fusion_thread(scene, inputs, core):
    run = BackgroundFusion(core, core.prepare(inputs, method="average")).start()
    assert run.wait(timeout=60)
    result = run.finish()
    assert run.progress[0] == pytest.approx(1.0)
    assert np.array_equal(_matrix(result.outputVolumeNode), _matrix(inputs[0]))
    with pytest.raises(RuntimeError, match="already"):
        run.finish()


# -------------------------------------------------------------------------- nothing changes on refusal


@pytest.fixture
def existing_output(scene):
    return _add_volume(scene, np.full(SHAPE, 7.0, np.float32), name="previous result")


def _bad_cases(scene, inputs, tmp_path):
    label = _add_volume(scene, np.ones(SHAPE, np.int16), name="labels", cls="vtkMRMLLabelMapVolumeNode")
    vector = _add_volume(scene, np.ones((*SHAPE, 3), np.float32), name="rgb", cls="vtkMRMLVectorVolumeNode")
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    shifted = OBLIQUE.copy()
    shifted[:3, 3] += [5.0, 0.0, 0.0]
    moved = _add_volume(scene, _phantom(3), shifted, name="moved")
    transformed = _add_volume(scene, _phantom(4), name="transformed")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    transformed.SetAndObserveTransformNodeID(transform.GetID())
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    return {
        "no input": ([], {}, "at least 2"),
        "one input": ([inputs[0]], {}, "at least 2"),
        "same node twice": ([inputs[0], inputs[0]], {}, "same volume"),
        "label map": ([inputs[0], label], {}, "label map"),
        "vector volume": ([inputs[0], vector], {}, "vector"),
        "empty volume": ([inputs[0], empty], {}, "empty"),
        "geometry mismatch": ([inputs[0], moved], {}, "IJK-to-RAS"),
        "different transforms": ([inputs[0], transformed], {}, "harden"),
        "output is an input": (inputs, {"outputVolumeNode": inputs[1]}, "is input 2"),
        "bad method": (inputs, {"method": "nonsense"}, "method"),
        "model file that does not load": (inputs, {"method": str(broken)}, "broken.pt"),
        "target metric without target": (inputs, {"metrics": ["RMSE"]}, "need a target"),
        "bad axis": (inputs, {"axis": 3}, "axis"),
        "bad device": (inputs, {"device": "tpu"}, "device"),
    }


@pytest.mark.parametrize("case", [
    "no input", "one input", "same node twice", "label map", "vector volume", "empty volume",
    "geometry mismatch", "different transforms", "output is an input", "bad method",
    "model file that does not load", "target metric without target", "bad axis", "bad device",
])
def test_bad_input_is_refused_and_changes_nothing(scene, inputs, core, existing_output, tmp_path, case):
    nodes, kwargs, message = _bad_cases(scene, inputs, tmp_path)[case]
    kwargs.setdefault("outputVolumeNode", existing_output)
    state, output, sources = _scene_state(scene), _fingerprint(existing_output), [_fingerprint(n) for n in inputs]
    with pytest.raises(ValueError, match=message):
        core.fuse(nodes, method=kwargs.pop("method", "average"), **kwargs)
    assert _scene_state(scene) == state
    assert _fingerprint(existing_output) == output
    assert [_fingerprint(n) for n in inputs] == sources


class _CancelAfter:
    """A cancel flag that turns on after it was asked ``n`` times: a cancel mid-run."""

    def __init__(self, n: int) -> None:
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


@pytest.mark.parametrize("asked", [0, 1, 4], ids=["before start", "while fusing", "while scoring"])
def test_cancel_changes_nothing(scene, inputs, core, existing_output, asked):
    state, output = _scene_state(scene), _fingerprint(existing_output)
    with pytest.raises(FusionCancelled):
        core.fuse(inputs, outputVolumeNode=existing_output, method="average", cancel=_CancelAfter(asked))
    assert _scene_state(scene) == state and _fingerprint(existing_output) == output


def test_cancelled_background_run_changes_nothing(scene, inputs, core, existing_output):
    state, output = _scene_state(scene), _fingerprint(existing_output)
    job = core.prepare(inputs, outputVolumeNode=existing_output, method="average")
    run = BackgroundFusion(core, job)
    run.cancel()  # cancelled as soon as it starts: deterministic
    run.start()
    assert run.wait(timeout=60)
    with pytest.raises(FusionCancelled):
        run.finish()
    assert _scene_state(scene) == state and _fingerprint(existing_output) == output


def test_failure_while_writing_is_rolled_back(scene, inputs, core, existing_output, monkeypatch):
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "my table")
    old_table = table.GetTable()
    state, output = _scene_state(scene), _fingerprint(existing_output)

    def broken_plot(*args, **kwargs):
        raise RuntimeError("disk full")  # after the volume and the tables were written

    monkeypatch.setattr(core, "_plot", broken_plot)
    with pytest.raises(RuntimeError, match="disk full"):
        core.fuse(inputs, outputVolumeNode=existing_output, metricsTableNode=table, method="average")
    assert _scene_state(scene) == state
    assert _fingerprint(existing_output) == output
    assert table.GetTable() is old_table


def test_node_deleted_during_background_run(scene, inputs, core, existing_output):
    job = core.prepare(inputs, outputVolumeNode=existing_output, method="average", computeMetrics=False)
    computation = core.compute(job)
    scene.RemoveNode(existing_output)
    state = _scene_state(scene)
    with pytest.raises(InputError, match="removed from the scene"):
        core.commit(job, computation)
    assert _scene_state(scene) == state


# -------------------------------------------------------------------------- the batch example


def test_batch_example_fuses_a_folder_through_the_logic(tmp_path, capsys):
    """Resources/Scripts/fuse_folder.py, run in this process with slicer-core's MRML: files in, files out."""
    import importlib.util

    import SimpleITK as sitk

    spacing, origin, direction = geometry_from_ijk_to_ras(OBLIQUE)
    for case, seeds in (("case1", (1, 2)), ("case2", (3, 4))):
        (tmp_path / "in" / case).mkdir(parents=True)
        for name, seed in zip(("a_ct.nii.gz", "b_mri.nrrd"), seeds):
            image = sitk.GetImageFromArray(_phantom(seed))
            image.SetSpacing(spacing), image.SetOrigin(origin), image.SetDirection(direction)
            sitk.WriteImage(image, str(tmp_path / "in" / case / name))
    (tmp_path / "in" / "broken").mkdir()  # one volume only: reported, skipped, counted
    (tmp_path / "in" / "broken" / "a.nii.gz").write_bytes((tmp_path / "in" / "case1" / "a_ct.nii.gz").read_bytes())

    script = Path(__file__).resolve().parents[1] / "MedFusion" / "Resources" / "Scripts" / "fuse_folder.py"
    spec = importlib.util.spec_from_file_location("fuse_folder", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    failed = module.main([str(tmp_path / "in"), str(tmp_path / "out"), "--method", "average"])

    assert failed == 1 and "broken: FAILED" in capsys.readouterr().err
    fused = sitk.ReadImage(str(tmp_path / "out" / "case1_fused.nrrd"))
    np.testing.assert_allclose(fused.GetSpacing(), spacing, atol=1e-6)  # the file has input 1's geometry
    np.testing.assert_allclose(fused.GetOrigin(), origin, atol=1e-6)
    np.testing.assert_allclose(fused.GetDirection(), direction, atol=1e-6)
    expected = (to_unit_range(_phantom(1)) + to_unit_range(_phantom(2))) / 2
    np.testing.assert_allclose(sitk.GetArrayFromImage(fused), expected, atol=1e-6)
    metrics = (tmp_path / "out" / "case2_metrics.csv").read_text().splitlines()
    assert metrics[0] == "metric,value" and any(line.startswith("QABF,") for line in metrics)


# -------------------------------------------------------------------------- contribution maps


def _display_colours(node):
    display = node.GetDisplayNode()
    colours = display.GetColorNode()
    return display, colours


def test_two_input_contribution_map_is_input_1s_share_with_a_colour_table(scene, inputs, core):
    result = core.fuse(inputs, computeMetrics=False, computeContributions=True)
    node = result.contributionVolumeNode
    assert node is not None and node is not result.outputVolumeNode and node.GetName().endswith("contributions")
    share = slicer.util.arrayFromVolume(node)
    library = fuse_volume([_phantom(1, np.int16), _phantom(2)], contributions=True).contributions[0].array
    np.testing.assert_allclose(share, library, atol=1e-6)  # the glue changes no number
    assert np.array_equal(_matrix(node), _matrix(inputs[0]))
    display, colours = _display_colours(node)
    assert colours.GetNumberOfColors() == 256 and not display.GetAutoWindowLevel()
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))
    assert colours.GetColorName(255).startswith("CT 100%")  # named after input 1
    # off by default: nothing extra in the scene
    assert core.fuse(inputs, computeMetrics=False).contributionVolumeNode is None


def test_three_input_map_names_the_input_that_contributed_most(scene, inputs, core):
    third = _add_volume(scene, _phantom(3), name="PET")
    result = core.fuse([*inputs, third], method="laplacian", computeMetrics=False, computeContributions=True)
    winners = slicer.util.arrayFromVolume(result.contributionVolumeNode)
    assert winners.dtype == np.uint8 and set(np.unique(winners)) <= {1, 2, 3}
    _, colours = _display_colours(result.contributionVolumeNode)
    assert [colours.GetColorName(i) for i in range(4)] == ["none", "CT", "MRI", "PET"]


def test_contribution_map_refusals_leave_the_scene_unchanged(scene, inputs, core, tmp_path):
    from MedFusionLib.engine.model import FusionModel

    before = _scene_state(scene)
    dbm = tmp_path / "dbm.pt"
    FusionModel.create("dbm", block_size=8, layer_sizes=(16,), seed=0, predicts="values").save(dbm)
    with pytest.raises(InputError, match="predicts fused values"):
        core.fuse(inputs, method=str(dbm), computeContributions=True)
    with pytest.raises(InputError, match="contribution volume: '.*' is input 1"):
        core.fuse(inputs, computeContributions=True, contributionVolumeNode=inputs[0])
    with pytest.raises(InputError, match="computeContributions is off"):
        core.fuse(inputs, contributionVolumeNode=scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "m"))
    scene.RemoveNode(scene.GetFirstNodeByName("m"))
    assert _scene_state(scene) == before


def test_contribution_map_reuses_a_chosen_node_and_comes_back_from_the_worker(scene, inputs, core):
    chosen = _add_volume(scene, np.zeros(SHAPE, np.float32), name="map")
    run = BackgroundFusion(core, core.prepare(inputs, method="laplacian", computeMetrics=False,
                                              computeContributions=True, contributionVolumeNode=chosen)).start()
    while run.isRunning():
        import time

        time.sleep(0.05)
    result = run.finish()
    assert result.contributionVolumeNode is chosen
    direct = core.fuse(inputs, method="laplacian", computeMetrics=False, computeContributions=True)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(chosen),
                                  slicer.util.arrayFromVolume(direct.contributionVolumeNode))
