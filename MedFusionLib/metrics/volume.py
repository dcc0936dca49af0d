"""Scores of a fused volume: the 2D metrics slice by slice, and their mean over informative slices.

The metrics are defined on 2D images (:func:`~MedFusionLib.metrics.evaluate`), so a volume is
scored slice by slice along the axis it was fused along, on the [0, 1] intensities fusion
works on: each source is standardised as :func:`MedFusionLib.fusion.fuse_volume` standardises
it, and every slice is mapped with the same ``data_range=(0, 1)``, so slices are comparable.
A slice in which every source is constant (empty background slices at the ends of a scan)
is skipped: its values are NaN and it does not count. A metric's volume value is the mean of
its per-slice values over the remaining slices.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import Cancelled, InputError
from ..progress import CancelFlag
from .evaluate import default_metrics, evaluate


@dataclass
class VolumeScores:
    """What :func:`evaluate_volume` measured.

    :param metrics: volume value of each metric: the mean over the informative slices (NaN if none).
    :param slice_metrics: per-slice values of each metric (NaN on skipped slices).
    :param slice_indices: index of each slice along the axis.
    :param seconds: wall time of the scoring.
    """

    metrics: dict[str, float]
    slice_metrics: dict[str, np.ndarray]
    slice_indices: np.ndarray
    seconds: float


def evaluate_volume(
    fused: np.ndarray,
    sources: Sequence[np.ndarray],
    target: Optional[np.ndarray] = None,
    metrics: Optional[Sequence[str]] = None,
    *,
    axis: int = 0,
    modalities: Optional[Sequence[Optional[str]]] = None,
    progress: Optional[Callable[[float, str], None]] = None,
    cancel: Optional[CancelFlag] = None,
) -> VolumeScores:
    """Score a fused volume slice by slice along ``axis``; see the module docstring for the rules.

    :param fused: the fused volume: in [0, 1] as :func:`~MedFusionLib.fusion.fuse_volume` returns it, or any
        other range (another method's output, an 8-bit volume), which is min-max scaled to [0, 1].
    :param sources: the K >= 2 source volumes it was fused from, on its grid (raw intensities; not modified).
    :param target: optional target (ideal fused) volume on the same grid, for the full-reference metrics.
    :param metrics: metric keys (default: every metric the inputs allow), computed in registry order.
    :param axis: the array axis the volume was fused along (0, 1 or 2).
    :param modalities: optional modality per source (``"CT"``, ``"MRI"``, ...) for standardisation.
    :param progress: ``progress(fraction, message)`` every few slices.
    :param cancel: ``cancel.is_set()`` is polled before every slice; raises :class:`~MedFusionLib.errors.Cancelled`.
    :returns: a :class:`VolumeScores`.
    """
    from ..fusion import to_unit_range  # fusion does not import metrics: no cycle

    start = time.perf_counter()
    fused = np.asarray(fused)
    if fused.ndim != 3:
        raise InputError(f"fused volume: expected a 3D array, got shape {fused.shape}")
    fused = _on_unit_range(fused)
    if isinstance(axis, bool) or axis not in (0, 1, 2):
        raise InputError(f"axis: expected 0, 1 or 2, got {axis!r}")
    if len(sources) < 2:
        raise InputError(f"sources: at least 2 volumes are needed, got {len(sources)}")
    modalities = list(modalities) if modalities is not None else [None] * len(sources)
    if len(modalities) != len(sources):
        raise InputError(f"modalities: {len(modalities)} given for {len(sources)} sources")
    units = [to_unit_range(s, modalities[i], f"source {i + 1}") for i, s in enumerate(sources)]
    target_unit = to_unit_range(target, None, "target") if target is not None else None
    for name, volume in [*((f"source {i + 1}", u) for i, u in enumerate(units)), ("target", target_unit)]:
        if volume is not None and volume.shape != fused.shape:
            raise InputError(f"{name}: shape {volume.shape} differs from the fused volume's {fused.shape}")
    keys = list(metrics) if metrics is not None else default_metrics(target is not None)

    count = fused.shape[axis]
    values = {key: np.full(count, np.nan) for key in keys}
    # Degenerate slices (a constant fused slice, say) give NaN by design: silence NumPy's
    # floating-point warnings here, at their source, rather than the process-wide warning filters.
    with np.errstate(divide="ignore", invalid="ignore"):
        for s in range(count):
            if cancel is not None and cancel.is_set():
                raise Cancelled("scoring cancelled")
            slices = [np.take(u, s, axis=axis) for u in units]
            if min(slices[0].shape) < 2 or all(float(np.ptp(x)) == 0.0 for x in slices):
                continue  # nothing was fused in this slice: its metrics would only dilute the mean
            scores = evaluate(
                np.take(fused, s, axis=axis),
                slices,
                np.take(target_unit, s, axis=axis) if target_unit is not None else None,
                keys,
                data_range=(0.0, 1.0),
            )
            for key, value in scores.items():
                values[key][s] = value
            if progress is not None and (s % 4 == 3 or s == count - 1):
                progress((s + 1) / count, f"metrics of slice {s + 1}/{count}")
    means = {key: (float(np.nanmean(v)) if np.any(~np.isnan(v)) else math.nan) for key, v in values.items()}
    return VolumeScores(means, values, np.arange(count), time.perf_counter() - start)


def _on_unit_range(volume: np.ndarray) -> np.ndarray:
    """A fused volume on [0, 1]: MedFusion's own are already; any other is min-max scaled."""
    low, high = float(np.min(volume)), float(np.max(volume))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputError("fused volume: contains NaN or infinite values")
    if 0.0 <= low and high <= 1.0:
        return volume
    volume = np.asarray(volume, dtype=np.float64)
    return (volume - low) / (high - low) if high > low else np.zeros_like(volume)
