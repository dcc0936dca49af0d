"""The bundled example data: a CT/MRI head-phantom pair, an MRI/PET pair with pseudo-colour PET, and a small volume pair.

The files in ``MedFusionLib/data/examples/`` are made by :func:`write_examples`
from the seeded phantom generator (``python -m MedFusionLib.data.examples``
rewrites them identically); they are the project's own work, under its BSD-3
licence. Seeds are in the evaluation range, so none of them was used in training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..io import LoadedImage, write_image
from .phantoms import make_pair, pseudo_colour
from .targets import EVALUATION_SEED_BASE, standardise_phantom

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

#: File names of the examples, by role.
EXAMPLE_FILES = {
    "ct": "ct.png",
    "mri": "mri_t1.png",
    "mri_t2": "mri_t2.png",
    "pet_colour": "pet_hot.png",
    "ct_volume": "ct_volume.nii.gz",
    "mri_volume": "mri_volume.nii.gz",
}

_SEED_2D = EVALUATION_SEED_BASE + 424242
_SEED_3D = EVALUATION_SEED_BASE + 434343


def example_path(role: str) -> Path:
    """Path of a bundled example (see :data:`EXAMPLE_FILES`)."""
    return EXAMPLES_DIR / EXAMPLE_FILES[role]


def write_examples(folder: Path = EXAMPLES_DIR) -> list[Path]:
    """(Re)generate the example files into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    pair = make_pair((256, 256), ("CT", "MRI_T1", "MRI_T2", "PET"), seed=_SEED_2D)
    for role, modality in (("ct", "CT"), ("mri", "MRI_T1"), ("mri_t2", "MRI_T2")):
        unit = standardise_phantom(pair.images[modality], modality)
        written.append(write_image(np.rint(unit * 255).astype(np.uint8), folder / EXAMPLE_FILES[role], overwrite=True))
    pet = pseudo_colour(standardise_phantom(pair.images["PET"], "PET"), "hot", vmin=0.0, vmax=1.0)
    written.append(write_image(pet, folder / EXAMPLE_FILES["pet_colour"], overwrite=True, is_color=True))
    volume = make_pair((48, 96, 96), ("CT", "MRI_T1"), seed=_SEED_3D, spacing=(2.0, 1.0, 1.0))
    # Oblique, offset geometry on purpose: fused volumes must keep it exactly.
    angle = np.deg2rad(10.0)
    direction = (np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0)
    for role, modality, dtype in (("ct_volume", "CT", np.int16), ("mri_volume", "MRI_T1", np.uint16)):
        data = np.rint(np.clip(volume.images[modality], np.iinfo(dtype).min, np.iinfo(dtype).max)).astype(dtype)
        image = LoadedImage.from_array(data, spacing=(1.0, 1.0, 2.0), origin=(-48.0, -60.0, 12.5), direction=direction)
        written.append(write_image(image, folder / EXAMPLE_FILES[role], overwrite=True))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate MedFusion's bundled example images.")
    parser.add_argument("--output", type=Path, default=EXAMPLES_DIR, help="folder to write (default: the package's)")
    for path in write_examples(parser.parse_args().output):
        print(path)


if __name__ == "__main__":
    main()
