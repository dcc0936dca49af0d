"""Fuse every case of a folder through the MedFusion module logic: the batch example.

In 3D Slicer (no window)::

    Slicer --no-main-window --python-script fuse_folder.py INPUT_DIR OUTPUT_DIR [--method default]

Outside Slicer, with the MRML library from the ``slicer-core`` wheel (``pip install slicer-core``)
and MedFusionLib installed::

    python fuse_folder.py INPUT_DIR OUTPUT_DIR [--method average]

Every sub-folder of INPUT_DIR is one case holding two or more registered volumes (NIfTI, NRRD,
MHA...); sorted by file name, the first one is the reference grid. For each case the script
loads the volumes into an MRML scene, fuses them with :class:`MedFusionLogicCore` (the logic the
module's Fuse button runs), and writes ``OUTPUT_DIR/<case>_fused.nrrd`` (on the reference grid)
and ``OUTPUT_DIR/<case>_metrics.csv`` (one row per metric). A case that fails is reported and
skipped; the exit status is the number of failed cases (0: all fused).

Before anything is read, the Python packages MedFusion needs are checked (``Resources/requirements.txt``,
PyTorch, and outside Slicer NumPy and ``slicer-core``); when one is missing or too old the script
prints one line naming them and the exact install command, and exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Optional, Sequence

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _import_logic():
    """The logic package: on sys.path inside Slicer; next to Resources/ in a source checkout."""
    try:
        import MedFusionSlicerLib
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        import MedFusionSlicerLib
    return MedFusionSlicerLib


def dependency_problem(requirements: Optional[Sequence[str]] = None) -> Optional[str]:
    """One line saying what to install, or None when every package the script needs is there.

    :param requirements: what to check (default: what MedFusion needs here, in Slicer or outside it).
    """
    _import_logic()  # puts MedFusionSlicerLib on sys.path in a checkout
    from MedFusionSlicerLib import dependencies

    in_slicer = dependencies.in_slicer_application()
    if requirements is None:
        requirements = dependencies.batch_requirements(in_slicer)
    unmet = dependencies.unmet_requirements(requirements)
    if not in_slicer and importlib.util.find_spec("slicer") is None:  # the MRML library outside Slicer
        unmet.append(dependencies.UnmetRequirement(dependencies.SLICER_CORE_REQUIREMENT, "slicer-core", None))
    return dependencies.install_message(unmet, in_slicer) if unmet else None


def _volumes(case: Path) -> list[Path]:
    return sorted(p for p in case.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))


def fuse_case(scene, case: Path, output_dir: Path, method: str) -> Path:
    """Fuse one case folder; return the fused volume's path.

    :param scene: the MRML scene to load into (the nodes added are removed afterwards).
    :param case: folder with two or more registered volumes.
    :param output_dir: where ``<case>_fused.nrrd`` and ``<case>_metrics.csv`` go.
    :param method: ``"default"``, a model file, or a baseline name.
    """
    import slicer

    from MedFusionLib.io import LoadedImage, read_image, write_image
    from MedFusionLib.metrics import table_to_csv

    lib = _import_logic()
    paths = _volumes(case)
    if len(paths) < 2:
        raise ValueError(f"{case}: needs at least 2 volumes, found {len(paths)}")
    nodes = []
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        for path in paths:
            image = read_image(path)
            # File geometry is LPS (ITK); MRML wants IJK-to-RAS: convert, the array order is the same.
            matrix = lib.ijk_to_ras_from_geometry(image.spacing, image.origin, image.direction)
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.name.split(".")[0])
            node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
            slicer.util.updateVolumeFromArray(node, image.array)
            nodes.append(node)
        result = lib.MedFusionLogicCore().fuse(nodes, method=method)
        spacing, origin, direction = lib.geometry_from_ijk_to_ras(_ijk_to_ras(result.outputVolumeNode))
        fused = LoadedImage(slicer.util.arrayFromVolume(result.outputVolumeNode).copy(), spacing, origin, direction)
        output = write_image(fused, output_dir / f"{case.name}_fused.nrrd", overwrite=True, protected_paths=paths)
        rows = [{"metric": key, "value": value} for key, value in result.metrics.items()]
        rows.append({"metric": "time_s", "value": result.seconds})
        table_to_csv(rows, output_dir / f"{case.name}_metrics.csv")
        return output
    finally:
        # Remove this case's nodes (not the whole scene, which may be a user's): memory stays flat.
        for i in reversed(range(scene.GetNumberOfNodes())):
            node = scene.GetNthNode(i)
            if node is not None and node.GetID() not in before:
                scene.RemoveNode(node)


def _ijk_to_ras(node):
    import numpy as np
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Fuse every case folder; return the number of failed cases.

    :param argv: ``INPUT_DIR OUTPUT_DIR [--method M]``; default ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input_dir", type=Path, help="folder of case folders")
    parser.add_argument("output_dir", type=Path, help="where fused volumes and metric tables go")
    parser.add_argument("--method", default="default", help="default, a model file, or a baseline name")
    args = parser.parse_args(argv)
    problem = dependency_problem()
    if problem is not None:
        raise SystemExit(problem)  # one line on stderr, exit status 1, nothing read

    import slicer

    # In Slicer the application's scene is used; outside it (slicer-core) a scene of our own.
    scene = getattr(slicer, "mrmlScene", None) or slicer.vtkMRMLScene()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    cases = sorted(p for p in args.input_dir.iterdir() if p.is_dir())
    failed = 0
    for case in cases:
        try:
            print(f"{case.name}: fused -> {fuse_case(scene, case, args.output_dir, args.method)}", flush=True)
        except Exception as error:  # report and go on with the next case
            failed += 1
            print(f"{case.name}: FAILED: {error}", file=sys.stderr, flush=True)
    print(f"{len(cases) - failed} of {len(cases)} cases fused", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
