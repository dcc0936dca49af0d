"""The HTML building blocks of a run's report: value formatting, tables and the page with its figures."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Sequence

import numpy as np

from ._run import Row, RunFolder

#: Sub-folder of a run folder holding the report's figures as PNG files.
FIGURES = "figures"


def format_value(value: Any, digits: int = 4) -> str:
    """A table cell's text: 4 significant digits, '–' for missing or NaN, yes/no, ∞."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.{digits}g}"
    return str(value)


def html_table(rows: Sequence[Row], columns: Sequence[str] | None = None,
               bold: set[tuple[int, str]] | None = None) -> str:
    """Rows as an HTML table (values escaped; ``bold`` marks (row index, column) cells)."""
    if not rows:
        return "<p><em>no rows</em></p>"
    columns = list(columns or rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for c in columns:
            text = html.escape(format_value(row.get(c)))
            cells.append(f"<td><b>{text}</b></td>" if bold and (i, c) in bold else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class Page:
    """Collects sections, figures (saved to ``figures/`` and embedded) and writes the page."""

    def __init__(self, run: RunFolder) -> None:
        self.run = run
        self.parts: list[str] = []
        self.figures: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def raw(self, markup: str) -> None:
        self.parts.append(markup)

    def figure(self, figure: Any, name: str, caption: str) -> None:
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        plt.close(figure)
        data = buffer.getvalue()
        self.run.write_bytes(f"{FIGURES}/{name}.png", data)
        self.figures.append(name)
        encoded = base64.b64encode(data).decode("ascii")
        self.parts.append(f'<figure id="fig-{html.escape(name)}"><img alt="{html.escape(caption)}" '
                          f'src="data:image/png;base64,{encoded}"><figcaption>{html.escape(caption)}'
                          f"</figcaption></figure>")
