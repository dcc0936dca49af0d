"""MedFusionLib: the engine behind the MedFusion 3D Slicer extension.

No Qt and no ``slicer`` imports live here, so everything can be used from plain
Python, batch scripts, the ``medfusion`` CLI and the Slicer module alike.

Sub-packages:

- :mod:`MedFusionLib.metrics` -- fusion-quality metrics (one function per metric).
- :mod:`MedFusionLib.baselines` -- classical fusion methods used as comparison rows.
"""

__version__ = "0.1.0"
