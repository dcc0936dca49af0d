"""Batch fusion of many groups, safe for long unattended runs.

A *group* (:class:`Group`) is one case: K >= 2 registered input images or
volumes, an optional target (reference) image for the metrics, and optional
modalities. Data sets of groups come from a CSV manifest
(:func:`groups_from_manifest`) or a folder convention (:func:`groups_from_folder`);
:func:`run_batch` fuses them all.

Manifest (CSV, UTF-8, optional BOM), one header line then one row per group::

    name,input_1,input_2[,input_3,...][,target][,modality_1,...,modality_K]

- ``name`` (required): the case name, used in output file names, so it must
  match ``[A-Za-z0-9][A-Za-z0-9._-]*`` (no separators, spaces or leading dot);
  names must be unique, ignoring case (case-insensitive file systems).
- ``input_1`` .. ``input_K`` (required, numbered from 1 without gaps, K >= 2):
  every row must fill the same number K of input cells.
- ``target`` (optional column; an empty cell means no target).
- ``modality_1`` .. ``modality_K`` (optional columns; an empty cell means
  automatic standardisation): ``CT``, ``MRI``/``MR``, ``PET``/``PT``, ``SPECT``/``NM``.
- Column order is free; header names ignore case and surrounding spaces; any
  other column is refused (it is most likely a typo). Cells are stripped of
  surrounding spaces.

Safe path resolution: a relative path is taken relative to the folder holding
the manifest (not the working directory); absolute paths are allowed, and so is
``..``, but the resolved path (symbolic links followed) must exist and be a
regular file. Paths are used literally: no ``~``, environment-variable or glob
expansion, and they are only ever opened as files, never passed to a shell.

Folder convention (:func:`groups_from_folder`)::

    folder/<case>/input_1.<ext>, input_2.<ext>, ... [, target.<ext>]

one subfolder per case (its name is the case name, rule as above), cases
sorted by name, ``<ext>`` any image extension :func:`~MedFusionLib.io.read_image`
reads (:data:`IMAGE_EXTENSIONS`; ``.nii.gz`` counts as one extension; file
names match ignoring case). Hidden subfolders (``.name``) are ignored;
subfolders without any ``input_<n>`` file are skipped with a warning in the
returned :class:`GroupList`; two files for one role (``input_1.png`` and
``input_1.nii.gz``), gaps in the numbering, fewer than 2 inputs, or cases with
different K are refused.

Outputs of :func:`run_batch` (in ``output_dir``): ``<name>_fused<ext>`` per
group, ``<name>_fused_colour<ext>`` too when an input was pseudo-colour, and
``batch_report.csv``. Every file is written atomically (temporary file, then
rename), so a killed run leaves no partial output, only possibly a hidden
``.*.tmp`` folder from the instant of the kill.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, NoReturn, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .fusion import (
    _UNSET,
    FusionCancelled,
    Method,
    _chosen_method,
    fuse_prepared,
    load_method,
    prepare_inputs,
    to_unit_range,
    unit_to_uint8,
)
from .io import LoadedImage, PathLike, atomic_output, read_image, remove_stale_temporaries, write_image
from .metrics import METRICS, evaluate, evaluate_volume, table_to_csv
from .preprocessing import MODALITIES, split_luminance
from .progress import CancelFlag, ProgressCallback

if TYPE_CHECKING:
    from .engine.training import TripletDataset

__all__ = [
    "Group",
    "GroupList",
    "BatchRow",
    "BatchReport",
    "BatchCancelled",
    "groups_from_manifest",
    "groups_from_folder",
    "run_batch",
    "IMAGE_EXTENSIONS",
    "OUTPUT_FORMATS",
    "REPORT_NAME",
    "REPORT_COLUMNS",
]

#: File extensions :func:`groups_from_folder` recognises (those read_image reads as one file).
IMAGE_EXTENSIONS = (
    ".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp",
    ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm",
)
#: Accepted ``output_format`` values of :func:`run_batch`.
OUTPUT_FORMATS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".nii", ".nii.gz", ".nrrd", ".mha")
#: Name of the report file written into the output folder.
REPORT_NAME = "batch_report.csv"
#: The report's fixed columns; metric columns (registry order) follow.
REPORT_COLUMNS = ("name", "status", "seconds", "output", "error")

_DEFAULT_2D_FORMAT = ".png"
_DEFAULT_3D_FORMAT = ".nii.gz"
# Formats that store 8-bit integers only: the [0, 1] result is written as round(x * 255).
_UINT8_FORMATS = {".png", ".jpg", ".jpeg", ".bmp"}
_TWO_D_FORMATS = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"}
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_INPUT_COLUMN = re.compile(r"input_([1-9][0-9]*)")
_MODALITY_COLUMN = re.compile(r"modality_([1-9][0-9]*)")
# fuse() / fuse_volume() keyword arguments run_batch passes on; each gets only those it takes.
_FUSE_2D_KEYS = {"block_size", "stride", "device", "modalities"}
_FUSE_3D_KEYS = {"axis", "batch_size", "block_size", "device", "modalities"}
# Pre-processing run_batch applies before fusing, as fuse_files does (fusion.prepare_inputs).
_PREPARE_KEYS = {"register", "denoise"}

DONE, SKIPPED, FAILED = "done", "skipped", "failed"
# Least time between two rewrites of the report during a batch (it is always written at the end).
_REPORT_INTERVAL_S = 10.0


# --------------------------------------------------------------------------- groups


def _check_name(name: str, where: str) -> str:
    """Refuse names that could escape the output folder or make awkward file names."""
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise InputError(
            f"{where}: case name {name!r} is not usable in a file name; use letters, digits, "
            "'.', '_' and '-' only, starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Group:
    """One case of a batch: K >= 2 registered inputs, optional target and modalities.

    :param name: case name, used for the output file names (see the module docstring for the rule).
    :param inputs: the K >= 2 input files (or DICOM series folders), fused in this order;
        the first one gives the geometry of a 3D output.
    :param target: optional target (reference) image for the target metrics.
    :param modalities: optional modality per input (``None`` entries: automatic).
    """

    name: str
    inputs: tuple[Path, ...]
    target: Path | None = None
    modalities: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        _check_name(self.name, "group")
        if isinstance(self.inputs, (str, bytes, os.PathLike)):
            raise InputError(f"group {self.name!r}: inputs must be a list of paths, not one path")
        inputs = tuple(Path(p) for p in self.inputs)
        if len(inputs) < 2:
            raise InputError(f"group {self.name!r}: at least 2 inputs are needed, got {len(inputs)}")
        # frozen: assign the normalised values through object.__setattr__
        object.__setattr__(self, "inputs", inputs)
        if self.target is not None:
            object.__setattr__(self, "target", Path(self.target))
        if self.modalities is not None:
            modalities = tuple(self.modalities)
            if len(modalities) != len(inputs):
                raise InputError(
                    f"group {self.name!r}: {len(modalities)} modalities given for {len(inputs)} inputs"
                )
            object.__setattr__(self, "modalities", modalities)


class GroupList(list[Group]):
    """A list of :class:`Group` with the warnings gathered while finding them.

    :ivar warnings: one line per skipped or suspicious entry (empty when all was clean).
    """

    def __init__(self, groups: Iterable[Group] = (), warnings: Iterable[str] = ()) -> None:
        super().__init__(groups)
        self.warnings: list[str] = list(warnings)


def _resolve_manifest_path(cell: str, base: Path, where: str, column: str) -> Path:
    """Resolve one manifest path cell against ``base``; it must name an existing file or folder (a DICOM series)."""
    # Path() takes the text literally: no ~, $VAR or glob expansion ever happens.
    candidate = Path(cell)
    if not candidate.is_absolute():
        candidate = base / candidate
    resolved = candidate.resolve(strict=False)
    if not resolved.exists():
        raise InputError(f"{where}: {column} {cell!r} -> {resolved}: no such file")
    if not (resolved.is_file() or resolved.is_dir()):
        raise InputError(f"{where}: {column} {cell!r} -> {resolved}: not a regular file or a folder")
    return resolved


def _parse_header(fields: Sequence[str] | None, manifest: str) -> tuple[list[str], int, set[int]]:
    """Normalised header names, the number of input columns and the modality column numbers."""
    if not fields:
        raise InputError(f"{manifest}: the manifest is empty (expected a header line)")
    header = [(f or "").strip().lower() for f in fields]
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise InputError(f"{manifest}: column {column!r} appears twice in the header")
        seen.add(column)
    if "name" not in seen:
        raise InputError(f"{manifest}: the header has no 'name' column (expected name,input_1,input_2,...)")
    inputs: set[int] = set()
    modalities: set[int] = set()
    for column in header:
        if column in ("name", "target"):
            continue
        if (match := _INPUT_COLUMN.fullmatch(column)) is not None:
            inputs.add(int(match.group(1)))
        elif (match := _MODALITY_COLUMN.fullmatch(column)) is not None:
            modalities.add(int(match.group(1)))
        else:
            raise InputError(
                f"{manifest}: unknown column {column!r}; expected name, input_1, input_2, ..., "
                "target, modality_1, ..."
            )
    count = len(inputs)
    if count < 2:
        raise InputError(f"{manifest}: at least 2 input columns are needed (input_1,input_2), got {count}")
    if inputs != set(range(1, count + 1)):
        missing = sorted(set(range(1, max(inputs) + 1)) - inputs)
        raise InputError(f"{manifest}: input columns must be numbered 1..K without gaps; missing input_{missing[0]}")
    extra = sorted(m for m in modalities if m > count)
    if extra:
        raise InputError(f"{manifest}: column modality_{extra[0]} has no matching input_{extra[0]}")
    return header, count, modalities


def _canonical_modality(value: str, where: str, column: str) -> str:
    key = value.strip().upper()
    if key not in MODALITIES:
        raise InputError(f"{where}: {column} {value!r} is not one of {', '.join(MODALITIES)}")
    return MODALITIES[key]


def groups_from_manifest(csv_path: PathLike) -> GroupList:
    """Read the groups of a CSV manifest (format and path rules: see the module docstring).

    :param csv_path: the manifest file; relative paths inside it are resolved against its folder.
    :returns: the groups in file order (a :class:`GroupList`, ``warnings`` empty).
    :raises InputError: missing or malformed manifest, unknown or duplicate column,
        duplicate case name, missing input/target file, fewer than 2 inputs or a
        different number of inputs than the first row, bad modality (naming the line).
    """
    manifest = os.fspath(csv_path)
    if not os.path.isfile(manifest):
        raise InputError(
            f"{manifest}: no such manifest file" if not os.path.exists(manifest) else f"{manifest}: not a file"
        )
    base = Path(manifest).resolve().parent
    groups = GroupList()
    names: dict[str, int] = {}
    first_count: tuple[int, int] | None = None  # (K, line) of the first row
    try:
        # utf-8-sig: spreadsheet programs often prepend a byte-order mark.
        with open(manifest, "r", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header, columns, modality_columns = _parse_header(next(reader, None), manifest)
            for cells in reader:
                line = reader.line_num
                if not any(c.strip() for c in cells):
                    continue  # blank line
                if len(cells) > len(header):
                    raise InputError(f"{manifest}, line {line}: {len(cells)} cells but the header has {len(header)}")
                row = {column: (cells[i].strip() if i < len(cells) else "") for i, column in enumerate(header)}
                name = row["name"]
                where = f"{manifest}, line {line} (case {name!r})" if name else f"{manifest}, line {line}"
                if not name:
                    raise InputError(f"{where}: the name cell is empty")
                _check_name(name, where)
                if name.lower() in names:
                    raise InputError(f"{where}: duplicate case name (first used on line {names[name.lower()]})")
                names[name.lower()] = line
                cells_in = [row[f"input_{i}"] for i in range(1, columns + 1)]
                count = sum(1 for c in cells_in if c)
                if any(not c for c in cells_in[:count]):
                    gap = next(i for i, c in enumerate(cells_in, start=1) if not c)
                    raise InputError(f"{where}: input_{gap} is empty but a later input column is filled")
                if count < 2:
                    raise InputError(f"{where}: at least 2 inputs are needed, got {count}")
                if first_count is None:
                    first_count = (count, line)
                elif count != first_count[0]:
                    raise InputError(
                        f"{where}: {count} inputs, but line {first_count[1]} has {first_count[0]}; "
                        "every group of a batch must have the same number of inputs"
                    )
                inputs = tuple(
                    _resolve_manifest_path(cell, base, where, f"input_{i}")
                    for i, cell in enumerate(cells_in[:count], start=1)
                )
                target_cell = row.get("target", "")
                target = _resolve_manifest_path(target_cell, base, where, "target") if target_cell else None
                modalities: tuple[str | None, ...] | None = None
                if modality_columns:
                    values = []
                    for i in range(1, count + 1):
                        cell = row.get(f"modality_{i}", "")
                        values.append(_canonical_modality(cell, where, f"modality_{i}") if cell else None)
                    for i in range(count + 1, columns + 1):
                        if row.get(f"modality_{i}", ""):
                            raise InputError(f"{where}: modality_{i} is given but input_{i} is empty")
                    modalities = tuple(values) if any(v is not None for v in values) else None
                groups.append(Group(name, inputs, target, modalities))
    except UnicodeDecodeError as exc:
        raise InputError(f"{manifest}: not a UTF-8 text file ({exc.reason})") from None
    except csv.Error as exc:
        raise InputError(f"{manifest}: malformed CSV ({exc})") from None
    except OSError as exc:
        raise InputError(f"{manifest}: cannot read the manifest ({exc.strerror})") from None
    if not groups:
        raise InputError(f"{manifest}: the manifest lists no groups")
    return groups


def _image_extension(filename: str) -> str:
    """Lower-case extension, ``.nii.gz`` kept whole."""
    lower = filename.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(lower)[1]


def _role_of(filename: str) -> str | None:
    """``"input_<n>"`` or ``"target"`` for a recognised image file name, else ``None``."""
    extension = _image_extension(filename)
    if extension not in IMAGE_EXTENSIONS:
        return None
    stem = filename[: len(filename) - len(extension)].lower()
    if stem == "target" or _INPUT_COLUMN.fullmatch(stem):
        return stem
    return None


def _scan_case(folder: Path) -> dict[str, Path]:
    """Map each role found in one case folder to its file; refuse a role given twice."""
    roles: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        role = _role_of(entry.name)
        if role is None or not entry.is_file():
            continue
        if role in roles:
            raise InputError(
                f"{folder}: ambiguous {role}: both {roles[role].name} and {entry.name}; keep one"
            )
        roles[role] = entry
    return roles


def groups_from_folder(folder: PathLike) -> GroupList:
    """Find the groups of a folder laid out as ``<folder>/<case>/input_1.*, input_2.*, [target.*]``.

    :param folder: the data set folder (one subfolder per case; see the module docstring).
    :returns: the groups sorted by case name; ``warnings`` lists the subfolders skipped
        because they hold no ``input_<n>`` file.
    :raises InputError: missing folder, no groups found, a case folder given instead of
        its parent, ambiguous role, gap in the input numbering, fewer than 2 inputs,
        cases with different numbers of inputs, unusable or duplicate case name.
    """
    root = Path(os.fspath(folder))
    if not root.is_dir():
        raise InputError(f"{root}: no such folder" if not root.exists() else f"{root}: not a folder")
    if any(_role_of(p.name) and p.is_file() for p in root.iterdir()):
        raise InputError(
            f"{root}: holds input_<n>/target files itself; pass the folder that holds one subfolder per case"
        )
    groups = GroupList()
    names: dict[str, str] = {}
    first: tuple[int, str] | None = None
    for case in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name):
        if case.name.startswith("."):
            continue  # hidden: version control, temporary folders of atomic writes
        roles = _scan_case(case)
        numbers = sorted(int(r.split("_")[1]) for r in roles if r != "target")
        if not numbers:
            groups.warnings.append(f"{case}: skipped, no input_<n> image file ({', '.join(IMAGE_EXTENSIONS)})")
            continue
        where = f"{case}"
        _check_name(case.name, where)
        if case.name.lower() in names:
            raise InputError(f"{where}: duplicate case name (differs from {names[case.name.lower()]!r} only in case)")
        names[case.name.lower()] = case.name
        if numbers != list(range(1, len(numbers) + 1)):
            gap = next(i for i in range(1, numbers[-1] + 1) if i not in numbers)
            raise InputError(f"{where}: input_{gap} is missing (inputs must be numbered 1..K)")
        if len(numbers) < 2:
            raise InputError(f"{where}: at least 2 inputs are needed, got {len(numbers)}")
        if first is None:
            first = (len(numbers), case.name)
        elif len(numbers) != first[0]:
            raise InputError(
                f"{where}: {len(numbers)} inputs, but case {first[1]!r} has {first[0]}; "
                "every group of a batch must have the same number of inputs"
            )
        inputs = tuple(roles[f"input_{n}"].resolve() for n in numbers)
        target = roles["target"].resolve() if "target" in roles else None
        groups.append(Group(case.name, inputs, target))
    if not groups:
        detail = f" ({len(groups.warnings)} subfolders without inputs)" if groups.warnings else ""
        raise InputError(f"{root}: no case subfolders with input_1.*, input_2.* files found{detail}")
    return groups


# --------------------------------------------------------------------------- report


@dataclass
class BatchRow:
    """The outcome of one group.

    :param name: the case name.
    :param status: ``"done"``, ``"skipped"`` (output already there) or ``"failed"``.
    :param seconds: fusion time (the :class:`~MedFusionLib.fusion.FusionResult`'s, after reading and
        pre-processing); for a skipped
        group the value recorded by the run that produced the output, if known.
    :param output: the fused file (``None`` when nothing was written).
    :param error: one-line error for a failed group, or a metrics problem; ``""`` otherwise.
    :param metrics: metric key -> value (2D groups with ``metrics=True``).
    """

    name: str
    status: str
    seconds: float | None = None
    output: Path | None = None
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self, metric_columns: Sequence[str] = ()) -> dict[str, object]:
        """The report row: fixed columns, then ``metric_columns`` (missing values: empty cells)."""
        row: dict[str, object] = {
            "name": self.name,
            "status": self.status,
            "seconds": "" if self.seconds is None else float(self.seconds),
            "output": "" if self.output is None else str(self.output),
            "error": self.error,
        }
        for key in metric_columns:
            value = self.metrics.get(key)
            row[key] = "" if value is None else float(value)
        return row


#: The metrics whose means :meth:`BatchReport.summary` prints (the headline six of the quality study).
SUMMARY_METRICS = ("QABF", "MI", "VIF", "SSIM_S", "QW", "SF")


@dataclass
class BatchReport:
    """Everything :func:`run_batch` did, also written as ``batch_report.csv``.

    :param rows: one :class:`BatchRow` per group handled, in input order.
    :param path: the report file written.
    :param cancelled: whether the batch was cancelled before the last group.
    """

    rows: list[BatchRow] = field(default_factory=list)
    path: Path | None = None
    cancelled: bool = False

    def _count(self, status: str) -> int:
        return sum(1 for row in self.rows if row.status == status)

    @property
    def done(self) -> int:
        """Number of groups fused in this run."""
        return self._count(DONE)

    @property
    def skipped(self) -> int:
        """Number of groups whose output already existed."""
        return self._count(SKIPPED)

    @property
    def failed(self) -> int:
        """Number of groups that failed (nothing written for them)."""
        return self._count(FAILED)

    @property
    def metric_columns(self) -> list[str]:
        """Metric keys present in any row, in registry order."""
        present = {key for row in self.rows for key in row.metrics}
        return [key for key in METRICS if key in present]

    def table(self) -> list[dict[str, object]]:
        """The report as rows of identical keys (``name,status,seconds,output,error`` + metrics)."""
        columns = self.metric_columns
        return [row.as_dict(columns) for row in self.rows]

    def summary(self) -> str:
        """A few lines for a console: counts, fusion time, the headline metrics' means, failures, the CSV."""
        fused = [row.seconds for row in self.rows if row.status == DONE and row.seconds is not None]
        lines = [f"{len(self.rows)} case(s): {self.done} fused, {self.skipped} skipped (output already there), "
                 f"{self.failed} failed" + (" -- cancelled before the end" if self.cancelled else "")
                 + (f"; fusion time {sum(fused):.1f} s" if fused else "")]
        means = []
        for key in SUMMARY_METRICS:
            values = [row.metrics[key] for row in self.rows
                      if key in row.metrics and row.metrics[key] is not None and math.isfinite(row.metrics[key])]
            if values:
                means.append(f"{METRICS[key].label} {float(np.mean(values)):.4g}")
        if means:
            scored = sum(1 for row in self.rows if row.metrics)
            lines.append(f"mean over {scored} scored case(s): " + ", ".join(means))
        failures = [row for row in self.rows if row.status == FAILED]
        for row in failures[:5]:
            lines.append(f"failed: {row.name}: {row.error}")
        if len(failures) > 5:
            lines.append(f"... and {len(failures) - 5} more failed (see the report)")
        if self.path is not None:
            lines.append(f"report: {self.path}")
        return "\n".join(lines)


class BatchCancelled(FusionCancelled):
    """The batch was cancelled; ``report`` holds the groups finished before (already written)."""

    def __init__(self, message: str, report: BatchReport) -> None:
        super().__init__(message)
        self.report = report


def _write_report(report: BatchReport, path: Path) -> None:
    """Write the report CSV atomically, replacing the previous one.

    No protected paths are passed: run_batch has already checked, once, that the
    report path is none of the inputs (checking every input on every write would
    cost O(groups) file-system calls each time).
    """
    rows = report.table()
    text = table_to_csv(rows) if rows else ",".join(REPORT_COLUMNS) + "\n"
    with atomic_output(path, overwrite=True) as temporary:
        temporary.write_text(text, encoding="utf-8")
    report.path = path


def _previous_rows(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an earlier report in the same folder, by name; empty if absent or unreadable.

    Only used to carry the seconds and metrics of groups a resumed run skips, so
    any problem with the old file just means those values are recomputed or left empty.
    """
    try:
        with open(path, "r", encoding="utf-8", newline="") as handle:
            return {row["name"]: row for row in csv.DictReader(handle) if row.get("name")}
    except (OSError, csv.Error, UnicodeDecodeError, KeyError):
        return {}


def _float_or_none(text: object) -> float | None:
    try:
        value = float(str(text))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- batch helpers


def _one_line(exc: BaseException) -> str:
    """A one-line message: InputError text as is, other errors prefixed by their type."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if isinstance(exc, InputError):
        return text or "invalid input"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _normalise_format(output_format: str | None) -> str | None:
    if output_format is None:
        return None
    if not isinstance(output_format, str):
        raise InputError(f"output_format: expected a file extension such as '.png', got {output_format!r}")
    extension = output_format.strip().lower()
    if not extension.startswith("."):
        extension = "." + extension
    if extension not in OUTPUT_FORMATS:
        raise InputError(f"output_format: {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    return extension


def _dimension_of(path: Path) -> int:
    """Spatial dimension of an input from its header (2 or 3), without reading the pixels.

    Mirrors read_image: a one-slice colour volume counts as a 2D colour image.
    Whatever the header read cannot settle falls back to a full read, which
    also gives the proper error message for a bad file.
    """
    if path.is_file():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
            dimension = reader.GetDimension()
            size = reader.GetSize()
            components = reader.GetNumberOfComponents()
        except RuntimeError:
            dimension = 0
        if dimension == 2:
            return 2
        if dimension == 3:
            return 2 if components > 1 and size[2] == 1 else 3
    return read_image(path).dimension


def _identity(path: str) -> tuple[str, tuple[int, int] | None]:
    """Resolved path and (device, inode) of a path, to spot the same file under two names."""
    try:
        stat = os.stat(path)
        inode: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
    except OSError:
        inode = None
    return os.path.realpath(path), inode


def _fused_paths(output_dir: Path, name: str, extension: str) -> tuple[Path, Path]:
    """The main output and the colour output of a group."""
    colour_extension = extension if extension in _TWO_D_FORMATS else ".png"
    return output_dir / f"{name}_fused{extension}", output_dir / f"{name}_fused_colour{colour_extension}"


def _check_no_output_is_an_input(
    groups: Sequence[Group], output_dir: Path, extensions: Sequence[str]
) -> None:
    """Refuse the whole batch up front if any possible output or the report is an input file.

    io.write_image protects each group's own inputs; this also covers every other
    group's inputs (and hard links), which would otherwise be silently skipped or replaced.
    """
    inputs: dict[object, str] = {}
    for group in groups:
        for path in (*group.inputs, *((group.target,) if group.target else ())):
            resolved, inode = _identity(os.fspath(path))
            inputs[resolved] = os.fspath(path)
            if inode is not None:
                inputs[inode] = os.fspath(path)
    candidates = [output_dir / REPORT_NAME]
    for group in groups:
        for extension in extensions:
            candidates.extend(_fused_paths(output_dir, group.name, extension))
    for candidate in candidates:
        resolved, inode = _identity(os.fspath(candidate))
        clash = inputs.get(resolved) or (inputs.get(inode) if inode is not None else None)
        if clash is not None:
            raise InputError(
                f"output {candidate}: is the input {clash}; choose another output folder "
                "(an output may never replace an input)"
            )


def _prepare_output_dir(output_dir: PathLike) -> Path:
    folder = Path(os.path.abspath(os.fspath(output_dir)))
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: the output folder is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{folder}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{folder}: the output folder is not writable")
    return folder


def _check_fuse_kwargs(fuse_kwargs: Mapping[str, object]) -> None:
    unknown = sorted(set(fuse_kwargs) - _FUSE_2D_KEYS - _FUSE_3D_KEYS - _PREPARE_KEYS)
    if unknown:
        raise InputError(
            f"run_batch: unknown fusion option(s) {unknown}; allowed: "
            f"{sorted(_FUSE_2D_KEYS | _FUSE_3D_KEYS | _PREPARE_KEYS)}"
        )


def _kwargs_for(keys: set[str], fuse_kwargs: Mapping[str, object], group: Group) -> dict[str, object]:
    kwargs = {k: v for k, v in fuse_kwargs.items() if k in keys}
    if group.modalities is not None:
        kwargs["modalities"] = group.modalities  # the group's own modalities win
    return kwargs


def _as_unit_luminance(image: LoadedImage, modality: str | None, name: str) -> np.ndarray:
    """The image as fusion sees it: colour -> luminance in [0, 1], grey -> standardised to [0, 1]."""
    if image.is_color:
        luminance, _ = split_luminance(image)
        return np.asarray(luminance, dtype=np.float32)
    return to_unit_range(image.array, modality, name)


def _group_metrics(
    written: np.ndarray, inputs: Sequence[LoadedImage], target: LoadedImage | None, group: Group, axis: int = 0
) -> dict[str, float]:
    """Metrics of the fused image as written, against the standardised inputs (and target).

    A volume is scored slice by slice along the axis it was fused along, and its value is the
    mean over the slices that hold signal (:func:`~MedFusionLib.metrics.evaluate_volume`, the
    function the Slicer module's per-slice table uses too).

    All images are put on [0, 1] first (the written uint8 divided by 255, the inputs
    standardised exactly as fusion standardises them), because the metrics map the
    intensities of one call *jointly*: mixing a [0, 1] fused image with 16-bit or HU
    sources would squash one of them. Scoring the written (quantised) image rather
    than the float result makes a resumed run's metrics equal an uninterrupted run's.
    """
    modalities = group.modalities or (None,) * len(inputs)
    if np.asarray(written).ndim == 3:
        return evaluate_volume(
            written, [image.array for image in inputs],
            target.array if target is not None else None, axis=axis, modalities=list(modalities),
        ).metrics
    fused = to_unit_range(written, None, "fused image")
    sources = [_as_unit_luminance(image, modalities[i], f"input {i + 1}") for i, image in enumerate(inputs)]
    reference = _as_unit_luminance(target, None, "target") if target is not None else None
    return evaluate(fused, sources, reference)


def _write_2d(
    image: np.ndarray, path: Path, reference: LoadedImage, is_color: bool, overwrite: bool, protected: Sequence[str]
) -> np.ndarray:
    """Write a [0, 1] result on the reference's 2D grid; return the array as stored."""
    if path.suffix.lower() in _UINT8_FORMATS:
        stored = unit_to_uint8(image)
    else:
        stored = np.asarray(image, dtype=np.float32)
    loaded = LoadedImage(stored, reference.spacing, reference.origin, reference.direction, str(path), is_color)
    write_image(loaded, path, overwrite=overwrite, protected_paths=protected)
    return stored


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


# --------------------------------------------------------------------------- run_batch


def run_batch(
    groups: Iterable[Group],
    output_dir: PathLike,
    method: Method = "default",
    *,
    output_format: str | None = None,
    overwrite: bool = False,
    metrics: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    model: Method = _UNSET,
    **fuse_kwargs: object,
) -> BatchReport:
    """Fuse every group into ``output_dir``, resumably; write and return the report.

    Per group: the inputs are read and go the way of ``medfusion fuse``
    (:func:`~MedFusionLib.fusion.prepare_inputs`, then :func:`~MedFusionLib.fusion.fuse_prepared`):
    2D groups are fused by :func:`~MedFusionLib.fusion.fuse`,
    3D groups by :func:`~MedFusionLib.fusion.fuse_volume` (output on the first input's grid:
    origin, spacing, direction). The result goes to ``<name>_fused<ext>``, plus
    ``<name>_fused_colour<ext>`` for a pseudo-colour 2D group, each written atomically.
    PNG/JPEG/BMP hold ``uint8 = round(255 * fused)``; other formats ``float32`` in [0, 1].
    2D files carry the first input's spacing/origin where the format can.

    Resuming: a group whose ``<name>_fused<ext>`` already exists is ``"skipped"``
    (unless ``overwrite``), so re-running a killed batch finishes the rest and gives
    the same files as one uninterrupted run. The main output is written last and
    marks a group complete; a colour file left by an incomplete group is replaced.
    A skipped group keeps the seconds and metrics of the previous report's row
    (same output path); without one, its metrics are computed from the existing file.

    Failures: a group that fails (unreadable file, shape or geometry mismatch,
    fusion error) is recorded as ``"failed"`` with a one-line error, nothing is
    written for it, and the batch goes on. Problems of the batch as a whole (bad
    model, output folder, an output that would be an input) raise at once.

    Metrics (``metrics=True``): :func:`~MedFusionLib.metrics.evaluate` of the fused image *as
    written*, scaled to [0, 1], against the inputs standardised to [0, 1] as fusion does (colour
    inputs: luminance) and the standardised target if any; all images are on [0, 1] because the
    metrics map intensities jointly. A volume is scored slice by slice along the fusion axis
    (:func:`~MedFusionLib.metrics.evaluate_volume`): the mean over the slices that hold signal.
    A metrics failure leaves the group ``"done"`` with the problem in ``error``.

    Report: ``batch_report.csv`` (columns :data:`REPORT_COLUMNS`, then the metric keys in
    registry order; empty cells where a value does not apply) is written atomically at the
    end, on cancellation or interruption, and every 10 s or so during the run.

    :param groups: the groups (e.g. from :func:`groups_from_manifest` / :func:`groups_from_folder`).
    :param output_dir: output folder, created if missing.
    :param method: ``"default"``, a model file, a FusionModel, or a baseline name (``"laplacian"``...).
    :param model: the old name of ``method`` (deprecated; one release).
    :param output_format: output extension (:data:`OUTPUT_FORMATS`); default ``".png"`` for 2D
        groups and ``".nii.gz"`` for 3D groups (chosen per group from the first input's header).
    :param overwrite: re-fuse and replace existing outputs instead of skipping those groups.
    :param metrics: compute the fusion-quality metrics of every group into the report.
    :param progress: ``progress(fraction of the whole batch, message)``.
    :param cancel: ``cancel.is_set()`` is checked before each group, inside volume fusion
        and before writing; when set, the report of the groups finished so far is written,
        no partial output is left, and :class:`BatchCancelled` (a ``FusionCancelled``) is raised.
    :param scheduler: run the groups as tasks of the Dask cluster at this address (``tcp://host:8786``)
        instead of in this process; inputs and outputs must be on a file system its workers share.
        Same outputs, report, resuming, failures and cancel (see :mod:`MedFusionLib.cluster`).
    :param workers: run the groups on a local Dask cluster of this many worker processes.
    :param fuse_kwargs: passed on to ``fuse`` (``block_size``, ``stride``, ``device``,
        ``modalities``) and ``fuse_volume`` (``axis``, ``batch_size``, ``block_size``,
        ``device``, ``modalities``); each gets the ones it takes. A group's own modalities win.
        ``register`` (``"rigid"``/``"affine"``) and ``denoise`` (a denoising method) pre-process
        each group first, with the step :func:`~MedFusionLib.fusion.fuse_files` runs
        (:func:`~MedFusionLib.preprocessing.align_to_first`); None (the default) is off.
    :returns: the :class:`BatchReport` (also in ``output_dir/batch_report.csv``).
    :raises InputError: unusable model, output folder or option; duplicate group names;
        an output path that is an input.
    :raises BatchCancelled: when cancelled.
    """
    group_list = list(groups)
    for group in group_list:
        if not isinstance(group, Group):
            raise InputError(f"groups: expected Group objects, got {type(group).__name__}")
    seen: set[str] = set()
    for group in group_list:
        if group.name.lower() in seen:
            raise InputError(f"groups: duplicate case name {group.name!r} (outputs would collide)")
        seen.add(group.name.lower())
    extension = _normalise_format(output_format)
    _check_fuse_kwargs(fuse_kwargs)
    # Resolve the method once: a missing model must stop the batch, not fail every group.
    method = load_method(_chosen_method(method, model, "run_batch"))
    folder = _prepare_output_dir(output_dir)
    candidates = [extension] if extension else [_DEFAULT_2D_FORMAT, _DEFAULT_3D_FORMAT]
    _check_no_output_is_an_input(group_list, folder, candidates)
    # A batch killed mid-write leaves hidden temporary folders; the restart clears its own.
    output_paths = [path for group in group_list for candidate in candidates
                    for path in _fused_paths(folder, group.name, candidate)]
    for path in output_paths:
        remove_stale_temporaries(path)
    remove_stale_temporaries(folder / REPORT_NAME)
    report_path = folder / REPORT_NAME
    previous = _previous_rows(report_path)
    if scheduler is not None or workers is not None:
        return _run_on_dask(group_list, folder, method, extension, overwrite, metrics, previous, fuse_kwargs,
                            report_path, output_paths, scheduler, workers, progress, cancel)
    report = BatchReport()
    total = max(len(group_list), 1)
    last_write = time.monotonic()

    def cancelled() -> bool:
        return cancel is not None and cancel.is_set()

    try:
        for index, group in enumerate(group_list):
            if cancelled():
                _stop(report, report_path)
            if progress is not None:
                progress(index / total, f"group {index + 1}/{len(group_list)}: {group.name}")

            def inner(fraction: float, message: str, _index: int = index, _name: str = group.name) -> None:
                if progress is not None:
                    progress((_index + fraction) / total, f"{_name}: {message}")

            try:
                row = _run_group(
                    group, folder, method, extension, overwrite, metrics, previous.get(group.name),
                    inner, cancel, fuse_kwargs,
                )
            except FusionCancelled:
                _stop(report, report_path)
            report.rows.append(row)
            # Rewrite the report regularly so a killed run still leaves most of what it
            # finished; not after every group, which would cost O(groups^2) writes.
            if time.monotonic() - last_write >= _REPORT_INTERVAL_S:
                _write_report(report, report_path)
                last_write = time.monotonic()
            if progress is not None:
                progress((index + 1) / total, f"{group.name}: {row.status}")
    except BatchCancelled:
        raise
    except BaseException:
        # Interrupted otherwise (Ctrl-C, a failing progress callback...): keep the
        # report of what was finished, then let the interruption through.
        with contextlib.suppress(Exception):
            _write_report(report, report_path)
        raise
    _write_report(report, report_path)
    return report


def _run_on_dask(group_list: list[Group], folder: Path, method: object, extension: str | None, overwrite: bool,
                 metrics: bool, previous: Mapping[str, Mapping[str, str]], fuse_kwargs: Mapping[str, object],
                 report_path: Path, output_paths: Sequence[Path], scheduler: str | None, workers: int | None,
                 progress: ProgressCallback | None, cancel: CancelFlag | None) -> BatchReport:
    """The groups as tasks of a Dask cluster (:mod:`MedFusionLib.cluster`); rows and report as in-process."""
    from .cluster import DaskRunCancelled, run_tasks

    rows: dict[int, BatchRow] = {}
    last_write = time.monotonic()

    def report() -> BatchReport:  # one row per finished case, in the groups' order
        return BatchReport([rows[index] for index in sorted(rows)])

    def on_result(index: int, row: BatchRow | None, error: BaseException | None) -> None:
        nonlocal last_write
        group = group_list[index]
        rows[index] = row if error is None else BatchRow(group.name, FAILED, None, None, f"worker: {_one_line(error)}")
        if progress is not None:
            progress(len(rows) / max(len(group_list), 1), f"{group.name}: {rows[index].status}")
        if time.monotonic() - last_write >= _REPORT_INTERVAL_S:
            _write_report(report(), report_path)
            last_write = time.monotonic()

    arguments = [(group, folder, extension, overwrite, metrics, previous.get(group.name), dict(fuse_kwargs))
                 for group in group_list]
    try:
        run_tasks(_case_task, arguments, on_result, shared=method, scheduler=scheduler, workers=workers,
                  cancel=cancel)
    except DaskRunCancelled:
        _stop(report(), report_path)
    except BaseException:
        with contextlib.suppress(Exception):
            _write_report(report(), report_path)
        raise
    final = report()
    _write_report(final, report_path)
    for path in output_paths:  # a worker killed mid-write left a hidden temporary; its retry wrote the output
        remove_stale_temporaries(path)
    return final


def _case_task(method: object, group: Group, folder: Path, extension: str | None, overwrite: bool, metrics: bool,
               previous: Mapping[str, str] | None, fuse_kwargs: Mapping[str, object]) -> BatchRow:
    """One case on a Dask worker: the in-process code, no progress or cancel (the client handles those)."""
    return _run_group(group, folder, method, extension, overwrite, metrics, previous,
                      lambda fraction, message: None, None, fuse_kwargs)


def _stop(report: BatchReport, report_path: Path) -> NoReturn:
    """Write the report so far, then raise BatchCancelled."""
    report.cancelled = True
    _write_report(report, report_path)
    raise BatchCancelled(
        f"batch cancelled after {len(report.rows)} group(s); report written to {report_path}", report
    )


def _run_group(
    group: Group,
    folder: Path,
    method: object,
    extension: str | None,
    overwrite: bool,
    want_metrics: bool,
    previous: Mapping[str, str] | None,
    progress: ProgressCallback,
    cancel: CancelFlag | None,
    fuse_kwargs: Mapping[str, object],
) -> BatchRow:
    """Fuse one group; every failure but cancellation becomes a ``"failed"`` row."""
    protected = [os.fspath(p) for p in (*group.inputs, *((group.target,) if group.target else ()))]
    written: list[Path] = []  # files this call wrote, removed again if the group fails
    try:
        dimension = _dimension_of(group.inputs[0])
        ext = extension or (_DEFAULT_2D_FORMAT if dimension == 2 else _DEFAULT_3D_FORMAT)
        output, colour_output = _fused_paths(folder, group.name, ext)
        if output.exists() and not overwrite:
            return _skipped_row(group, output, want_metrics, previous, fuse_kwargs.get("axis", 0))
        read = [read_image(p) for p in group.inputs]
        for i, image in enumerate(read[1:], start=2):
            if image.dimension != read[0].dimension:
                raise InputError(
                    f"{group.inputs[i - 1]}: {image.dimension}D, but input 1 is {read[0].dimension}D"
                )
        # Read the target before fusing, so a bad target fails the group with nothing written.
        target = read_image(group.target) if (want_metrics and group.target) else None
        # The path of medfusion fuse (fuse_files); the metrics score against the aligned inputs.
        inputs = prepare_inputs(read, register=fuse_kwargs.get("register"), denoise=fuse_kwargs.get("denoise"),
                                cancel=cancel)
        keys = _FUSE_2D_KEYS if inputs[0].dimension == 2 else _FUSE_3D_KEYS
        result = fuse_prepared(inputs, method, progress=progress, cancel=cancel, **_kwargs_for(keys, fuse_kwargs, group))
        seconds = result.seconds
        if inputs[0].dimension == 2:
            if result.colour is not None:
                # Written first: the main output marks the group complete, so it comes last.
                _write_2d(result.colour, colour_output, inputs[0], True, True, protected)
                written.append(colour_output)
            stored = _write_2d(result.image, output, inputs[0], False, overwrite, protected)
            written.append(output)
        else:
            write_image(result.image, output, reference=inputs[0], overwrite=overwrite, protected_paths=protected)
            written.append(output)
            stored = result.array  # float32, stored as is
    except FusionCancelled:
        for path in written:
            _remove_quietly(path)
        raise
    except Exception as exc:  # noqa: BLE001 -- one bad group must not stop a long unattended batch
        for path in written:
            _remove_quietly(path)
        return BatchRow(group.name, FAILED, None, None, _one_line(exc))
    row = BatchRow(group.name, DONE, seconds, output)
    if want_metrics:
        try:
            row.metrics = _group_metrics(stored, inputs, target, group, fuse_kwargs.get("axis", 0))
        except Exception as exc:  # noqa: BLE001 -- the output is fine; only its scores are missing
            row.error = f"metrics: {_one_line(exc)}"
    return row


def _skipped_row(
    group: Group, output: Path, want_metrics: bool, previous: Mapping[str, str] | None, axis: int
) -> BatchRow:
    """Row of a group whose output exists: earlier seconds/metrics carried over, else recomputed."""
    row = BatchRow(group.name, SKIPPED, None, output)
    usable = previous is not None and previous.get("status") in (DONE, SKIPPED) and previous.get("output") == str(output)
    if usable:
        row.seconds = _float_or_none(previous.get("seconds"))
    if not want_metrics:
        return row
    if usable:
        carried = {k: _float_or_none(previous.get(k)) for k in METRICS if previous.get(k, "") != ""}
        if carried and all(v is not None for v in carried.values()):
            row.metrics = {k: float(v) for k, v in carried.items() if v is not None}
            return row
    try:
        inputs = [read_image(p) for p in group.inputs]
        target = read_image(group.target) if group.target else None
        row.metrics = _group_metrics(read_image(output).array, inputs, target, group, axis)
    except Exception as exc:  # noqa: BLE001 -- the output exists; only its scores are missing
        row.error = f"metrics: {_one_line(exc)}"
    return row


def load_training_triplets(source: PathLike, axis: int = 0) -> "TripletDataset":
    """Training triplets (K inputs + target) from a manifest CSV or a folder of case folders.

    The same conventions as :func:`groups_from_manifest` / :func:`groups_from_folder`;
    every group needs a target. Images are standardised like :func:`~MedFusionLib.fusion.fuse`
    does (modality columns honoured). 2D groups give one triplet each; 3D groups give
    one triplet per slice along ``axis`` whose target is not constant.

    :param source: manifest CSV or folder.
    :param axis: slicing axis for volumes.
    """
    from .engine.training import Triplet, TripletDataset, slice_triplets
    from .fusion import to_unit_range

    path = Path(source)
    groups = groups_from_folder(path) if path.is_dir() else groups_from_manifest(path)
    triplets = []
    for group in groups:
        if group.target is None:
            raise InputError(f"{group.name}: training needs a target image for every group")
        modalities = group.modalities or (None,) * len(group.inputs)
        images = [read_image(p) for p in (*group.inputs, group.target)]
        if any(image.is_color for image in images):
            images = [
                LoadedImage.from_array(split_luminance(image)[0]) if image.is_color else image for image in images
            ]
        shapes = {image.array.shape for image in images}
        if len(shapes) != 1:
            raise InputError(f"{group.name}: inputs and target differ in shape {sorted(shapes)}")
        arrays = [
            to_unit_range(image.array, modality, f"{group.name} input {i + 1}")
            for i, (image, modality) in enumerate(zip(images[:-1], modalities))
        ]
        target = to_unit_range(images[-1].array, None, f"{group.name} target")
        if target.ndim == 2:
            triplets.append(Triplet(arrays, target, group.name))
            continue
        triplets.extend(slice_triplets(arrays, target, axis, group.name))
    return TripletDataset(triplets)
