"""Optional accelerators: a module that needs an extra (numba, the ``fast`` extra), or None without it."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType


@functools.lru_cache(maxsize=None)
def optional_module(name: str) -> ModuleType | None:
    """``importlib.import_module(name)``, or None when a package it needs is not installed.

    Imported on first use, not with the package (numba's import takes a noticeable fraction of a
    second), and tried once per process.

    :param name: the module's full name, e.g. ``"MedFusionLib.engine._kernels"``.
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
