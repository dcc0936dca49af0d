"""What the studies share: methods and their labels, timed fusion, scoring, spread and ranks."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from ..baselines import BASELINES, FusionBaseline
from ..engine.model import FusionModel
from ..errors import InputError
from ..fusion import FusionResult, Method, fuse, load_method
from ..metrics import HIGHER, LOWER, METRICS, evaluate
from .data import Case

#: The papers' "primary" / "secondary" disturbance per kind (the perturbation study; its module docstring).
PRIMARY: dict[str, float] = {"gaussian": 0.02, "salt_and_pepper": 0.01, "speckle": 0.05}
SECONDARY: dict[str, float] = {"gaussian": 0.05, "salt_and_pepper": 0.05, "speckle": 0.10}

#: The methods every study compares by default: the shipped model, then every baseline.
DEFAULT_METHODS: tuple[str, ...] = ("default", *BASELINES)
#: Column of the fusion wall time (seconds, fusion only: no loading, standardising or scoring).
TIME_COLUMN = "time_s"
#: The block-grid index of a fused image (:func:`MedFusionLib.metrics.block_grid_index`; lower is better).
GRID_COLUMN = "GRID"
#: All images of the studies are in [0, 1]; fixing the range keeps the 0-255 mapping identical
#: for every method (evaluate's automatic rule could otherwise depend on the values).
DATA_RANGE = (0.0, 1.0)


def method_label(method: Method) -> str:
    """A short, stable label: ``"default"``, a baseline name, a model file's stem."""
    if isinstance(method, FusionBaseline):
        return method.name
    if isinstance(method, FusionModel):
        return f"{method.family} model"
    text = str(method).strip()
    if text.lower() == "default" or text.lower() in BASELINES:
        return text.lower()
    return Path(text).stem


def resolve_methods(methods: Iterable[Method] | None) -> list[tuple[str, FusionModel | FusionBaseline]]:
    """``(label, loaded method)`` for each method, loaded once; labels made unique.

    :param methods: names, model paths or objects; None -> :data:`DEFAULT_METHODS`.
    """
    chosen = list(DEFAULT_METHODS if methods is None else methods)
    if not chosen:
        raise InputError("methods: choose at least one method")
    resolved: list[tuple[str, FusionModel | FusionBaseline]] = []
    labels: set[str] = set()
    for method in chosen:
        label = base = method_label(method)
        suffix = 2
        while label in labels:  # two model files with one stem must not share table rows
            label, suffix = f"{base}-{suffix}", suffix + 1
        labels.add(label)
        resolved.append((label, load_method(method)))
    return resolved


def fuse_case(case: Case, method: FusionModel | FusionBaseline, *, block_size: int | None = None,
              device: str | None = None, inputs: Sequence[np.ndarray] | None = None) -> FusionResult:
    """Fuse one case (or replacement ``inputs``, e.g. disturbed ones); the result carries its time."""
    return fuse(list(case.inputs if inputs is None else inputs), method=method, block_size=block_size, device=device)


def warm_up(method: FusionModel | FusionBaseline, case: Case, device: str | None,
            block_size: int | None = None) -> None:
    """One untimed fusion first: the first call pays one-off costs (thread pools, kernel selection,
    caches) that would otherwise be charged to whichever case happens to come first."""
    fuse_case(case, method, block_size=block_size, device=device)


def score(fused: np.ndarray, sources: Sequence[np.ndarray], target: np.ndarray | None,
          metrics: Iterable[str] | None = None) -> dict[str, float]:
    """:func:`~MedFusionLib.metrics.evaluate` on the [0, 1] scale; target metrics only with a target."""
    keys = None if metrics is None else [k for k in metrics if target is not None or METRICS[k].family != "target"]
    return evaluate(fused, list(sources), target, keys, data_range=DATA_RANGE)


def output_digest(image: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes: equal digests = bit-identical outputs."""
    array = np.ascontiguousarray(image)
    return hashlib.sha256(f"{array.dtype}{array.shape}".encode() + array.tobytes()).hexdigest()


def seed_everything(seed: int) -> None:
    """Seed torch (models) and numpy's global generator (anything that uses it)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def spread(values: Sequence[float]) -> dict[str, float]:
    """mean, sample standard deviation (ddof = 1; NaN for one value), min, max and count."""
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if array.size == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    low, high = float(np.min(array)), float(np.max(array))
    if low == high:
        # identical values: exactly that value and exactly zero spread (np.mean of n copies of x
        # can differ from x in the last bit, which would show a deterministic method as varying)
        return {"mean": low, "std": 0.0 if array.size > 1 else math.nan, "min": low, "max": high, "n": int(array.size)}
    with np.errstate(invalid="ignore"):  # inf - inf in the std of PSNR = inf values
        std = float(np.std(array, ddof=1)) if array.size > 1 else math.nan
    return {"mean": float(np.mean(array)), "std": std, "min": low, "max": high, "n": int(array.size)}


def direction(quantity: str) -> str | None:
    """``HIGHER``/``LOWER`` for a rankable quantity; None for descriptive ones (MEAN) and unknown names."""
    if quantity in (TIME_COLUMN, GRID_COLUMN):
        return LOWER
    info = METRICS.get(quantity)
    if info is None or info.direction not in (HIGHER, LOWER):
        return None
    return info.direction


def ranks(values: Sequence[float], better: str | None) -> list[float | None]:
    """Rank 1 = best, following the metric's direction; ties share the average rank
    (as in Friedman-type comparisons); NaN values and descriptive metrics get no rank."""
    if better is None:
        return [None] * len(values)
    array = np.asarray(values, dtype=np.float64)
    valid = ~np.isnan(array)
    out: list[float | None] = [None] * len(values)
    if valid.any():
        keyed = -array[valid] if better == HIGHER else array[valid]
        for index, rank in zip(np.flatnonzero(valid), rankdata(keyed, method="average")):
            out[int(index)] = float(rank)
    return out


def metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Metric keys present in rows, in registry order, then the time column if present."""
    present = {k for row in rows for k in row}
    return [k for k in METRICS if k in present] + [c for c in (GRID_COLUMN, TIME_COLUMN) if c in present]
