"""Checks of what a run is given -- nodes, options, files -- each refusal one clear message naming the input.

Every check runs in the prepare phase, on the scene's thread, before any work: a user hears
about a mistake at once, not after minutes, and nothing has been changed when they do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import slicer  # the MRML classes and slicer.util: from the Slicer application or the slicer-core wheel

from MedFusionLib.errors import InputError
from MedFusionLib.metrics import METRICS, default_metrics

from .choices import DEVICES

# Volume classes that derive from vtkMRMLScalarVolumeNode but hold more than one value per voxel.
_NOT_SCALAR_CLASSES = {
    "vtkMRMLLabelMapVolumeNode": "a label map (segmentation labels, not intensities)",
    "vtkMRMLVectorVolumeNode": "a vector (colour or multi-component) volume",
    "vtkMRMLMultiVolumeNode": "a 4D multi-volume",
    "vtkMRMLDiffusionWeightedVolumeNode": "a diffusion-weighted (4D) volume",
    "vtkMRMLDiffusionTensorVolumeNode": "a diffusion tensor volume",
    "vtkMRMLTensorVolumeNode": "a tensor volume",
}


def _class_name(node: Any) -> str:
    return node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__


def check_node(node: Any, cls: str, label: str, scene: Any) -> None:
    """Refuse a node of the wrong class or from another scene."""
    if not hasattr(node, "IsA") or not node.IsA(cls):
        raise InputError(f"{label}: expected a {cls}, got {_class_name(node)}")
    if node.GetScene() is not scene:
        raise InputError(f"{label}: node '{node.GetName()}' is not in the inputs' scene")


def check_volume(node: Any, label: str, scene: Any) -> None:
    """Refuse anything but a non-empty single-component ``vtkMRMLScalarVolumeNode`` of ``scene``."""
    if not hasattr(node, "IsA") or not node.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"{label}: expected a scalar volume node, got {_class_name(node)}")
    name = f"{label} ('{node.GetName()}')"
    for cls, what in _NOT_SCALAR_CLASSES.items():
        if node.IsA(cls):
            raise InputError(f"{name}: is {what}; MedFusion fuses scalar intensity volumes only")
    if node.GetClassName() != "vtkMRMLScalarVolumeNode":
        raise InputError(f"{name}: unsupported volume type {node.GetClassName()}; use a scalar volume")
    if node.GetScene() is not scene:
        raise InputError(f"{name}: is not in the same scene as input 1")
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{name}: the volume is empty (it has no voxels)")
    dims = image.GetDimensions()
    if min(dims) < 1 or int(np.prod(dims)) == 0:
        raise InputError(f"{name}: the volume is empty (dimensions {dims})")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"{name}: has {image.GetNumberOfScalarComponents()} values per voxel (a vector/colour/4D volume); "
            "MedFusion fuses single-component scalar volumes"
        )


def check_inputs(inputVolumeNodes: Sequence[Any]) -> list[Any]:
    """K >= 2 distinct scalar volumes of one scene; returns them as a list."""
    if inputVolumeNodes is None or isinstance(inputVolumeNodes, (str, bytes)) or not hasattr(
        inputVolumeNodes, "__len__"
    ):
        raise InputError("input volumes: expected a list of at least 2 volume nodes")
    nodes = list(inputVolumeNodes)
    if len(nodes) < 2:
        raise InputError(f"input volumes: at least 2 volumes are needed, got {len(nodes)}")
    for i, node in enumerate(nodes):
        if node is None:
            raise InputError(f"input {i + 1}: no volume selected")
    scene = nodes[0].GetScene() if hasattr(nodes[0], "GetScene") else None
    if scene is None:
        raise InputError("input 1: volume node is not in a scene")
    for i, node in enumerate(nodes):
        check_volume(node, f"input {i + 1}", scene)
        for j in range(i):
            if nodes[j] is node or nodes[j].GetID() == node.GetID():
                raise InputError(
                    f"input {i + 1}: '{node.GetName()}' is the same volume as input {j + 1}; choose different volumes"
                )
    return nodes


def check_target(target: Any, inputs: Sequence[Any], scene: Any) -> None:
    """A target volume: a scalar volume of the scene that is not one of the inputs."""
    check_volume(target, "target volume", scene)
    if any(target is node for node in inputs):
        raise InputError("target volume: it is one of the inputs; choose the ideal (reference) fused volume")


def check_output(output: Any, inputs: Sequence[Any], target: Any, scene: Any, label: str = "output volume") -> None:
    """An output volume: a scalar volume of the scene, never an input or the target.

    :param label: how messages name it ("output volume", "contribution volume").
    """
    if not hasattr(output, "IsA") or not output.IsA("vtkMRMLScalarVolumeNode") or output.IsA(
        "vtkMRMLLabelMapVolumeNode"
    ) or output.GetClassName() != "vtkMRMLScalarVolumeNode":
        raise InputError(f"{label}: expected a scalar volume node, got {_class_name(output)}")
    for i, node in enumerate(inputs):
        if output is node or output.GetID() == node.GetID():
            raise InputError(
                f"{label}: '{output.GetName()}' is input {i + 1}; an input is never overwritten -- "
                f"choose another {label} or 'Create new volume'"
            )
    if target is not None and (output is target or output.GetID() == target.GetID()):
        raise InputError(f"{label}: it is the target volume; choose another {label}")
    if output.GetScene() is not scene:
        raise InputError(f"{label}: '{output.GetName()}' is not in the inputs' scene")


def check_axis(axis: Any) -> int:
    if isinstance(axis, bool) or axis not in (0, 1, 2):
        raise InputError(f"slice axis: expected 0 (K), 1 (J) or 2 (I), got {axis!r}")
    return int(axis)


def check_modalities(modalities: Optional[Sequence[Optional[str]]], count: int) -> Optional[list[Optional[str]]]:
    if modalities is not None and len(modalities) != count:
        raise InputError(f"modalities: {len(modalities)} given for {count} input volumes")
    return list(modalities) if modalities is not None else None


def resolve_device(device: Any) -> Optional[str]:
    """What MedFusionLib is asked for (see :data:`.choices.DEVICES`); a GPU that is not there is refused now."""
    key = str(device).strip().lower() if device is not None else "auto"
    if key not in DEVICES:
        raise InputError(f"device: expected one of {sorted(DEVICES)}, got {device!r}")
    resolved = DEVICES[key]
    if resolved == "cuda":
        import torch  # only here: the check needs torch, which MedFusionLib already imported

        if not torch.cuda.is_available():
            raise InputError("device: a GPU was asked for but no CUDA GPU is available; choose 'auto' or 'cpu'")
    return resolved


def check_metrics(metrics: Optional[Sequence[str]], has_target: bool) -> list[str]:
    """The metric keys to compute, in registry order (default: every metric the inputs allow)."""
    if metrics is None:
        return default_metrics(has_target)
    keys = list(metrics)
    unknown = [k for k in keys if k not in METRICS]
    if unknown:
        raise InputError(f"metrics: unknown {unknown}; choose from {list(METRICS)}")
    needing_target = [k for k in keys if METRICS[k].family == "target"]
    if needing_target and not has_target:
        raise InputError(f"metrics: {needing_target} need a target volume")
    return [k for k in METRICS if k in keys]  # registry order, like every other table


def load_method(method: Any) -> Any:
    """A resolved fusion method; a model file that does not load is refused with its reason."""
    from MedFusionLib.fusion import load_method as resolve

    try:
        return resolve(method)
    except InputError:
        raise
    except Exception as error:  # a model file that is corrupt, refused or of another format
        raise InputError(f"method {str(method)!r}: the model could not be loaded ({error})") from None


def parent_transform_id(node: Any) -> Optional[str]:
    transform = node.GetParentTransformNode()
    return transform.GetID() if transform is not None else None


def common_parent_transform_id(nodes: Sequence[Any]) -> Optional[str]:
    """The one parent transform of all ``nodes`` (None: none), or a clear refusal.

    The logic works in the volumes' own RAS space and cannot compare grids across
    different transforms.
    """
    transforms = {parent_transform_id(n) for n in nodes}
    if len(transforms) > 1:
        raise InputError(
            "input volumes: they are under different parent transforms; harden the transforms "
            "(Transforms module, 'Harden transform') so all volumes share one coordinate space"
        )
    return transforms.pop()


def copy_voxels(node: Any, name: str) -> np.ndarray:
    """A copy of a volume's voxels: inputs are never touched, and later edits do not reach the run."""
    try:
        return np.array(slicer.util.arrayFromVolume(node), copy=True)
    except RuntimeError as error:
        raise InputError(f"{name}: cannot read the voxels ({error})") from None


def stored_files(node: Any) -> list[Path]:
    """The files a volume node was loaded from or is saved to: a model must never replace them."""
    storage = node.GetStorageNode()
    if storage is None:
        return []
    names = [storage.GetFileName(), *(storage.GetNthFileName(i) for i in range(storage.GetNumberOfFileNames()))]
    return [Path(name) for name in names if name]


def same_path(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and hard links included; by name when one does not exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def is_chosen(path: Any) -> bool:
    """Whether a path option was given: None, "" and "." (an empty path field) are not a choice."""
    return path is not None and str(path).strip() not in ("", ".")


def check_model_output(outputModelPath: Any, protected: Sequence[Path], overwrite: bool) -> Path:
    """The output model path, refused when it is not a writable new ``.pt`` file or is an input."""
    from MedFusionLib.fusion import DEFAULT_MODEL_PATH

    if not is_chosen(outputModelPath):
        raise InputError("output model file: choose where to write the trained model (a .pt file)")
    path = Path(os.fspath(outputModelPath)).expanduser()
    label = f"output model file {path}"
    for guarded in [*protected, DEFAULT_MODEL_PATH]:
        if same_path(path, guarded):
            what = "the shipped default model" if guarded == DEFAULT_MODEL_PATH else "a training input"
            raise InputError(f"{label}: it is {what} ({guarded}), which is never overwritten; choose another file")
    if path.suffix.lower() != ".pt":
        raise InputError(f"{label}: expected a file name ending in .pt (a MedFusion model)")
    if path.is_dir():
        raise InputError(f"{label}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise InputError(f"{label}: the folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise InputError(f"{label}: already exists; choose another name or allow overwriting it")
    return path
