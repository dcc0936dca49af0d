"""Data sets for the studies: a list of :class:`Case` (name, modality-pair label, inputs, optional target).

- :func:`phantom_dataset`: the bundled evaluation set -- seeded head phantoms with
  evaluation seeds (>= :data:`~MedFusionLib.data.targets.EVALUATION_SEED_BASE`, never
  used in training) and their :func:`~MedFusionLib.data.targets.saliency_blend` targets.
- :func:`dataset_from_source`: your own data, from a manifest CSV or a folder of case
  folders (the conventions of :mod:`MedFusionLib.batch`), standardised as
  :func:`~MedFusionLib.fusion.fuse` standardises (modality columns honoured, colour
  inputs on luminance) so every study scores what fusion actually sees.

All images of a case are 2D ``float32`` in [0, 1]; the metrics then map them jointly
onto 0-255, the same for every method.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..data.targets import EVALUATION_SEED_BASE, MODALITY_PAIRS, phantom_cases
from ..errors import InputError
from ..validation import check_int

#: Pairs of the papers' experiments (CT-MRI and MRI-SPECT), used by ``quick`` runs.
PAPER_PAIRS: tuple[tuple[str, str], ...] = (("CT", "MRI_T1"), ("MRI_T1", "SPECT"))
#: Seed offset between data sets drawn with different ``data_seed`` values (no seed is shared).
DATA_SEED_STRIDE = 100_000
#: Label of cases whose modalities are not known.
UNSPECIFIED_PAIR = "all"


@dataclass(frozen=True)
class Case:
    """One group to fuse.

    :param name: unique case name (table rows).
    :param pair: modality-pair label (summaries are per label), e.g. ``"CT+MRI_T1"``.
    :param inputs: K >= 2 registered 2D ``float32`` images in [0, 1].
    :param target: the reference fused image, or None (target metrics then stay empty).
    :param seed: the phantom seed, or None for user data.
    """

    name: str
    pair: str
    inputs: tuple[np.ndarray, ...]
    target: np.ndarray | None = None
    seed: int | None = None


def pair_label(modalities: Sequence[str | None] | None) -> str:
    """``"CT+MRI_T1"`` from modalities; :data:`UNSPECIFIED_PAIR` when any is unknown."""
    if not modalities or any(m is None for m in modalities):
        return UNSPECIFIED_PAIR
    return "+".join(str(m) for m in modalities)


def phantom_dataset(
    count_per_pair: int = 10,
    pairs: Iterable[Sequence[str]] = MODALITY_PAIRS,
    shape: tuple[int, int] = (256, 256),
    data_seed: int = 0,
) -> list[Case]:
    """The bundled evaluation set: ``count_per_pair`` phantoms per modality pair.

    Seeds are ``EVALUATION_SEED_BASE + DATA_SEED_STRIDE * data_seed + 1000 g + i`` for
    case i of pair g, so every data seed gives a disjoint, held-out set.

    :param count_per_pair: cases per pair (the papers use 10).
    :param pairs: modality groups, e.g. :data:`PAPER_PAIRS`.
    :param shape: image shape (>= 32 x 32).
    :param data_seed: which held-out set (0, 1, ...).
    """
    data_seed = check_int(data_seed, "data_seed", minimum=0)
    pairs = [tuple(p) for p in pairs]
    cases = phantom_cases(count_per_pair, tuple(shape), pairs, seed=EVALUATION_SEED_BASE + DATA_SEED_STRIDE * data_seed)
    return [
        Case(f"{pair_label(c.modalities)}-{c.seed}", pair_label(c.modalities),
             tuple(np.asarray(x, dtype=np.float32) for x in c.inputs), np.asarray(c.target, dtype=np.float32), c.seed)
        for c in cases
    ]


def dataset_from_source(source: str | os.PathLike) -> list[Case]:
    """Cases from a manifest CSV or a folder of case folders (see :mod:`MedFusionLib.batch`).

    Inputs are standardised as fusion does: the group's modalities when given, else
    automatically; colour inputs on BT.601 luminance. Targets are mapped to [0, 1]
    (``uint8`` / 255, else percentiles). 2D groups only.

    :param source: manifest ``.csv`` or folder.
    :raises InputError: unreadable data, a 3D group, or shapes that differ within a group.
    """
    from ..batch import groups_from_folder, groups_from_manifest
    from ..fusion import to_unit_range
    from ..io import read_image
    from ..preprocessing import split_luminance

    path = Path(source)
    groups = groups_from_folder(path) if path.is_dir() else groups_from_manifest(path)

    def unit(image, modality: str | None, label: str) -> np.ndarray:  # noqa: ANN001 - LoadedImage
        if image.is_color:
            return np.asarray(split_luminance(image)[0], dtype=np.float32)
        if image.dimension != 2:
            raise InputError(f"{label}: the experiments work on 2D images, got a {image.dimension}D image")
        return to_unit_range(image.array, modality, label)

    cases = []
    for group in groups:
        modalities = group.modalities or (None,) * len(group.inputs)
        inputs = tuple(unit(read_image(p), m, f"{group.name} input {i + 1}")
                       for i, (p, m) in enumerate(zip(group.inputs, modalities)))
        target = unit(read_image(group.target), None, f"{group.name} target") if group.target else None
        shapes = {x.shape for x in (*inputs, *((target,) if target is not None else ()))}
        if len(shapes) != 1:
            raise InputError(f"{group.name}: inputs and target differ in shape {sorted(shapes)}; register them first")
        cases.append(Case(group.name, pair_label(group.modalities), inputs, target))
    return cases


def per_pair(cases: Sequence[Case], count: int | None) -> list[Case]:
    """The first ``count`` cases of every pair label (all when None), in the original order."""
    if count is None:
        return list(cases)
    seen: dict[str, int] = {}
    kept = []
    for case in cases:
        if seen.get(case.pair, 0) < count:
            kept.append(case)
            seen[case.pair] = seen.get(case.pair, 0) + 1
    return kept


def check_cases(cases: Sequence[Case]) -> list[Case]:
    """Refuse an empty data set or duplicate names (rows would be ambiguous)."""
    cases = list(cases)
    if not cases:
        raise InputError("data set: no cases")
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"data set: duplicate case names {duplicates}")
    return cases


def describe(cases: Sequence[Case]) -> dict[str, object]:
    """A JSON summary of a data set for ``run.json`` (names, pairs, seeds, shape)."""
    return {
        "cases": len(cases),
        "pairs": sorted({c.pair for c in cases}),
        "names": [c.name for c in cases],
        "phantom_seeds": [c.seed for c in cases if c.seed is not None],
        "shapes": sorted({"x".join(map(str, c.inputs[0].shape)) for c in cases}),
        "with_target": sum(c.target is not None for c in cases),
    }
