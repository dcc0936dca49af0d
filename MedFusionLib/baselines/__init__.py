"""Classical image-fusion methods, used as comparison rows next to learned models.

Every baseline is a class with a ``name`` and a ``fuse(images)`` method (also
``baseline(images)``) taking any number K >= 2 of co-registered 2D images
(grey, or RGB/RGBA fused on BT.601 luminance), leaving them untouched, and
returning a new ``float64`` image of the same shape in the inputs' units.
Parameters go to the constructor and are validated there.

====================  =================================  ==========================
name                  class                              reference
====================  =================================  ==========================
``average``           :class:`AverageFusion`             pixel mean
``maximum``           :class:`MaximumFusion`             pixel maximum
``laplacian``         :class:`LaplacianPyramidFusion`    Burt & Adelson 1983/1985
``guided_filter``     :class:`GuidedFilterFusion`        Li, Kang & Hu, IEEE TIP 2013
``wavelet``           :class:`WaveletFusion`             Li, Manjunath & Mitra 1995
====================  =================================  ==========================

Example::

    from MedFusionLib.baselines import get_baseline
    fused = get_baseline("laplacian", levels=4).fuse([ct, mri])
"""

from __future__ import annotations

import inspect

from ..errors import InputError
from .guided import GuidedFilterFusion, guided_filter
from .pixel import AverageFusion, FusionBaseline, MaximumFusion
from .pyramid import LaplacianPyramidFusion, laplacian_pyramid, reconstruct_laplacian_pyramid
from .wavelet import WaveletFusion

#: Registry of the baselines: name -> class.
BASELINES: dict[str, type[FusionBaseline]] = {
    cls.name: cls
    for cls in (
        AverageFusion,
        MaximumFusion,
        LaplacianPyramidFusion,
        GuidedFilterFusion,
        WaveletFusion,
    )
}


def get_baseline(name: str, **params: object) -> FusionBaseline:
    """Create a baseline by its registry name.

    :param name: one of the keys of :data:`BASELINES` (case and surrounding spaces ignored).
    :param params: constructor parameters of that baseline, e.g. ``levels=4``.
    :return: a new baseline instance.
    :raises InputError: unknown name, unknown parameter or invalid parameter value.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in BASELINES:
        raise InputError(
            f"baseline: unknown name {name!r}; valid names are {', '.join(sorted(BASELINES))}"
        )
    cls = BASELINES[key]
    # Check the parameter names up front so a typo gives an InputError naming
    # the accepted parameters instead of a bare TypeError from __init__.
    accepted = list(inspect.signature(cls).parameters)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise InputError(
            f"baseline {key!r}: unknown parameter(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) if accepted else 'none'}"
        )
    return cls(**params)


__all__ = [
    "BASELINES",
    "AverageFusion",
    "FusionBaseline",
    "GuidedFilterFusion",
    "LaplacianPyramidFusion",
    "MaximumFusion",
    "WaveletFusion",
    "get_baseline",
    "guided_filter",
    "laplacian_pyramid",
    "reconstruct_laplacian_pyramid",
]
