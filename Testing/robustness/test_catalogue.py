"""Every catalogue case through every entry point it applies to: the expected outcome, a clear
one-line error where one is due, inputs byte-identical, no partial output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from robustness.catalogue import CASES
from robustness.runners import ENTRY_POINTS, run_case, slicer_available

RUNS = [pytest.param(case, entry, id=f"{case.id}-{entry}") for case in CASES for entry in case.entries]


@pytest.mark.parametrize("case, entry", RUNS)
def test_case(case, entry, tmp_path):
    if entry == "slicer" and not slicer_available():
        pytest.skip("slicer-core (the MRML scene) is not installed")
    if case.unavailable():
        pytest.skip(case.unavailable())
    outcome = run_case(case, entry, tmp_path)
    assert outcome.as_expected, outcome.explain()


def test_catalogue_is_big_and_covers_every_entry_point():
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"
    for entry in ENTRY_POINTS:
        assert sum(entry in case.entries for case in CASES) >= 10, entry
    assert all(case.entries for case in CASES)


def test_docs_table_lists_every_case():
    """docs/robustness.md is generated from the catalogue; regenerate it when a case is added."""
    table = (Path(__file__).resolve().parents[2] / "docs" / "robustness.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", table, re.MULTILINE))
    assert documented == {case.id for case in CASES}, (
        "regenerate with: python benchmarks/robustness_report.py --markdown docs/robustness.md")
