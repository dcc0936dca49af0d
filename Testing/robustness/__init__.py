"""The robustness catalogue: bad inputs and faults, run against every entry point they apply to.

- :mod:`robustness.builders`: small files and arrays the cases are made of (written with
  SimpleITK, Pillow and torch directly, not with MedFusionLib, so a reader bug cannot hide
  behind a writer bug).
- :mod:`robustness.catalogue`: the cases, each with its expected behaviour per entry point.
- :mod:`robustness.runners`: how a case is run through the Python API, the ``medfusion`` CLI,
  a batch and the Slicer logic on an MRML scene, and what is checked afterwards (clear error
  or success, inputs byte-identical, no partial output).

``Testing/robustness/test_catalogue.py`` runs every case in pytest; ``benchmarks/robustness_report.py``
runs the same catalogue and prints the totals; ``docs/robustness.md`` is the table of cases.
"""
