"""The metric registry, :func:`evaluate` and the tidy metrics table shared by the CLI, experiments and Slicer."""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from ..errors import InputError
from ._group import ScoredGroup
from . import fmi as fmi_
from . import information as info_
from . import piella as piella_
from . import qabf as qabf_
from . import reference as ref_
from . import statistics as stat_
from . import structural as struct_

HIGHER = "higher is better"
LOWER = "lower is better"
NEUTRAL = "neither (descriptive)"


@dataclass(frozen=True)
class MetricInfo:
    """What a metric is: how it is called, what it needs, which way is better, where it comes from.

    ``family`` is ``"fused"`` (the fused image alone), ``"sources"`` (fused against
    the sources) or ``"target"`` (fused against a target image). ``function`` is the
    public function; ``compute`` the same metric on a :class:`ScoredGroup`, which
    :func:`evaluate` uses to share intermediate results between metrics.
    """

    key: str
    label: str
    family: str
    direction: str
    function: Callable[..., float]
    compute: Callable[[ScoredGroup], float]
    definition: str
    reference: str
    #: The metric this one is a named variant of (another toolbox's definition): computed only when asked for.
    variant_of: str | None = None


METRICS: dict[str, MetricInfo] = {
    m.key: m
    for m in [
        MetricInfo("EN", "EN", "fused", HIGHER, info_.entropy, info_._group_entropy,
                   "Shannon entropy of the 256-bin histogram, bits", "Roberts et al. 2008"),
        MetricInfo("MEAN", "MEAN", "fused", NEUTRAL, stat_.mean_intensity, stat_._group_mean_intensity,
                   "mean grey level (0-255)", "-"),
        MetricInfo("STD", "STD", "fused", HIGHER, stat_.standard_deviation, stat_._group_standard_deviation,
                   "population standard deviation (0-255)", "-"),
        MetricInfo("SF", "SF", "fused", HIGHER, stat_.spatial_frequency, stat_._group_spatial_frequency,
                   "sqrt(RF^2 + CF^2), mean squared neighbour differences", "Eskicioglu & Fisher 1995"),
        MetricInfo("GRAD", "GRAD (AG)", "fused", HIGHER, stat_.average_gradient, stat_._group_average_gradient,
                   "mean of sqrt((dx^2 + dy^2) / 2), forward differences", "Cui et al. 2015"),
        MetricInfo("EOG", "EOG", "fused", HIGHER, stat_.energy_of_gradient, stat_._group_energy_of_gradient,
                   "mean of dx^2 + dy^2, forward differences", "Subbarao et al. 1993"),
        MetricInfo("MI", "MI", "sources", HIGHER, info_.fusion_mutual_information,
                   info_._fusion_mutual_information,
                   "sum_k I(S_k; F), 256x256 joint histogram, nats", "Qu et al. 2002"),
        MetricInfo("FMI", "FMI", "sources", HIGHER, fmi_.feature_mutual_information,
                   fmi_._feature_mutual_information,
                   "fast feature MI on 3x3 windows of gradient features, mean over sources",
                   "Haghighat et al. 2011; Haghighat & Razian 2014"),
        MetricInfo("Q0", "Q0", "sources", HIGHER, struct_.universal_quality_index, struct_._universal_quality,
                   "universal image quality index, 8x8 sliding windows, mean over sources",
                   "Wang & Bovik 2002"),
        MetricInfo("QW", "QW", "sources", HIGHER, piella_.weighted_quality_index, piella_._weighted_quality,
                   "saliency-weighted SSIM map, 11x11 Gaussian windows",
                   "Piella & Heijmans 2003; Liu's metricPeilla.m (case 2)"),
        MetricInfo("QE", "QE", "sources", HIGHER, piella_.edge_dependent_quality_index,
                   piella_._edge_dependent_quality,
                   "QW x QW of the Prewitt edge images (alpha = 1)",
                   "Piella & Heijmans 2003; Liu's metricPeilla.m (case 3)"),
        MetricInfo("QABF", "Q^AB/F", "sources", HIGHER, qabf_.gradient_based_quality_index,
                   qabf_._gradient_based_quality,
                   "Sobel edge strength and orientation preservation",
                   "Xydeas & Petrovic 2000; VIFB metricsQabf.m"),
        MetricInfo("QABF_LIU", "Q^AB/F (Liu)", "sources", HIGHER, qabf_.gradient_based_quality_index_liu,
                   qabf_._gradient_based_quality_liu,
                   "Q^AB/F with orientation modulo pi, per-pixel normalised mean",
                   "Xydeas & Petrovic 2000; Liu's metricXydeas.m", variant_of="QABF"),
        MetricInfo("SSIM_S", "SSIM(S,F)", "sources", HIGHER, struct_.ssim_to_sources, struct_._ssim_to_sources,
                   "sum_k SSIM(S_k, F), 11x11 Gaussian sigma 1.5", "Wang et al. 2004"),
        MetricInfo("VIF", "VIF", "sources", HIGHER, struct_.visual_information_fidelity,
                   struct_._visual_information_fidelity,
                   "sum_k pixel-domain VIF(S_k, F), 4 scales", "Sheikh & Bovik 2006"),
        MetricInfo("RMSE", "RMSE", "target", LOWER, ref_.root_mean_squared_error, ref_._root_mean_squared_error,
                   "sqrt(mean (F - T)^2) (0-255)", "-"),
        MetricInfo("PSNR", "PSNR", "target", HIGHER, ref_.peak_signal_to_noise_ratio,
                   ref_._peak_signal_to_noise_ratio, "10 log10(255^2 / MSE), dB", "-"),
        MetricInfo("SSIM", "SSIM", "target", HIGHER, ref_.structural_similarity, ref_._structural_similarity,
                   "SSIM(T, F), 11x11 Gaussian sigma 1.5", "Wang et al. 2004"),
        MetricInfo("REL", "REL", "target", LOWER, ref_.relative_error, ref_._relative_error,
                   "||F - T||_2 / ||T||_2", "relative L2 error"),
        MetricInfo("CE", "CE (Entropy)", "target", LOWER, info_.cross_entropy, info_._cross_entropy,
                   "sum p_T log2(p_T / p_F), add-one smoothed histograms", "Bulanon et al. 2009"),
        MetricInfo("H", "H", "target", LOWER, info_.conditional_entropy, info_._conditional_entropy,
                   "conditional entropy H(T | F), bits", "Cover & Thomas 2006"),
    ]
}


def metric_names(family: str | None = None, *, variants: bool = False) -> list[str]:
    """Registry keys, in table order; only one family (``"fused"``, ``"sources"``, ``"target"``) if given.

    :param variants: also the named variants (e.g. ``"QABF_LIU"``), which are computed only when asked for.
    """
    return [k for k, m in METRICS.items()
            if (family is None or m.family == family) and (variants or m.variant_of is None)]


def default_metrics(with_target: bool) -> list[str]:
    """The keys :func:`evaluate` computes when not told: every default metric the inputs allow.

    :param with_target: whether a target image is given (it enables the target family).
    """
    return [k for k in metric_names() if with_target or METRICS[k].family != "target"]


def evaluate(
    fused: object,
    sources: Sequence[object],
    target: object | None = None,
    metrics: Iterable[str] | None = None,
    *,
    data_range: tuple[float, float] | None = None,
    backend: str | None = None,
) -> dict[str, float]:
    """Score one fused image: ``{metric key: value}`` in registry order.

    All images are mapped onto the 0-255 scale together, once (see
    :mod:`MedFusionLib.metrics._common`), so every metric sees the same numbers.
    Fusion time is not a metric: the caller measures it and adds it to the table.

    :param fused: the fused 2D image (grey or RGB).
    :param sources: the K >= 2 source images it was fused from, same shape.
    :param target: optional target (reference) image enabling RMSE, PSNR, SSIM, REL, CE and H.
    :param metrics: keys to compute (see :data:`METRICS`); default every metric the inputs allow,
        without the named variants (``"QABF_LIU"``: ask for it by name).
    :param data_range: optional ``(lo, hi)`` intensity range mapped to [0, 255].
    :param backend: ``"numba"`` (compiled kernels, the ``fast`` extra), ``"numpy"``, or None
        for numba when it is installed; both give the same values up to rounding.
    """
    if metrics is None:
        keys = default_metrics(target is not None)
    else:
        keys = list(metrics)
        unknown = [k for k in keys if k not in METRICS]
        if unknown:
            raise InputError(f"metrics: unknown {unknown}; choose from {list(METRICS)}")
        if target is None and any(METRICS[k].family == "target" for k in keys):
            raise InputError(
                f"metrics: {[k for k in keys if METRICS[k].family == 'target']} need a target image"
            )
    group = ScoredGroup.from_inputs(fused, sources, target, data_range, backend)
    group.requested = frozenset(keys)
    return {key: METRICS[key].compute(group) for key in METRICS if key in keys}


def metrics_table(
    results: Mapping[str, Mapping[str, float]] | Sequence[Mapping[str, object]],
    id_column: str = "image",
) -> list[dict[str, object]]:
    """Tidy table: one row per image, one column per metric (registry order), extra columns after.

    :param results: ``{image name: {metric: value, ...}}`` (e.g. from :func:`evaluate`,
        with a ``"time_s"`` the caller measured), or rows that already hold ``id_column``.
    :param id_column: name of the first column.
    :returns: a list of row dicts with identical keys, ready for CSV, a console or a Slicer table.
    """
    if isinstance(results, Mapping):
        rows = [{id_column: name, **values} for name, values in results.items()]
    else:
        rows = [dict(row) for row in results]
    present = {key for row in rows for key in row if key != id_column}
    columns = [k for k in METRICS if k in present]
    columns += sorted(present - set(columns))
    return [{id_column: row.get(id_column), **{c: row.get(c, math.nan) for c in columns}} for row in rows]


def table_to_csv(rows: Sequence[Mapping[str, object]], path: str | os.PathLike | None = None) -> str:
    """Write a :func:`metrics_table` as CSV text; also to ``path`` (atomically) if given."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _format_value(v) for k, v in row.items()})
    text = buffer.getvalue()
    if path is not None:
        from ..io import atomic_output  # SimpleITK is only needed when writing

        with atomic_output(path, overwrite=True) as temporary:
            temporary.write_text(text, encoding="utf-8")
    return text


def _format_value(value: object) -> object:
    return f"{value:.6g}" if isinstance(value, float) else value


def format_table(rows: Sequence[Mapping[str, object]]) -> str:
    """The table as aligned plain text for a console."""
    if not rows:
        return ""
    columns = list(rows[0])
    cells = [[str(_format_value(row[c])) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join(lines)
