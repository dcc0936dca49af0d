"""Synthetic and template-derived data for training and testing MedFusion.

- :mod:`MedFusionLib.data.phantoms` -- seeded, registered multimodal head phantoms
  (CT, MRI T1/T2, PET, SPECT) with known anatomy, 2D and 3D, plus optional
  images derived from nilearn's bundled MNI152 template.

Example::

    from MedFusionLib.data import make_pair, pseudo_colour
    ph = make_pair((256, 256), ("MRI_T1", "PET"), seed=3)
    rgb = pseudo_colour(ph.images["PET"], "hot")
"""

from .phantoms import (
    DEFAULT_BIAS,
    DEFAULT_BLUR,
    DEFAULT_NOISE,
    DEFAULT_TEXTURE,
    LESION_TISSUES,
    MODALITIES,
    NOISE_REFERENCE,
    NORMAL_TISSUES,
    TISSUE_MEANS,
    MissingDependencyError,
    Phantom,
    Tissue,
    head_labels,
    make_pair,
    mni152_slices,
    pseudo_colour,
    render,
)

__all__ = [
    "DEFAULT_BIAS",
    "DEFAULT_BLUR",
    "DEFAULT_NOISE",
    "DEFAULT_TEXTURE",
    "LESION_TISSUES",
    "MODALITIES",
    "NOISE_REFERENCE",
    "NORMAL_TISSUES",
    "TISSUE_MEANS",
    "MissingDependencyError",
    "Phantom",
    "Tissue",
    "head_labels",
    "make_pair",
    "mni152_slices",
    "pseudo_colour",
    "render",
]
