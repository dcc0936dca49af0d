"""The report's figures (matplotlib, Agg backend: no display needed). Every function returns a Figure.

Conventions: labelled axes with units, a legend wherever there is more than one line or
bar series, error bars / bands = one sample standard deviation across groups (or repeats).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: reports are built on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..metrics import HIGHER, LOWER, METRICS  # noqa: E402
from ._common import GRID_COLUMN, TIME_COLUMN, direction  # noqa: E402

Row = dict[str, Any]

#: Units of the quantities on the metrics' 0-255 scale (see the README's metric table).
UNITS: dict[str, str] = {
    "EN": "bits", "MEAN": "grey level (0-255)", "STD": "grey level (0-255)", "SF": "grey levels / px",
    "GRAD": "grey levels / px", "EOG": "grey levels$^2$ / px$^2$", "MI": "nats", "FMI": "index (0-1)",
    "Q0": "index (-1..1)", "QW": "index (-1..1)", "QE": "index (-1..1)", "QABF": "index (0-1)",
    "SSIM_S": "sum of SSIM over sources", "VIF": "sum of VIF over sources", "RMSE": "grey level (0-255)",
    "PSNR": "dB", "SSIM": "index (-1..1)", "REL": "ratio", "CE": "bits", "H": "bits", TIME_COLUMN: "ms",
    GRID_COLUMN: "ratio; 1 = no grid",
}
#: Factor from the tables' unit to the plotted one (times are stored in seconds, drawn in ms).
SCALES: dict[str, float] = {TIME_COLUMN: 1000.0}
_SUFFIX = "_vs_undisturbed"


def quantity_label(quantity: str) -> str:
    """``"Q^AB/F (index (0-1), higher is better)"``-style axis label."""
    base = quantity[: -len(_SUFFIX)] if quantity.endswith(_SUFFIX) else quantity
    name = METRICS[base].label if base in METRICS else {TIME_COLUMN: "fusion time", GRID_COLUMN: "block-grid index"}.get(
        base, base)
    if quantity.endswith(_SUFFIX):
        name += " vs undisturbed fusion"
    better = direction(base)
    arrow = {HIGHER: ", higher better", LOWER: ", lower better"}.get(better or "", "")
    return f"{name}\n[{UNITS.get(base, '')}{arrow}]"


def _grid(count: int, columns: int = 4, size: tuple[float, float] = (3.6, 2.9)) -> tuple[Figure, list[Any]]:
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows + 1.1), squeeze=False)
    flat = list(axes.ravel())
    for axis in flat[count:]:
        axis.set_visible(False)
    return figure, flat[:count]


def _title_and_legend(figure: Figure, axis: Any, title: str, legend_title: str, entries: int) -> None:
    """Title on top, the shared legend under it, panels below both (a fixed band in inches,
    so neither overlaps the panels whatever the figure's height)."""
    height = figure.get_figheight()
    rows = math.ceil(entries / 6)
    figure.suptitle(title, y=1 - 0.08 / height, va="top", fontsize=11, fontweight="bold")
    figure.legend(*axis.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 1 - 0.38 / height),
                  ncol=min(entries, 6), fontsize=8, title=legend_title, title_fontsize=8)
    # fixed margins in inches rather than tight_layout: tight_layout lays out every label twice,
    # which made the figures the slowest part of a quick run
    width = figure.get_figwidth()
    figure.subplots_adjust(left=1.0 / width, right=1 - 0.15 / width, bottom=0.75 / height,
                           top=1 - (0.85 + 0.22 * rows) / height, wspace=0.5, hspace=0.6)


def _finite(values: Sequence[Any]) -> np.ndarray:
    array = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    array[~np.isfinite(array)] = np.nan  # PSNR = inf for identical images cannot be drawn
    return array


def comparison_bars(summary: Sequence[Row], quantities: Sequence[str], title: str) -> Figure:
    """One panel per quantity: bars = methods, grouped by modality pair; error bars = std over groups.
    A lone panel (the time) is drawn wider, on a log axis: methods differ by orders of magnitude."""
    pairs = list(dict.fromkeys(r["pair"] for r in summary))
    methods = list(dict.fromkeys(r["method"] for r in summary))
    lookup = {(r["pair"], r["method"], r["quantity"]): r for r in summary}
    figure, axes = _grid(len(quantities), size=(3.6, 2.9) if len(quantities) > 1 else (8.0, 3.6))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(pairs))
    colours = plt.get_cmap("tab10")
    for axis, quantity in zip(axes, quantities):
        for m, method in enumerate(methods):
            cells = [lookup.get((p, method, quantity), {}) for p in pairs]
            factor = SCALES.get(quantity, 1.0)
            means = factor * _finite([c.get("mean") for c in cells])
            stds = factor * np.nan_to_num(_finite([c.get("std") for c in cells]))
            axis.bar(x + (m - (len(methods) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
                     label=method, color=colours(m % 10))
        if quantity == TIME_COLUMN:
            axis.set_yscale("log")
        axis.set_xticks(x, [p.replace("+", "+\n") for p in pairs], fontsize=7)
        axis.set_xlabel("modality pair", fontsize=8)
        axis.set_ylabel(quantity_label(quantity), fontsize=8)
        axis.tick_params(axis="y", labelsize=7)
        axis.grid(axis="y", alpha=0.3)
    _title_and_legend(figure, axes[0], title, "method (error bars: 1 std over groups)", len(methods))
    return figure


def metric_curves(summary: Sequence[Row], x_key: str, quantities: Sequence[str], x_label: str, title: str,
                  series_key: str = "method", marks: dict[str, float] | None = None,
                  x_scale: float = 1.0, x_ticks: dict[float, str] | None = None) -> Figure:
    """One panel per quantity: mean (line) and +-1 std (band) against ``x_key``, one line per series."""
    series = list(dict.fromkeys(r[series_key] for r in summary))
    figure, axes = _grid(len(quantities))
    colours = plt.get_cmap("tab10")
    for axis, quantity in zip(axes, quantities):
        for s, name in enumerate(series):
            cells = sorted((r for r in summary if r[series_key] == name and r["quantity"] == quantity),
                           key=lambda r: r[x_key])
            if not cells:
                continue
            x = np.asarray([c[x_key] for c in cells], dtype=float) * x_scale
            factor = SCALES.get(quantity, 1.0)
            mean = factor * _finite([c["mean"] for c in cells])
            std = factor * np.nan_to_num(_finite([c["std"] for c in cells]))
            axis.plot(x, mean, marker="o", ms=3, label=name, color=colours(s % 10))
            axis.fill_between(x, mean - std, mean + std, alpha=0.15, color=colours(s % 10))
        for label, value in (marks or {}).items():
            axis.axvline(value * x_scale, ls="--", lw=0.8, color="grey")
            axis.text(value * x_scale, 1.0, f" {label}", transform=axis.get_xaxis_transform(), fontsize=6,
                      va="top", color="grey", rotation=90)
        if x_ticks:
            axis.set_xticks([k * x_scale for k in x_ticks], list(x_ticks.values()), fontsize=7)
        axis.set_xlabel(x_label, fontsize=8)
        axis.set_ylabel(quantity_label(quantity), fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    _title_and_legend(figure, axes[0], title, "line: mean over groups; band: +-1 std", len(series))
    return figure


def convergence_figure(curve: Sequence[Row], validation: Sequence[Row], summary: Row) -> Figure:
    """Training loss (raw and smoothed) and validation loss against iteration; the flattening iteration marked."""
    figure, axis = plt.subplots(figsize=(8, 4.2))
    it = [r["iteration"] for r in curve]
    axis.plot(it, [r["train_loss"] for r in curve], lw=0.5, alpha=0.35, color="tab:blue", label="training loss")
    axis.plot(it, [r["smoothed_loss"] for r in curve], lw=1.6, color="tab:blue",
              label=f"training loss, moving average ({summary.get('window')} iterations)")
    if validation:
        axis.plot([r["iteration"] for r in validation], [r["validation_loss"] for r in validation], "o-", ms=3,
                  lw=1, color="tab:orange", label="validation loss")
    flat = summary.get("flattening_iteration")
    if flat is not None:
        axis.axvline(flat, ls="--", color="tab:red", lw=1,
                     label=f"flattens at iteration {flat} (within {100 * summary.get('tolerance', 0):g} % of final)")
    if all(r["train_loss"] > 0 for r in curve):
        axis.set_yscale("log")
    axis.set_xlabel("iteration (optimiser step)")
    axis.set_ylabel("loss (MSE + weighted gradient L1,\nintensities in [0, 1]; log scale)")
    axis.set_title("Training convergence")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def time_boxes(runs: Sequence[Row]) -> Figure:
    """Fusion time of every repeat, per method (all groups pooled)."""
    methods = list(dict.fromkeys(r["method"] for r in runs))
    data = [[1000.0 * r[TIME_COLUMN] for r in runs if r["method"] == m] for m in methods]
    figure, axis = plt.subplots(figsize=(max(5.0, 1.2 * len(methods)), 3.8))
    axis.boxplot(data, showfliers=True)
    axis.set_xticks(range(1, len(methods) + 1), methods, rotation=20, fontsize=8)
    axis.set_xlabel("method")
    axis.set_ylabel("fusion time per repeat (ms)")
    axis.set_yscale("log")
    axis.set_title("Repeatability: fusion time over all repeats and groups")
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    return figure


def image_grid(name: str, sources: Sequence[np.ndarray], target: np.ndarray | None, fused: Sequence[np.ndarray],
               methods: Sequence[str]) -> Figure:
    """Row 1: sources and target; row 2: each method's fused image; row 3: |fused - target| (with a target)."""
    columns = max(len(sources) + (target is not None), len(fused))
    rows = 3 if target is not None else 2
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.35 * rows + 0.4), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    top = [(f"source {chr(65 + k)}", s) for k, s in enumerate(sources)]
    if target is not None:
        top.append(("target", target))
    for axis, (label, image) in zip(axes[0], top):
        axis.imshow(image, cmap="gray", vmin=0, vmax=255)
        axis.set_title(label, fontsize=8)
    for axis, label, image in zip(axes[1], methods, fused):
        axis.imshow(image, cmap="gray", vmin=0, vmax=255)
        axis.set_title(f"fused: {label}", fontsize=8)
    if target is not None:
        differences = [np.abs(f.astype(np.float64) - target.astype(np.float64)) for f in fused]
        top_value = max(float(np.percentile(d, 99.5)) for d in differences) or 1.0
        shown = None
        for axis, label, difference in zip(axes[2], methods, differences):
            shown = axis.imshow(difference, cmap="magma", vmin=0, vmax=top_value)
            axis.set_title(f"|fused - target|: {label}", fontsize=7)
        if shown is not None:
            bar = figure.colorbar(shown, ax=list(axes[2]), fraction=0.02, pad=0.01)
            bar.set_label("|difference| (grey levels, 0-255)", fontsize=7)
    figure.suptitle(f"{name}: sources, fused images and difference to the target", fontsize=10)
    figure.subplots_adjust(left=0.01, right=0.93, bottom=0.02, top=1 - 0.55 / figure.get_figheight(),
                           wspace=0.06, hspace=0.3)
    return figure


def training_runs(runs: Sequence[Row], quantities: Sequence[str]) -> Figure:
    """Repeated training: one panel per metric, one dot per trained model (its mean over the groups),
    grouped by seed mode -- identical dots are what reproducible training looks like."""
    modes = list(dict.fromkeys(r["mode"] for r in runs))
    figure, axes = _grid(max(len(quantities), 1), size=(3.4, 2.9))
    colours = plt.get_cmap("tab10")
    for axis, quantity in zip(axes, quantities):
        for m, mode in enumerate(modes):
            mine = [r for r in runs if r["mode"] == mode and r.get(quantity) is not None]
            run_ids = list(dict.fromkeys(r["run"] for r in mine))
            means = [float(np.mean([r[quantity] for r in mine if r["run"] == run])) for run in run_ids]
            offsets = np.linspace(-0.15, 0.15, len(means)) if len(means) > 1 else np.zeros(1)
            axis.plot(m + offsets, means, "o", ms=5, color=colours(m % 10), label=f"{mode} seed")
        axis.set_xticks(range(len(modes)), [f"{mode} seed" for mode in modes], fontsize=7)
        axis.set_xlim(-0.6, len(modes) - 0.4)
        axis.set_xlabel("training seeds", fontsize=8)
        axis.set_ylabel(quantity_label(quantity), fontsize=8)
        axis.tick_params(axis="y", labelsize=7)
        axis.ticklabel_format(axis="y", useOffset=False)
        axis.grid(axis="y", alpha=0.3)
    _title_and_legend(figure, axes[0], "Repeated training: each trained model's mean over the groups",
                      "dot: one trained model", len(modes))
    return figure
