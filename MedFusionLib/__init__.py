"""MedFusionLib: the engine behind the MedFusion 3D Slicer extension.

No Qt and no ``slicer`` imports live here, so everything can be used from plain
Python, batch scripts, the ``medfusion`` CLI and the Slicer module alike::

    from MedFusionLib import fuse, fuse_volume, evaluate
    fused = fuse_volume([ct, mri])          # SimpleITK images in, a SimpleITK image out

The top-level names are imported on first use (PEP 562), so ``import MedFusionLib`` stays
cheap; PyTorch and SimpleITK load when a fusion function is first touched.

Sub-packages:

- :mod:`MedFusionLib.fusion` -- the fusion API (``fuse``, ``fuse_volume``, ``fuse_files``).
- :mod:`MedFusionLib.metrics` -- fusion-quality metrics (one function per metric).
- :mod:`MedFusionLib.baselines` -- classical fusion methods used as comparison rows.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "fuse": "MedFusionLib.fusion",
    "fuse_volume": "MedFusionLib.fusion",
    "fuse_files": "MedFusionLib.fusion",
    "evaluate": "MedFusionLib.metrics",
    "evaluate_volume": "MedFusionLib.metrics",
    "FusionModel": "MedFusionLib.engine.model",
    "LoadedImage": "MedFusionLib.io",
    "read_image": "MedFusionLib.io",
    "write_image": "MedFusionLib.io",
    "InputError": "MedFusionLib.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'MedFusionLib' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
