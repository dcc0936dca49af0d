"""Helpers of the MedFusion Slicer module that are not themselves Slicer modules.

They live in this sub-package, not next to ``MedFusion.py``, because Slicer tries to
load every ``.py`` file directly in a scripted-module folder as a module of its own
(and reports an error for each one that is not).

:class:`MedFusionLogicCore` is the module's whole MRML logic (fusion and training). It
needs only the MRML classes, ``slicer.util``, VTK, NumPy and ``MedFusionLib`` -- not
``slicer.app``, ``ScriptedLoadableModule`` or Qt -- so it runs inside Slicer, in
``Slicer --no-main-window`` batch scripts, and in plain Python with the ``slicer-core``
wheel (which is how the test suite runs it against a real MRML scene).
"""

from .logic_core import (
    DEFAULT_PLOT_METRICS,
    DEFAULT_TRAINING_BLOCK_SIZES,
    DEFAULT_TRAINING_ITERATIONS,
    DEVICES,
    TRAINING_FAMILIES,
    BackgroundFusion,
    BackgroundTraining,
    FusionComputation,
    FusionJob,
    MedFusionLogicCore,
    MedFusionResult,
    MedFusionTrainingResult,
    TrainingCancelled,
    TrainingComputation,
    TrainingJob,
    geometry_from_ijk_to_ras,
    ijk_to_ras_from_geometry,
)

__all__ = [
    "BackgroundFusion",
    "BackgroundTraining",
    "DEFAULT_PLOT_METRICS",
    "DEFAULT_TRAINING_BLOCK_SIZES",
    "DEFAULT_TRAINING_ITERATIONS",
    "DEVICES",
    "FusionComputation",
    "FusionJob",
    "MedFusionLogicCore",
    "MedFusionResult",
    "MedFusionTrainingResult",
    "TRAINING_FAMILIES",
    "TrainingCancelled",
    "TrainingComputation",
    "TrainingJob",
    "geometry_from_ijk_to_ras",
    "ijk_to_ras_from_geometry",
]
