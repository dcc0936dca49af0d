"""Robustness report: run the whole catalogue of bad inputs and faults and print the totals.

Every case of ``Testing/robustness/catalogue.py`` goes through every entry point it applies
to (Python API, ``medfusion`` CLI, batch, Slicer logic on an MRML scene when ``slicer-core``
is installed). Printed: cases and runs tried, clear errors, clean successes and cancels,
crashes, inputs modified, partial outputs left, and runs that did not do what the catalogue
expects. The bar: 0 crashes, 0 inputs modified, 0 partial outputs.

Run: ``python benchmarks/robustness_report.py [--verbose] [--only ID ...] [--markdown docs/robustness.md]``
(``--markdown`` also rewrites the catalogue table of the docs from the same list).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))

from robustness.catalogue import CASES  # noqa: E402
from robustness.runners import ENTRY_POINTS, Outcome, run_case, slicer_available  # noqa: E402

_DOC_HEADER = """# Robustness catalogue

Bad inputs and faults MedFusion is tested against, generated from
[`Testing/robustness/catalogue.py`](../Testing/robustness/catalogue.py) by
`python benchmarks/robustness_report.py --markdown docs/robustness.md`. Every row runs in
`.ci/run` (`Testing/robustness/test_catalogue.py`) through each entry point named in it:

- **api**: `MedFusionLib.fusion.fuse_files` (files) or `fuse` (arrays);
- **cli**: `medfusion fuse ...` (exit code, one `medfusion: error:` line, no traceback);
- **batch**: a manifest through `MedFusionLib.batch.run_batch` (a failing group is recorded
  with its one-line error; problems of the whole batch raise);
- **slicer**: `MedFusionLogicCore.fuse` on a real MRML scene (`slicer-core`), the files loaded
  as volume nodes the way Slicer's readers would give them.

For every run, whatever the outcome: the inputs are byte-identical afterwards (SHA-256 of every
input file and array, voxels and geometry of every input node), nothing partial is left (no
output file, no temporary, no new scene node after an error or a cancel), and an error is one
line that matches the pattern given (the input and the problem). "works" means a valid,
finite result was written.

| case | category | what is wrong | expected, per entry point |
|---|---|---|---|
"""


def markdown_table() -> str:
    rows = []
    for case in CASES:
        groups: dict[str, list[str]] = {}
        for entry, expect in case.entries.items():
            groups.setdefault(expect.describe(), []).append(entry)
        expected = "; ".join(f"{', '.join(entries)}: {what}" for what, entries in groups.items())
        rows.append(f"| `{case.id}` | {case.category} | {case.title} | {expected.replace('|', '&#124;')} |")
    return _DOC_HEADER + "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only cases whose id contains one of these")
    parser.add_argument("--verbose", action="store_true", help="one line per run")
    parser.add_argument("--markdown", type=Path, help="also write the catalogue table (docs/robustness.md)")
    args = parser.parse_args()
    if args.markdown:
        args.markdown.write_text(markdown_table())
        print(f"wrote {args.markdown}")

    entries = [e for e in ENTRY_POINTS if e != "slicer" or slicer_available()]
    selected = [c for c in CASES if (not args.only or any(o in c.id for o in args.only))]
    for case in selected:
        if case.unavailable():
            print(f"skipped {case.id}: {case.unavailable()}")
    selected = [c for c in selected if not c.unavailable()]
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    for case in selected:
        for entry in case.entries:
            if entry not in entries:
                continue
            with tempfile.TemporaryDirectory(prefix="medfusion-robustness-") as work:
                outcome = run_case(case, entry, Path(work))
            outcomes.append(outcome)
            if args.verbose or not outcome.as_expected:
                print(("   " if outcome.as_expected else "!! ") + outcome.explain()[:300])
    seconds = time.perf_counter() - start

    status = Counter(o.status for o in outcomes)
    crashes = status["crash"]
    modified = sum(bool(o.inputs_modified) for o in outcomes)
    partial = sum(bool(o.partial_outputs) for o in outcomes)
    unexpected = sum(not o.as_expected for o in outcomes)
    per_entry = Counter(o.entry for o in outcomes)
    print(f"machine: {platform.machine()}, python {platform.python_version()}; "
          f"entry points: {', '.join(f'{e} ({per_entry[e]} runs)' for e in entries)}"
          + ("" if "slicer" in entries else "; slicer skipped: slicer-core not installed"))
    print(f"cases tried:            {len(selected)} cases, {len(outcomes)} runs in {seconds:.1f} s")
    print(f"clear errors:           {sum(o.clear_error for o in outcomes)} "
          f"(of {status['error']} errors; the rest did not match the expected message)")
    print(f"worked / cancelled:     {status['ok']} / {status['cancelled']}")
    print(f"crashes:                {crashes}   (bar: 0)")
    print(f"inputs modified:        {modified}   (bar: 0)")
    print(f"partial outputs left:   {partial}   (bar: 0)")
    print(f"not as the catalogue expects: {unexpected}")
    ok = crashes == modified == partial == unexpected == 0 and bool(outcomes)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
