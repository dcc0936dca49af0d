"""Helpers of the MedFusion Slicer module that are not themselves Slicer modules.

They live in this sub-package, not next to ``MedFusion.py``, because Slicer tries to
load every ``.py`` file directly in a scripted-module folder as a module of its own
(and reports an error for each one that is not). One concern per file:

- ``choices.py`` -- the GUI's choice lists and the logic's option values (plain Python);
- ``geometry.py`` -- MRML IJK-to-RAS matrices <-> SimpleITK-style LPS geometry;
- ``jobs.py`` -- what travels between the phases of a run (plain data);
- ``checks.py`` -- checks of the nodes and options a run is given, with clear messages;
- ``compute.py`` -- the computation of a run, pure NumPy/PyTorch (in this process or a worker);
- ``fusion_logic.py`` / ``training_logic.py`` -- prepare, compute, commit for fusion and training;
- ``scene_writers.py`` -- the volume, tables and plot a fusion writes into the scene;
- ``logic_core.py`` -- :class:`MedFusionLogicCore`, both logics in one class;
- ``process.py`` / ``worker.py`` -- :class:`BackgroundFusion` and :class:`BackgroundTraining`,
  which run the computation in a separate Python process, and that process's entry point;
- ``dependencies.py`` -- which Python packages are missing or too old, and installing them.

:class:`MedFusionLogicCore` needs only the MRML classes, ``slicer.util``, VTK, NumPy and
``MedFusionLib`` -- not ``slicer.app``, ``ScriptedLoadableModule`` or Qt -- so it runs inside
Slicer, in ``Slicer --no-main-window`` batch scripts, and in plain Python with the
``slicer-core`` wheel (which is how the test suite runs it against a real MRML scene).

Names are imported lazily (PEP 562): ``import MedFusionSlicerLib.choices`` while Slicer starts,
or the worker process, must not pull in MRML, VTK or PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the sub-module that defines it.
_EXPORTS = {
    "BackgroundFusion": "process",
    "BackgroundTraining": "process",
    "WorkerError": "process",
    "DEFAULT_PLOT_METRICS": "choices",
    "DEFAULT_TRAINING_BLOCK_SIZES": "choices",
    "DEFAULT_TRAINING_ITERATIONS": "choices",
    "DEVICES": "choices",
    "TRAINING_FAMILIES": "choices",
    "FusionComputation": "jobs",
    "FusionJob": "jobs",
    "MedFusionResult": "jobs",
    "MedFusionTrainingResult": "jobs",
    "TrainingComputation": "jobs",
    "TrainingJob": "jobs",
    "TrainingCancelled": "compute",
    "MedFusionLogicCore": "logic_core",
    "geometry_from_ijk_to_ras": "geometry",
    "ijk_to_ras_from_geometry": "geometry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
