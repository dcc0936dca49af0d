"""Run folders: where a study writes, how (atomically), and the record of what was run on what.

A run folder is ``<out>/<study>-YYYYmmdd-HHMMSS`` (or a name the caller gives). It is
created with ``os.mkdir``, never ``exist_ok``, so two runs can never share a folder by
accident: an existing folder is refused unless ``force=True``, and even then only a
folder this module made (it holds ``run.json``) is replaced -- never an arbitrary one.

``run.json`` records, for the report and for reproducing the run: when it was made,
every study's configuration (seeds included), library versions and the machine.
Every file goes through :func:`MedFusionLib.io.atomic_output`, so a killed run never
leaves a half-written CSV, figure or report.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError, MedFusionError
from ..io import atomic_output


#: Name of the record file every run folder holds.
RUN_RECORD = "run.json"
#: Format version of ``run.json``.
RUN_FORMAT = 1

Row = dict[str, Any]


@dataclass
class StudyResult:
    """What a study computed, before or after it was written.

    :param study: the study's name (``"compare"``, ``"repeat"``, ...).
    :param tables: CSV file stem -> tidy rows (every row has the same keys).
    :param config: the study's configuration as plain JSON values (seeds included).
    :param arrays: images kept for the report's image grid (``.npz`` key -> array).
    :param folder: the run folder it was written to (None until written).
    """

    study: str
    tables: dict[str, list[Row]]
    config: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    folder: Path | None = None


class RunFolder:
    """A new folder for one run, and atomic writers into it.

    :param path: an existing run folder (use :meth:`create` to make one).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, out: str | os.PathLike, study: str, *, name: str | None = None, force: bool = False) -> "RunFolder":
        """Make ``<out>/<study>-YYYYmmdd-HHMMSS`` (or ``<out>/<name>``) and its ``run.json``.

        :param out: parent folder (created if missing).
        :param study: study name, the prefix of the folder name.
        :param name: folder name instead of the time-stamped one.
        :param force: replace an existing run folder of that name (one holding ``run.json``).
        :raises InputError: the folder exists and ``force`` is False, or it exists and is not a run folder.
        """
        parent = Path(out)
        parent.mkdir(parents=True, exist_ok=True)
        folder_name = name or f"{study}-{time.strftime('%Y%m%d-%H%M%S')}"
        if not folder_name or os.sep in folder_name or folder_name in (".", ".."):
            raise InputError(f"run name {folder_name!r}: expected a plain folder name")
        path = parent / folder_name
        if path.exists() or path.is_symlink():
            if not force:
                raise InputError(
                    f"{path}: already exists; results are never overwritten silently "
                    "(wait a second for a new time stamp, give another name, or pass force=True / --force)"
                )
            if path.is_symlink() or not path.is_dir() or not (path / RUN_RECORD).is_file():
                # force replaces an earlier run, never a folder this module did not make
                raise InputError(
                    f"{path}: exists and is not a MedFusion run folder (no {RUN_RECORD}); not replacing it"
                )
            shutil.rmtree(path)
        try:
            path.mkdir()  # not exist_ok: a concurrent run that took the name makes this fail
        except FileExistsError:
            raise InputError(f"{path}: was created by another run just now; try again") from None
        run = cls(path)
        run.write_json(RUN_RECORD, {"format": RUN_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                    "studies": {}, "environment": environment()})
        return run

    # ------------------------------------------------------------------ writers

    def write_text(self, name: str, text: str) -> Path:
        """Write a text file atomically (replacing an earlier version of the same run's file)."""
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, overwrite=True) as temporary:
            temporary.write_text(text, encoding="utf-8")
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, overwrite=True) as temporary:
            temporary.write_bytes(data)
        return path

    def write_json(self, name: str, value: Any) -> Path:
        return self.write_text(name, json.dumps(to_json(value), indent=2, allow_nan=True) + "\n")

    def write_csv(self, name: str, rows: Sequence[Mapping[str, Any]]) -> Path:
        return self.write_text(name, rows_to_csv(rows))

    def write_npz(self, name: str, arrays: Mapping[str, np.ndarray]) -> Path:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return self.write_bytes(name, buffer.getvalue())

    # ------------------------------------------------------------------ record

    def record(self) -> dict[str, Any]:
        return json.loads((self.path / RUN_RECORD).read_text(encoding="utf-8"))

    def write_study(self, result: StudyResult) -> StudyResult:
        """Write a study's tables (``<stem>.csv``), images (``<study>_images.npz``) and config into ``run.json``."""
        for stem, rows in result.tables.items():
            self.write_csv(f"{stem}.csv", rows)
        if result.arrays:
            self.write_npz(f"{result.study}_images.npz", result.arrays)
        record = self.record()
        record["studies"][result.study] = result.config
        self.write_json(RUN_RECORD, record)
        result.folder = self.path
        return result


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Tidy rows as CSV text: floats at full precision (``repr``, so values round-trip), None and
    absent cells empty (a group without a target has no target metrics)."""
    buffer = io.StringIO()
    if rows:
        columns = list(dict.fromkeys(key for row in rows for key in row))  # every column, first-seen order
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _cell(row.get(key)) for key in columns})
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


#: Columns that always hold text (a case named "001" must stay "001").
TEXT_COLUMNS = frozenset({"group", "pair", "method", "kind", "disturbance", "quantity", "direction", "output_sha256",
                          "mode", "training_seeds", "weights_sha256", "table", "paper_pair", "column", "metric",
                          "family", "largest_std_metric"})


def read_csv(path: str | os.PathLike) -> list[Row]:
    """Read a CSV written by :func:`rows_to_csv` back: numbers as float/int, ``true``/``false`` as bool,
    :data:`TEXT_COLUMNS` as text, empty cells as None."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [{key: (value if key in TEXT_COLUMNS and value != "" else parse_cell(value))
                 for key, value in row.items()} for row in csv.DictReader(handle)]


def parse_cell(text: str | None) -> Any:
    if text is None or text == "":
        return None
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def to_json(value: Any) -> Any:
    """Plain JSON values from dataclass-free nested containers, tuples, paths and numpy scalars."""
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else str(value)  # JSON has no inf/nan
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, Any]:
    """Library versions and the machine, for the report (what a reader needs to compare numbers)."""
    import torch

    from .. import __version__

    cuda = torch.cuda.is_available()
    return {
        "medfusion": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "libraries": {name: _version(name) for name in
                      ("numpy", "scipy", "scikit-image", "PyWavelets", "SimpleITK", "matplotlib", "numba")},
    }


def resolved_device(device: str | None) -> str:
    """The device a ``device`` argument means on this machine (recorded in the config)."""
    from ..engine.devices import resolve_device

    return str(resolve_device(device))


def no_progress(fraction: float, message: str) -> None:  # noqa: ARG001 - the callback signature
    """The default progress callback: silent."""


def require_matplotlib() -> None:
    """Refuse, with the way forward, to start a study whose report cannot be drawn.

    :raises MedFusionError: matplotlib (the ``experiments`` extra) is not installed.
    """
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise MedFusionError(
            "the report's figures need matplotlib: pip install 'medfusion[experiments]' "
            "(or pass --no-report / report=False for the CSVs only)"
        )
