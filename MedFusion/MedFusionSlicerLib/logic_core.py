"""The MedFusion module's whole MRML logic in one class: :class:`MedFusionLogicCore`.

Fusion (:class:`~.fusion_logic.FusionLogic`) and training (:class:`~.training_logic.TrainingLogic`)
each have three phases -- prepare on the scene's thread, compute anywhere, commit on the
scene's thread -- and a synchronous whole (:meth:`fuse`, :meth:`train`) for batch scripts.
The widget runs the compute phase in a worker process (:mod:`.process`).
"""

from __future__ import annotations

from .fusion_logic import FusionLogic
from .training_logic import TrainingLogic


class MedFusionLogicCore(FusionLogic, TrainingLogic):
    """Fuse registered scalar volume nodes and train fusion models; usable without the widget.

    ``MedFusionLogicCore().fuse([ctNode, mriNode])`` returns a :class:`~.jobs.MedFusionResult`
    whose ``outputVolumeNode`` holds the fused volume; ``MedFusionLogicCore().train("m.pt",
    [ctNode, mriNode], idealNode)`` writes a model file. Both are synchronous. Errors in what was
    passed raise :class:`MedFusionLib.errors.InputError` (a ``ValueError``) with a message naming
    the input and the problem; on a refusal, a cancel or any other exception the scene is left
    exactly as it was and no file is written.

    It needs only the MRML classes, ``slicer.util``, VTK, NumPy and MedFusionLib -- not
    ``slicer.app``, Qt or ``ScriptedLoadableModule`` -- so it runs in Slicer, in
    ``Slicer --no-main-window`` scripts, and in plain Python with the ``slicer-core`` wheel.
    """
