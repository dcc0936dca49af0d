"""The report of a run folder: PNG figures and one self-contained ``report.html``.

:func:`build_report` reads what the studies wrote (``run.json``, the CSVs, the image
arrays) -- not Python objects -- so a report can be rebuilt later from the folder alone
(``medfusion experiment report <folder>``). It draws the figures of whichever studies
are present into ``figures/`` and writes ``report.html``: every figure embedded as a
base64 PNG (the page needs no other file and no network), the summary tables as HTML,
the configuration of every study, the seeds, library versions and the machine.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..metrics import METRICS
from ._common import PRIMARY, SECONDARY, TIME_COLUMN
from ._html import Page, format_value, html_table
from ._run import RUN_RECORD, Row, RunFolder, read_csv

REPORT_NAME = "report.html"
#: Grid images shown at most (each is a figure of its own).
MAX_GRIDS = 3


def _load_tables(folder: Path) -> dict[str, list[Row]]:
    return {path.stem: read_csv(path) for path in sorted(folder.glob("*.csv"))}


# ---------------------------------------------------------------------- sections


def _compare_section(page: Page, tables: dict[str, list[Row]], folder: Path) -> None:
    from . import _figures as fig

    summary = tables["compare_summary"]
    page.heading("Comparison of methods")
    page.text("Mean ± sample standard deviation over the groups of each modality pair; (rank) among the methods, "
              "1 = best by the mean in the metric's direction, ties share the average rank; MEAN is descriptive "
              "and unranked. Best rank in bold. All rows: compare_rows.csv.")
    quantities = list(dict.fromkeys(r["quantity"] for r in summary))
    cells = {(r["pair"], r["method"], r["quantity"]): r for r in summary}
    for pair in dict.fromkeys(r["pair"] for r in summary):
        rows, bold = [], set()
        for method in dict.fromkeys(r["method"] for r in summary):
            row: Row = {"method": method}
            for q in quantities:
                cell = cells.get((pair, method, q))
                if cell is None:
                    continue
                rank = f" ({format_value(cell['rank'], 3)})" if cell["rank"] is not None else ""
                row[q] = f"{format_value(cell['mean'])} ± {format_value(cell['std'], 2)}{rank}"
                if cell["rank"] == 1.0:
                    bold.add((len(rows), q))
            rows.append(row)
        page.heading(f"{pair} ({_count(tables['compare_rows'], pair)} groups)", 3)
        page.raw(html_table(rows, ["method", *quantities], bold))
    if "compare_mean_rank" in tables:
        page.heading("Mean rank over the ranked metrics (time excluded)", 3)
        page.raw(html_table(tables["compare_mean_rank"]))
    families = {"fused": "the fused image alone", "sources": "fused image against the sources",
                "target": "fused image against the target"}
    for family, words in families.items():
        keys = [q for q in quantities if q in METRICS and METRICS[q].family == family]
        if keys:
            page.figure(fig.comparison_bars(summary, keys, f"Comparison: metrics of {words}"),
                        f"compare_{family}", f"Comparison of methods: metrics of {words} (mean ± std per pair).")
    if TIME_COLUMN in quantities:
        page.figure(fig.comparison_bars(summary, [TIME_COLUMN], "Fusion time"), "compare_time",
                    "Fusion wall time per group (mean ± std per pair).")
    _grid_section(page, folder)


def _count(rows: Sequence[Row], pair: str) -> int:
    return len({r["group"] for r in rows if r["pair"] == pair})


def _grid_section(page: Page, folder: Path) -> None:
    from . import _figures as fig

    path = folder / "compare_images.npz"
    if not path.is_file():
        return
    with np.load(path, allow_pickle=False) as data:
        names, methods = list(data["cases"]), list(data["methods"])
        for j, name in enumerate(names[:MAX_GRIDS]):
            sources = [data[k] for k in sorted((k for k in data.files if k.startswith(f"case{j}_source")),
                                               key=lambda k: int(k.rsplit("source", 1)[1]))]
            target = data[f"case{j}_target"] if f"case{j}_target" in data.files else None
            fused = [data[f"case{j}_method{m}"] for m in range(len(methods))]
            page.figure(fig.image_grid(str(name), sources, target, fused, [str(m) for m in methods]),
                        f"grid_{j}", f"{name}: sources, target, fused image of every method and |fused − target|.")


def _repeat_section(page: Page, tables: dict[str, list[Row]], record: dict[str, Any]) -> None:
    from . import _figures as fig

    determinism, summary = tables["repeat_determinism"], tables.get("repeat_summary", [])
    page.heading("Repeatability")
    rows = []
    for method in dict.fromkeys(r["method"] for r in determinism):
        mine = [r for r in determinism if r["method"] == method]
        spreads = [r["std"] for r in summary if r["method"] == method and r["quantity"] != TIME_COLUMN
                   and r["std"] is not None and not math.isnan(r["std"])]
        times = [r for r in summary if r["method"] == method and r["quantity"] == TIME_COLUMN]
        rows.append({"method": method, "groups": len(mine), "repeats": mine[0]["repeats"],
                     "bit-identical in all groups": all(r["bit_identical"] for r in mine),
                     "max |difference| between repeats": max(r["max_abs_difference"] for r in mine),
                     "largest metric std": max(spreads) if spreads else None,
                     "mean time (s)": float(np.mean([t["mean"] for t in times])) if times else None,
                     "mean time std (s)": float(np.nanmean([t["std"] for t in times if t["std"] is not None]))
                     if times else None})
    page.text("Each fusion repeated; bit-identical = every repeat produced the same float32 bytes. "
              "Per-group spreads: repeat_summary.csv; every repeat: repeat_runs.csv.")
    page.raw(html_table(rows))
    if "repeat_runs" in tables:
        page.figure(fig.time_boxes(tables["repeat_runs"]), "repeat_time", "Fusion time of every repeat, per method.")
    if "repeat_training_determinism" in tables:
        from ._report_tables import training_section

        training_section(page, tables, record)


def _block_size_section(page: Page, tables: dict[str, list[Row]]) -> None:
    from . import _figures as fig

    summary = [r for r in tables["block_size_summary"] if r["pair"] == "all"]
    page.heading("Block size n = 2^i")
    page.text("Fusion in block mode: overlapping n x n blocks (stride n/2), overlap-averaged; mean ± std over all "
              "groups. Per pair: block_size_summary.csv.")
    quantities = list(dict.fromkeys(r["quantity"] for r in summary))
    cells = {(r["method"], r["i"], r["quantity"]): r for r in summary}
    rows = []
    for method in dict.fromkeys(r["method"] for r in summary):
        for i in sorted({r["i"] for r in summary if r["method"] == method}):
            row: Row = {"method": method, "i": i, "n": 2**i}
            for q in quantities:
                cell = cells.get((method, i, q), {})
                row[q] = f"{format_value(cell.get('mean'))} ± {format_value(cell.get('std'), 2)}"
            rows.append(row)
    page.raw(html_table(rows))
    ticks = {i: f"{i}\n(n={2**i})" for i in sorted({r["i"] for r in summary})}
    page.figure(fig.metric_curves(summary, "i", quantities, "i (block size n = 2^i pixels)",
                                  "Metrics against block size", x_ticks=ticks),
                "block_size", "Metrics and fusion time against the block-size exponent i (mean ± std over groups).")


def _perturbation_section(page: Page, tables: dict[str, list[Row]], record: dict[str, Any]) -> None:
    from . import _figures as fig

    summary = [r for r in tables["perturbation_summary"] if r["pair"] == "all"]
    config = record.get("studies", {}).get("perturbation", {})
    primary, secondary = config.get("primary", PRIMARY), config.get("secondary", SECONDARY)
    page.heading("Perturbation")
    page.text("Inputs disturbed, then fused. 'primary' / 'secondary' are the papers' two disturbances mapped to "
              f"documented levels: primary = {primary}, secondary = {secondary} (Gaussian: sigma as a fraction "
              "of the [0, 1] range; salt-and-pepper: fraction of pixels). '_vs_undisturbed' compares with the same "
              "method's fusion of the clean inputs; the other metrics use the clean sources.")
    present = list(dict.fromkeys(r["quantity"] for r in summary))
    wanted = [q for q in ("PSNR_vs_undisturbed", "SSIM_vs_undisturbed", "RMSE_vs_undisturbed", "QABF", "SSIM_S",
                          "VIF", "EN", "PSNR") if q in present] or present[:8]
    cells = {(c["method"], c["kind"], c["level"], c["quantity"]): c for c in summary}
    rows = []
    for method, kind, level, label in dict.fromkeys((r["method"], r["kind"], r["level"], r["disturbance"])
                                                    for r in summary):
        row: Row = {"method": method, "kind": kind, "level": level, "disturbance": label}
        for q in wanted:
            cell = cells.get((method, kind, level, q), {})
            row[q] = f"{format_value(cell.get('mean'))} ± {format_value(cell.get('std'), 2)}"
        rows.append(row)
    page.raw(html_table(rows))
    axis_labels = {"gaussian": ("Gaussian noise sigma (% of the [0, 1] intensity range)", 100.0),
                   "salt_and_pepper": ("salt-and-pepper noise (% of pixels replaced)", 100.0),
                   "speckle": ("speckle noise sigma (% multiplicative)", 100.0)}
    for kind in dict.fromkeys(r["kind"] for r in summary):
        label, scale = axis_labels.get(kind, (f"{kind} level", 1.0))
        marks = {k: v for k, v in (("primary", primary.get(kind)), ("secondary", secondary.get(kind))) if v is not None}
        page.figure(fig.metric_curves([r for r in summary if r["kind"] == kind], "level", wanted, label,
                                      f"Metrics against {kind.replace('_', '-')} disturbance", marks=marks,
                                      x_scale=scale),
                    f"perturbation_{kind}", f"Metrics against the {kind.replace('_', '-')} level (mean ± std "
                                            "over groups and draws); dashed: primary / secondary.")


def _convergence_section(page: Page, tables: dict[str, list[Row]]) -> None:
    from . import _figures as fig

    summary = tables["convergence_summary"][0]
    page.heading("Convergence")
    page.text("Loss against iteration from the recorded training history. Flattening iteration: the first "
              f"iteration after which the moving average ({summary['window']} iterations) stays within "
              f"{100 * summary['tolerance']:g} % of its final value.")
    page.raw(html_table([summary]))
    page.figure(fig.convergence_figure(tables["convergence_curve"], tables.get("convergence_validation", []), summary),
                "convergence", "Training loss (raw, moving average) and validation loss against iteration.")


# ---------------------------------------------------------------------- page

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1250px;
color:#222;line-height:1.4;padding:0 1em}
h1{border-bottom:2px solid #345}h2{margin-top:2em;border-bottom:1px solid #aaa}
table{border-collapse:collapse;font-size:12px;margin:.6em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#eef2f6}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:12px;color:#555}pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:12px}
table.paired td{line-height:1.25}table.paired span.paper{color:#777;font-size:11px}
table.paired tr.printed td{background:#f7f7f2}
table.notes td,table.notes th{white-space:normal;text-align:left;max-width:760px}
.note{background:#f4f7fb;border-left:4px solid #9ab;padding:.2em .9em;margin:.6em 0;font-size:13px}
"""


def _seeds(record: dict[str, Any]) -> list[Row]:
    rows = []
    for study, config in record.get("studies", {}).items():
        data = config.get("data", {}) if isinstance(config, dict) else {}
        seeds = data.get("phantom_seeds") or []
        rows.append({"study": study, "seed": config.get("seed"), "data_seed": config.get("data_seed"),
                     "phantom seeds": f"{min(seeds)}..{max(seeds)} ({len(seeds)})" if seeds else "–"})
    return rows


def build_report(folder: str | os.PathLike) -> Path:
    """Draw the figures and write ``report.html`` for a run folder (rebuilding them if present).

    :param folder: a run folder (holding ``run.json``).
    :returns: the path of ``report.html``.
    """
    path = Path(folder)
    if not (path / RUN_RECORD).is_file():
        raise InputError(f"{path}: not a MedFusion run folder (no {RUN_RECORD})")
    run = RunFolder(path)
    record = run.record()
    tables = _load_tables(path)
    page = Page(run)
    if "compare_summary" in tables:
        _compare_section(page, tables, path)
    if "tables_summary" in tables:
        from ._report_tables import paper_tables_section

        paper_tables_section(page, tables, record)
    if "repeat_determinism" in tables:
        _repeat_section(page, tables, record)
    if "block_size_summary" in tables:
        _block_size_section(page, tables)
    if "perturbation_summary" in tables:
        _perturbation_section(page, tables, record)
    if "convergence_summary" in tables:
        _convergence_section(page, tables)
    environment = record.get("environment", {})
    libraries = environment.get("libraries", {})
    machine = [{"item": k, "value": v} for k, v in environment.items() if k != "libraries"]
    studies = record.get("studies", {}).values()
    devices = sorted({c["device"] for c in studies if isinstance(c, dict) and c.get("device")})
    machine.append({"item": "fusion device", "value": ", ".join(devices) or "–"})
    csv_links = "".join(f'<li><a href="{html.escape(name)}.csv">{html.escape(name)}.csv</a></li>' for name in tables)
    document = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>MedFusion experiment report: {html.escape(path.name)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>MedFusion experiment report</h1><p>Run <code>{html.escape(path.name)}</code>, created "
        f"{html.escape(str(record.get('created', '')))}; studies: {html.escape(', '.join(record.get('studies', {})))}. "
        "Metrics on the 0–255 scale (see the README's metric table).</p>"
        + "".join(page.parts)
        + "<h2>Seeds</h2>" + html_table(_seeds(record))
        + "<h2>Machine</h2>" + html_table(machine)
        + "<h2>Library versions</h2>" + html_table([{"library": k, "version": v} for k, v in libraries.items()])
        + "<h2>Configuration</h2><pre id=\"config\">"
        + html.escape(json.dumps(record.get("studies", {}), indent=2)) + "</pre>"
        + f"<h2>Data files</h2><ul>{csv_links}</ul></body></html>\n"
    )
    return run.write_text(REPORT_NAME, document)
