"""Report sections of the papers' tables and of repeated training (used by :func:`report.build_report`).

Both read only the run folder (CSVs and ``run.json``), like the rest of the report.
"""

from __future__ import annotations

import html
from typing import Any, Sequence

from ._run import Row
from ._html import Page, format_value, html_table
from .paper_tables import PAPER_SUFFIX

#: Quantities of the repeated-training summary shown in the report (when present).
TRAINING_QUANTITIES: tuple[str, ...] = ("final_loss", "QABF", "SSIM", "RMSE", "PSNR", "MI", "EN", "SSIM_S", "VIF")


def _cell(top: str, below: str, bold: bool = False) -> str:
    """One table cell holding our value (top) and the paper's (below, grey): narrow enough that a
    13-column table fits the page, and the two numbers to compare sit together."""
    top = f"<b>{html.escape(top)}</b>" if bold else html.escape(top)
    return f'<td>{top}<br><span class="paper">{html.escape(below)}</span></td>'


def _pair_table(rows: Sequence[Row], summary: Sequence[Row], columns: Sequence[dict[str, Any]]) -> str:
    """Tests as rows, the paper's columns as columns; each cell: ours over the paper's value of that
    test; then the mean and std rows (ours over our tests, the paper's over its printed tests)."""
    cells = {r["column"]: r for r in summary}
    head = "".join(f"<th>{html.escape(c['label'])}</th>" for c in columns)
    body = []
    for row in rows:
        body.append(f"<tr><td>Test {row['test']}</td>" + "".join(
            _cell(format_value(row.get(c["label"])), format_value(row.get(c["label"] + PAPER_SUFFIX))) for c in columns) + "</tr>")
    for statistic in ("mean", "std"):
        body.append(f"<tr><td><b>{statistic}</b></td>" + "".join(
            _cell(format_value(cells.get(c["label"], {}).get(statistic)),
                  format_value(cells.get(c["label"], {}).get(f"paper_{statistic}")), bold=True) for c in columns) + "</tr>")
    return (f'<table class="paired"><thead><tr><th>test</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _methods_table(summary: Sequence[Row], columns: Sequence[dict[str, Any]]) -> str:
    """Every method's mean (top) ± std (below) over the tests; the last row is the paper's printed values."""
    cells = {(r["method"], r["column"]): r for r in summary}
    methods = list(dict.fromkeys(r["method"] for r in summary))
    head = "".join(f"<th>{html.escape(c['label'])}</th>" for c in columns)
    body = []
    for method in methods:
        counterpart = any(r["counterpart"] for r in summary if r["method"] == method)
        label = html.escape(method) + (" <b>(counterpart)</b>" if counterpart else "")
        body.append(f"<tr><td>{label}</td>" + "".join(
            _cell(format_value(cells.get((method, c["label"]), {}).get("mean")),
                  "± " + format_value(cells.get((method, c["label"]), {}).get("std"), 2)) for c in columns) + "</tr>")
    if methods:
        first = methods[0]
        body.append('<tr class="printed"><td><b>paper (printed)</b></td>' + "".join(
            _cell(format_value(cells.get((first, c["label"]), {}).get("paper_mean")),
                  "± " + format_value(cells.get((first, c["label"]), {}).get("paper_std"), 2), bold=True)
            for c in columns) + "</tr>")
    return (f'<table class="paired"><thead><tr><th>method</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def paper_tables_section(page: Page, tables: dict[str, list[Row]], record: dict[str, Any]) -> None:
    """The papers' Tables 1-3 beside ours, with what differs."""
    config = record.get("studies", {}).get("tables", {})
    summary = tables["tables_summary"]
    page.heading("The papers' tables, reproduced")
    page.text("The columns of the papers' result tables, filled with our numbers on held-out phantoms: in each "
              "cell, our value on the paper's scale on top and the value the paper prints for its own method "
              "below in grey (the paper's test k is a different image from our test k: compare columns and "
              "means, not rows). Files: paper_table1.csv, paper_table2.csv, paper_table3.csv (every method; "
              "'<column> [paper]' holds the printed value), tables_summary.csv, tables_scores.csv (our 0-255 "
              "scale).")
    page.raw('<div class="note"><b>What differs, for every table</b><ul>'
             + "".join(f"<li>{html.escape(d)}</li>" for d in config.get("differences", [])) + "</ul></div>")
    families = config.get("families", {})
    for key, table in config.get("tables", {}).items():
        rows = tables.get(f"paper_{key}", [])
        page.heading(f"Paper {table['paper']}, Table {table['number']}: \u201c{table['title']}\u201d", 3)
        mine = table.get("counterpart")
        stand_in = (f"our {mine} ({families.get(mine, '?')})" if mine else "no learned model of ours (baselines only)")
        warning = ("" if mine and families.get(mine) == table["family"]
                   else f" No {table['family'].upper()} model of ours was in this run, so {stand_in} stands in.")
        page.text(f"{table['reference']}. Transcribed from {table['source']}. The paper's method: "
                  f"{table['method']}; ours beside it: {stand_in}.{warning}")
        if table.get("remarks"):
            page.raw('<div class="note"><b>Noticed in the printed numbers</b><ul>'
                     + "".join(f"<li>{html.escape(r)}</li>" for r in table["remarks"]) + "</ul></div>")
        for block in table["blocks"]:
            for pair in block["pairs"]:
                mine_rows = [r for r in rows if r["pair"] == pair and r["paper_pair"] == block["paper_pair"]]
                if not mine_rows:
                    continue
                page.heading(f"{pair} (the paper's pair: {block['paper_pair']})", 4)
                block_summary = [r for r in summary if r["table"] == key and r["pair"] == pair
                                 and r["paper_pair"] == block["paper_pair"]]
                counterpart_rows = [r for r in mine_rows if r["counterpart"]]
                if counterpart_rows:
                    page.text(f"Test by test: ours ({mine}) on top, the paper's printed value below in grey; "
                              "mean and std: ours over our tests, the paper's over its printed tests.")
                    page.raw(_pair_table(counterpart_rows, [r for r in block_summary if r["counterpart"]],
                                         table["columns"]))
                page.text("Every method: mean over the tests on top, ± sample std below; last row: the paper's "
                          "printed values.")
                page.raw(_methods_table(block_summary, table["columns"]))
        page.raw("<p>Columns: what each is on our side.</p>")
        page.raw(html_table([{"column": c["label"], "our metric": c["metric"],
                              "scale applied to ours": "x 1/255" if abs(c["scale"] - 1 / 255) < 1e-12
                              else ("none" if c["scale"] == 1 else f"x {c['scale']:g}"),
                              "what differs": c["note"] or "–"} for c in table["columns"]]).replace(
                                  "<table>", '<table class="notes">', 1))


def training_section(page: Page, tables: dict[str, list[Row]], record: dict[str, Any]) -> None:
    """Repeated training: determinism per seed mode, spread of the model-level means, a figure."""
    from . import _figures as fig

    config = record.get("studies", {}).get("repeat", {}).get("training", {})
    page.heading("Repeated training", 3)
    seeds = "; ".join(f"{mode}: {', '.join(map(str, values))}" for mode, values in config.get("seeds", {}).items())
    page.text(f"Recipe '{config.get('recipe', '?')}' ({config.get('training_iterations', '?')} iterations, trained on "
              f"{config.get('training_device', '?')}) trained {config.get('runs', '?')} times per seed mode "
              f"(seeds {seeds}); each model fuses every group. 'same': one seed R times (is training "
              "reproducible bit for bit?); 'different': R seeds (the spread training adds). A smoke-sized recipe: "
              "the spread, not the quality, is the point. Files: repeat_training_runs.csv, "
              "repeat_training_summary.csv.")
    page.raw(html_table(tables["repeat_training_determinism"]))
    overall = [r for r in tables.get("repeat_training_summary", []) if r["group"] == "all"]
    present = [q for q in TRAINING_QUANTITIES if any(r["quantity"] == q for r in overall)]
    cells = {(r["mode"], r["quantity"]): r for r in overall}
    rows = []
    for mode in dict.fromkeys(r["mode"] for r in overall):
        row: Row = {"mode": mode}
        for q in present:
            cell = cells[(mode, q)]
            row[q] = f"{format_value(cell['mean'])} ± {format_value(cell['std'], 2)}"
        rows.append(row)
    page.text("Each run's mean over the groups, then mean ± sample std over the runs:")
    page.raw(html_table(rows))
    if "repeat_training_runs" in tables:
        page.figure(fig.training_runs(tables["repeat_training_runs"], [q for q in present if q != "final_loss"][:4]),
                    "repeat_training", "Repeated training: each run's mean over the groups, per seed mode "
                                       "(one dot per trained model).")
