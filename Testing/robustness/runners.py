"""Run one catalogue case through one entry point and check what it left behind.

Entry points:

- ``api``: the Python API, :func:`MedFusionLib.fusion.fuse_files` (files) or
  :func:`MedFusionLib.fusion.fuse` (arrays);
- ``cli``: ``medfusion fuse ...`` through :func:`MedFusionLib.cli.main`, in-process, stdout
  and stderr captured (the same code path as the console script, minus the interpreter start);
- ``batch``: a one-row manifest through :func:`MedFusionLib.batch.run_batch`;
- ``slicer``: :class:`MedFusionSlicerLib.MedFusionLogicCore` on a real MRML scene
  (``slicer-core``), the inputs loaded as volume nodes the way Slicer would hold them.

Every run is classified as ``ok``, ``error`` (a clear, one-line error of MedFusion's own
types), ``cancelled`` or ``crash`` (anything else: a traceback the user would see, a foreign
exception type, a multi-line CLI message), and checked for inputs modified (SHA-256 of every
input file, bytes of every input array and node) and partial outputs (any file the run left
that a successful run would not have, or any file at all after an error or cancel).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np

ENTRY_POINTS = ("api", "cli", "batch", "slicer")
MEDFUSION_MODULE = Path(__file__).resolve().parents[2] / "MedFusion"


@dataclass(frozen=True)
class Expect:
    """What an entry point must do with a case.

    :param outcome: ``"ok"`` (a valid result), ``"error"`` (one clear error) or ``"cancelled"``.
    :param pattern: for errors, a regular expression (case-insensitive) the one-line message
        must match: it names the input and the problem.
    """

    outcome: str
    pattern: str = ""

    def describe(self) -> str:
        return {"ok": "works", "cancelled": "cancelled cleanly"}.get(self.outcome, f"error /{self.pattern}/")


OK = Expect("ok")
CANCELLED = Expect("cancelled")


def error(pattern: str) -> Expect:
    return Expect("error", pattern)


@dataclass
class Scenario:
    """The concrete inputs of a case, built in a fresh folder.

    :param inputs: input files or folders (everything under ``work/inputs`` is hashed).
    :param arrays: instead of files, arrays for the Python API and the Slicer logic.
    :param method: ``"default"``, a baseline name or a model file.
    :param options: API-style options: ``block_size``, ``axis``, ``device``, ``modalities``, ``register``.
    :param output_name: output file name inside ``work/out``.
    :param output: an explicit output path instead (e.g. an input, or a path under a file);
        for the batch entry point, the output folder.
    :param batch_name: the case name in the batch manifest.
    :param fault: a context manager factory active during the run (e.g. a writer that fails).
    :param cancel_at: set the cancel flag (Ctrl-C for the CLI) once progress reaches this fraction.
    :param slicer: ``(scene, nodes) -> (nodes, logic kwargs)`` for Slicer-only arrangements.
    """

    inputs: list[Path] = field(default_factory=list)
    arrays: list[np.ndarray] | None = None
    method: str = "default"
    options: dict[str, Any] = field(default_factory=dict)
    output_name: str = "fused.nii.gz"
    output: Path | None = None
    batch_name: str = "case"
    fault: Callable[[], ContextManager] | None = None
    cancel_at: float | None = None
    slicer: Callable[[Any, list], tuple[list, dict]] | None = None


@dataclass
class Outcome:
    """What one run of one case through one entry point did."""

    case: str
    entry: str
    expected: Expect
    status: str
    message: str = ""
    inputs_modified: list[str] = field(default_factory=list)
    partial_outputs: list[str] = field(default_factory=list)

    @property
    def clear_error(self) -> bool:
        return self.status == "error" and bool(re.search(self.expected.pattern, self.message, re.IGNORECASE))

    @property
    def as_expected(self) -> bool:
        if self.inputs_modified or self.partial_outputs or self.status != self.expected.outcome:
            return False
        return self.clear_error if self.status == "error" else True

    def explain(self) -> str:
        return (f"{self.case} via {self.entry}: expected {self.expected.describe()}, got {self.status}"
                f"{': ' + self.message if self.message else ''}"
                f"{'; inputs modified: ' + ', '.join(self.inputs_modified) if self.inputs_modified else ''}"
                f"{'; partial outputs: ' + ', '.join(self.partial_outputs) if self.partial_outputs else ''}")


# ----------------------------------------------------------------------------- fingerprints


def _hash_tree(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative name -> digest), plus the folders themselves."""
    digests: dict[str, str] = {}
    if not folder.exists():
        return digests
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        digests[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
    return digests


def _array_digest(arrays: Sequence[np.ndarray] | None) -> list[tuple]:
    return [(a.dtype.str, a.shape, hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest())
            for a in arrays or []]


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _progress_and_cancel(scenario: Scenario) -> tuple[Callable[[float, str], None], threading.Event]:
    flag = threading.Event()

    def progress(fraction: float, message: str = "") -> None:
        if scenario.cancel_at is not None and fraction >= scenario.cancel_at:
            flag.set()

    return progress, flag


# ----------------------------------------------------------------------------- the entry points


def _run_api(scenario: Scenario, output: Path) -> tuple[str, str]:
    from MedFusionLib.errors import Cancelled, MedFusionError
    from MedFusionLib.fusion import fuse, fuse_files

    progress, flag = _progress_and_cancel(scenario)
    try:
        if scenario.arrays is not None:
            options = {k: v for k, v in scenario.options.items() if k in ("block_size", "device", "modalities")}
            result = fuse(scenario.arrays, method=scenario.method, **options)
            expected_shape = np.asarray(scenario.arrays[0]).shape[:2]
            if result.image.shape != expected_shape or not np.all(np.isfinite(result.image)):
                return "crash", f"result shape {result.image.shape} (expected {expected_shape}) or non-finite values"
            return "ok", ""
        fuse_files(scenario.inputs, output, method=scenario.method, progress=progress, cancel=flag, **scenario.options)
    except Cancelled as exc:
        return "cancelled", _one_line(exc)
    except MedFusionError as exc:  # InputError is one
        return "error", _one_line(exc)
    except Exception as exc:  # noqa: BLE001 - anything else is what the catalogue hunts for
        return "crash", f"{type(exc).__name__}: {_one_line(exc)}"
    return _check_written(output)


def _check_written(output: Path) -> tuple[str, str]:
    from MedFusionLib.io import read_image

    if not output.is_file():
        return "crash", f"reported success but {output.name} is missing"
    array = read_image(output).array
    if not np.all(np.isfinite(array)):
        return "crash", f"{output.name} holds non-finite values"
    return "ok", ""


_CLI_OPTIONS = {"block_size": "--block-size", "axis": "--axis", "device": "--device", "register": "--register",
                "denoise": "--denoise"}


def _run_cli(scenario: Scenario, output: Path) -> tuple[str, str]:
    from MedFusionLib import cli

    argv = ["fuse", *map(str, scenario.inputs), "-o", str(output), "-m", str(scenario.method)]
    for key, value in scenario.options.items():
        argv += ["--modality", *value] if key == "modalities" else [_CLI_OPTIONS[key], str(value)]
    stdout, stderr = io.StringIO(), io.StringIO()
    patches = contextlib.ExitStack()
    if scenario.cancel_at is not None:  # the user presses Ctrl-C once this much is done
        original = cli.ProgressBar.__call__

        def interrupting(bar, fraction: float, message: str = "") -> None:
            if fraction >= scenario.cancel_at:
                raise KeyboardInterrupt
            original(bar, fraction, message)

        cli.ProgressBar.__call__ = interrupting
        patches.callback(setattr, cli.ProgressBar, "__call__", original)
    with patches, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse refusing an option
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - escaping main() is a crash by definition
            return "crash", f"{type(exc).__name__} escaped main(): {_one_line(exc)}"
    lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
    if "Traceback" in stderr.getvalue():
        return "crash", "traceback on stderr"
    if code == 0:
        return _check_written(output)
    if code == cli.EXIT_CANCELLED:
        return "cancelled", lines[-1] if lines else ""
    errors = [line for line in lines if line.startswith("medfusion: error:") or line.startswith("medfusion fuse: error:")]
    if len(errors) != 1:
        return "crash", f"exit code {code} with {len(errors)} error lines: {lines[-3:]}"
    return "error", errors[0].split("error:", 1)[1].strip()


def _run_batch(scenario: Scenario, output_dir: Path, manifest: Path) -> tuple[str, str]:
    from MedFusionLib.batch import groups_from_manifest, run_batch
    from MedFusionLib.errors import Cancelled, MedFusionError

    progress, flag = _progress_and_cancel(scenario)
    columns = [f"input_{i}" for i in range(1, len(scenario.inputs) + 1)]
    lines = [",".join(["name", *columns]), ",".join([scenario.batch_name, *(str(p) for p in scenario.inputs)])]
    if "modalities" in scenario.options:
        lines = [lines[0] + "," + ",".join(f"modality_{i}" for i in range(1, len(columns) + 1)),
                 lines[1] + "," + ",".join(scenario.options["modalities"])]
    manifest.write_text("\n".join(lines) + "\n")
    options = {k: v for k, v in scenario.options.items() if k in ("block_size", "axis", "device")}
    extension = "." + scenario.output_name.split(".", 1)[1]
    try:
        report = run_batch(groups_from_manifest(manifest), output_dir, method=scenario.method, metrics=True,
                           output_format=extension, progress=progress, cancel=flag, **options)
    except Cancelled as exc:
        return "cancelled", _one_line(exc)
    except MedFusionError as exc:
        return "error", _one_line(exc)
    except Exception as exc:  # noqa: BLE001
        return "crash", f"{type(exc).__name__}: {_one_line(exc)}"
    row = report.rows[0]
    if row.status == "failed":
        # run_batch records InputError text as is and prefixes anything else with its type
        foreign = re.match(r"^(\w+(Error|Exception|Interrupt)|[A-Z]\w+):", row.error)
        return ("crash", row.error) if foreign else ("error", row.error)
    return _check_written(Path(row.output))


def _read_like_slicer(path: Path) -> tuple[np.ndarray, tuple, tuple, tuple, bool]:
    """Voxels and LPS geometry of a file as Slicer's (ITK-based) readers would give them, with no
    MedFusion checks: a 2D image becomes one slice, colour and 4D data a multi-component volume."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    vector = image.GetNumberOfComponentsPerPixel() > 1 or image.GetDimension() == 4
    if image.GetDimension() == 4:  # (t, z, y, x) -> (z, y, x, t): a multi-volume as components
        array = np.moveaxis(array, 0, -1)
    dimension = min(image.GetDimension(), 3)
    spacing, origin = image.GetSpacing()[:dimension], image.GetOrigin()[:dimension]
    full = np.asarray(image.GetDirection(), float).reshape(image.GetDimension(), image.GetDimension())
    direction = full[:dimension, :dimension]
    if dimension == 2:
        array = array[None]
        spacing, origin = (*spacing, 1.0), (*origin, 0.0)
        direction = np.block([[direction, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
    return array, tuple(spacing), tuple(origin), tuple(direction.ravel()), vector


def _node_from_array(scene: Any, array: np.ndarray, geometry: tuple, vector: bool, name: str) -> Any:
    """A scalar (or, for colour and multi-component data, vector) volume node holding ``array``."""
    import slicer

    spacing, origin, direction = geometry
    # Written out here rather than taken from MedFusion, so a bug in its conversion cannot hide:
    # RAS = LPS with x and y negated; column j of the matrix is the RAS step along index j.
    flip = np.diag([-1.0, -1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = flip @ np.asarray(direction, float).reshape(3, 3) @ np.diag(spacing)
    matrix[:3, 3] = flip @ np.asarray(origin, float)
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode" if vector else "vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    if not vector:  # slicer-core has no colour tables for vector display nodes
        node.CreateDefaultDisplayNodes()
    return node


def _node_fingerprint(node: Any) -> tuple:
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    array = slicer.util.arrayFromVolume(node) if node.GetImageData() is not None else np.empty(0)
    return (hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(),
            slicer.util.arrayFromVTKMatrix(matrix).tobytes())


def _scene_nodes(scene: Any) -> list[tuple[str, str]]:
    return sorted((scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetClassName())
                  for i in range(scene.GetNumberOfNodes()))


def slicer_available() -> bool:
    try:
        import slicer
    except ImportError:
        return False
    return hasattr(slicer, "vtkMRMLScene") and hasattr(slicer, "util")


def _run_slicer(scenario: Scenario) -> tuple[str, str, list[str]]:
    """Returns (status, message, modified nodes)."""
    import slicer

    if str(MEDFUSION_MODULE) not in sys.path:
        sys.path.insert(0, str(MEDFUSION_MODULE))
    from MedFusionSlicerLib import MedFusionLogicCore

    from MedFusionLib.errors import Cancelled, MedFusionError

    scene = slicer.vtkMRMLScene()
    previous_scene = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    try:
        if scenario.arrays is not None:  # 2D arrays: one-slice volumes with the identity geometry
            loaded = [(np.asarray(a)[None], ((1.0,) * 3, (0.0,) * 3, tuple(np.eye(3).ravel())), False)
                      for a in scenario.arrays]
        else:
            loaded = [(array, (spacing, origin, direction), vector)
                      for array, spacing, origin, direction, vector in map(_read_like_slicer, scenario.inputs)]
        nodes = [_node_from_array(scene, array, geometry, vector, f"input{i + 1}")
                 for i, (array, geometry, vector) in enumerate(loaded)]
        kwargs: dict[str, Any] = {}
        if scenario.slicer is not None:
            nodes, kwargs = scenario.slicer(scene, nodes)
        for key, name in (("block_size", "blockSize"), ("axis", "axis"), ("device", "device"),
                          ("modalities", "modalities")):
            if key in scenario.options:
                kwargs[name] = scenario.options[key]
        if scenario.options.get("register", "none") != "none":
            kwargs["register"] = scenario.options["register"]
        before_nodes = _scene_nodes(scene)
        volumes = [scene.GetNthNodeByClass(i, "vtkMRMLVolumeNode")
                   for i in range(scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode"))]
        before = [_node_fingerprint(n) for n in volumes]
        progress, flag = _progress_and_cancel(scenario)
        status, message, result = "ok", "", None
        try:
            result = MedFusionLogicCore().fuse(nodes, method=scenario.method, progress=progress, cancel=flag, **kwargs)
            fused = slicer.util.arrayFromVolume(result.outputVolumeNode)
            if fused.shape != slicer.util.arrayFromVolume(nodes[0]).shape or not np.all(np.isfinite(fused)):
                status, message = "crash", f"output shape {fused.shape} or non-finite values"
        except Cancelled as exc:
            status, message = "cancelled", _one_line(exc)
        except MedFusionError as exc:
            status, message = "error", _one_line(exc)
        except Exception as exc:  # noqa: BLE001
            status, message = "crash", f"{type(exc).__name__}: {_one_line(exc)}"
        # After a success only the chosen output node may have changed; after anything else, no node.
        output_node = result.outputVolumeNode if status == "ok" else None
        modified = [n.GetName() for n, b in zip(volumes, before) if n is not output_node and _node_fingerprint(n) != b]
        if status != "ok" and _scene_nodes(scene) != before_nodes:
            added = sorted(set(_scene_nodes(scene)) - set(before_nodes))
            modified.append(f"scene changed by a failed run (+{len(added)} nodes)")
        return status, message, modified
    finally:
        scene.Clear(True)
        slicer.mrmlScene = previous_scene


def run_case(case: Any, entry: str, work: Path) -> Outcome:
    """Build ``case`` in the empty folder ``work`` and run it through ``entry``.

    :param case: a :class:`robustness.catalogue.Case`.
    :param entry: one of :data:`ENTRY_POINTS` listed in ``case.entries``.
    :param work: an empty folder; ``work/inputs`` holds the inputs, ``work/out`` receives outputs.
    """
    expected = case.entries[entry]
    inputs_dir, out_dir = work / "inputs", work / "out"
    inputs_dir.mkdir(parents=True)
    out_dir.mkdir()
    scenario = case.build(inputs_dir)
    output = scenario.output or out_dir / scenario.output_name
    hashes_before = _hash_tree(inputs_dir)
    arrays_before = _array_digest(scenario.arrays)
    outside_before = _listing(work) - {str(p.relative_to(work)) for p in inputs_dir.rglob("*")}
    modified: list[str] = []
    fault = scenario.fault() if scenario.fault is not None else contextlib.nullcontext()
    # Run inside the case's folder: anything a shell would run from a file name ($(touch PWNED))
    # would land there and be reported as a file the run left behind.
    with fault, contextlib.chdir(work):
        if case.custom is not None:  # a multi-run scenario that checks its own outputs
            status, message = case.custom(work, scenario)
        elif entry == "api":
            status, message = _run_api(scenario, output)
        elif entry == "cli":
            status, message = _run_cli(scenario, output)
        elif entry == "batch":
            status, message = _run_batch(scenario, scenario.output or out_dir, work / "manifest.csv")
        elif entry == "slicer":
            status, message, modified = _run_slicer(scenario)
        else:
            raise ValueError(f"unknown entry point {entry!r}")
    message = message.replace(str(work), "<work>")  # patterns must match the message, not the folder name
    hashes_after = _hash_tree(inputs_dir)
    modified += sorted(name for name in hashes_before.keys() | hashes_after.keys()
                       if hashes_before.get(name) != hashes_after.get(name))
    if _array_digest(scenario.arrays) != arrays_before:
        modified.append("input arrays")
    if case.custom is not None:
        return Outcome(case.id, entry, expected, status, message, modified, [])
    # What the run left outside the inputs: only the output (and a batch's report) after a success.
    left = _listing(work) - outside_before - {str(p.relative_to(work)) for p in inputs_dir.rglob("*")}
    left -= {"manifest.csv"}
    allowed: set[str] = {"out/batch_report.csv"} if entry == "batch" else set()
    if status == "ok" and entry == "batch":
        allowed |= {f"out/{p.name}" for p in out_dir.glob("case_fused*")}
    elif status == "ok":
        allowed |= {str(output.relative_to(work))} if output.is_relative_to(work) else set()
    # An empty ordinary folder is harmless (a batch creates its output folder); a hidden one is a temporary.
    partial = sorted(name for name in left - allowed
                     if not (work / name).is_dir() or Path(name).name.startswith(".") or any((work / name).iterdir()))
    return Outcome(case.id, entry, expected, status, message, modified, partial)
