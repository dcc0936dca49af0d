"""Tests of MedFusionLib.batch: data sets of groups, resumable batch fusion, safety.

Baseline methods (``"laplacian"``, ``"average"``) are used throughout so the tests
do not depend on the trained default model file.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.batch import (
    REPORT_NAME,
    BatchCancelled,
    Group,
    groups_from_folder,
    groups_from_manifest,
    run_batch,
)
from MedFusionLib.errors import InputError
from MedFusionLib.fusion import FusionCancelled, fuse, fuse_volume
from MedFusionLib.io import read_image
from MedFusionLib.metrics import evaluate_volume, metric_names

METHOD = "laplacian"
SPACING_3D = (0.8, 0.9, 2.5)
ORIGIN_3D = (10.0, -20.0, 30.0)


def _oblique_direction() -> tuple[float, ...]:
    """A rotation about a non-axis direction: every cosine differs from the identity."""
    axis = np.array([1.0, 2.0, 3.0]) / np.linalg.norm([1.0, 2.0, 3.0])
    angle = 0.4
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
    return tuple(float(v) for v in rotation.ravel())


DIRECTION_3D = _oblique_direction()


def _png(path: Path, seed: int, shape: tuple[int, ...] = (64, 64)) -> Path:
    """A smooth-ish random uint8 image (grey, or RGB when shape ends with 3)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=len(shape) == 3), str(path))
    return path


def _volume(path: Path, seed: int, shape: tuple[int, int, int] = (16, 32, 32)) -> Path:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(100.0, 30.0, size=shape).astype(np.float32))
    image.SetSpacing(SPACING_3D)
    image.SetOrigin(ORIGIN_3D)
    image.SetDirection(DIRECTION_3D)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _groups_2d(root: Path, count: int, target: bool = False) -> list[Group]:
    groups = []
    for index in range(count):
        name = f"case{index}"
        inputs = (_png(root / name / "a.png", 10 * index), _png(root / name / "b.png", 10 * index + 1))
        tgt = _png(root / name / "t.png", 10 * index + 2) if target else None
        groups.append(Group(name, inputs, tgt))
    return groups


def _groups_3d(root: Path, count: int) -> list[Group]:
    return [
        Group(f"vol{i}", (_volume(root / f"vol{i}_a.nii.gz", 100 + i), _volume(root / f"vol{i}_b.nii.gz", 200 + i)))
        for i in range(count)
    ]


def _read_report(folder: Path) -> list[dict[str, str]]:
    with open(folder / REPORT_NAME, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _hidden_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- manifest


def test_manifest_resolves_relative_absolute_and_dotdot_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    a1, a2, t1 = _png(data / "a1.png", 1), _png(data / "a2.png", 2), _png(data / "t1.png", 3)
    lists = tmp_path / "lists"
    local = _png(lists / "local.png", 4)
    lists.mkdir(exist_ok=True)
    manifest = lists / "m.csv"
    manifest.write_text(
        "name, input_1 ,input_2,target,modality_1,modality_2\n"
        f"alpha,../data/a1.png,{a2},../data/t1.png,mr,\n"
        f"beta, local.png ,{a1},,,PT\n",
        encoding="utf-8",
    )
    # Resolution must use the manifest's folder, not the working directory.
    monkeypatch.chdir(data)
    groups = groups_from_manifest(manifest)
    assert [g.name for g in groups] == ["alpha", "beta"]
    assert groups[0].inputs == (a1.resolve(), a2.resolve())
    assert groups[0].target == t1.resolve()
    assert groups[0].modalities == ("MRI", None)
    assert groups[1].inputs == (local.resolve(), a1.resolve())
    assert groups[1].target is None
    assert groups[1].modalities == (None, "PET")
    assert groups.warnings == []


def _manifest(tmp_path: Path, text: str) -> Path:
    for name in ("a.png", "b.png", "c.png"):
        if not (tmp_path / name).exists():
            _png(tmp_path / name, len(name))
    (tmp_path / "folder.png").mkdir(exist_ok=True)
    if hasattr(os, "mkfifo") and not (tmp_path / "pipe.png").exists():
        os.mkfifo(tmp_path / "pipe.png")
    path = tmp_path / "m.csv"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name,input_1,input_2\nx,a.png,b.png\nX,b.png,c.png\n", r"line 3 \(case 'X'\): duplicate case name"),
        ("name,input_1,input_2\nx,a.png,missing.png\n", r"line 2 \(case 'x'\): input_2 'missing.png' .*no such file"),
        ("name,input_1,input_2\nx,a.png,pipe.png\n", r"line 2 .*not a regular file or a folder"),
        ("name,input_1,input_2\nx,a.png,\n", r"line 2 \(case 'x'\): at least 2 inputs are needed, got 1"),
        ("name,input_1,input_2,input_3\nx,a.png,b.png,c.png\ny,a.png,b.png,\n", r"line 3 \(case 'y'\): 2 inputs, but line 2 has 3"),
        ("name,input_1,input_2,input_3\nx,a.png,,c.png\n", r"line 2 .*input_2 is empty"),
        ("name,input_1\nx,a.png\n", r"at least 2 input columns"),
        ("name,input_1,input_3\nx,a.png,b.png\n", r"missing input_2"),
        ("name,input_1,input_2,imput_3\nx,a.png,b.png,c.png\n", r"unknown column 'imput_3'"),
        ("name,input_1,input_2\n../evil,a.png,b.png\n", r"line 2 .*not usable in a file name"),
        ("name,input_1,input_2,modality_1\nx,a.png,b.png,XRAY\n", r"line 2 .*modality_1 'XRAY'"),
        ("name,input_1,input_2\nx,*.png,b.png\n", r"input_1 '\*.png' .*no such file"),  # no glob expansion
        ("name,input_1,input_2\nx,~/a.png,b.png\n", r"no such file"),  # no ~ expansion
        ("name,input_1,input_2\nx,a.png,b.png,c.png\n", r"line 2: 4 cells but the header has 3"),
        ("name,input_1,input_2\n", r"lists no groups"),
    ],
)
def test_manifest_errors_name_the_row(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        groups_from_manifest(_manifest(tmp_path, text))


def test_manifest_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such manifest"):
        groups_from_manifest(tmp_path / "absent.csv")


# --------------------------------------------------------------------------- folder convention


def test_folder_convention_with_nifti_and_png(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _volume(root / "b_case" / "input_1.nii.gz", 1)
    _volume(root / "b_case" / "input_2.nii.gz", 2)
    _png(root / "a_case" / "input_2.png", 3)
    _png(root / "a_case" / "INPUT_1.PNG", 4)
    _png(root / "a_case" / "target.png", 5)
    (root / "a_case" / "notes.txt").write_text("ignored")
    (root / "empty_case").mkdir()
    (root / "empty_case" / "readme.txt").write_text("no images")
    _png(root / ".hidden" / "input_1.png", 6)
    _png(root / ".hidden" / "input_2.png", 7)
    groups = groups_from_folder(root)
    assert [g.name for g in groups] == ["a_case", "b_case"]  # sorted, hidden ignored, empty skipped
    assert [p.name for p in groups[0].inputs] == ["INPUT_1.PNG", "input_2.png"]
    assert groups[0].target == (root / "a_case" / "target.png").resolve()
    assert [p.name for p in groups[1].inputs] == ["input_1.nii.gz", "input_2.nii.gz"]
    assert groups[1].target is None
    assert len(groups.warnings) == 1 and "empty_case" in groups.warnings[0]


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"c": ["input_1.png", "input_1.nii.gz", "input_2.png"]}, r"ambiguous input_1"),
        ({"c": ["input_1.png", "input_3.png"]}, r"input_2 is missing"),
        ({"c": ["input_1.png"]}, r"at least 2 inputs"),
        ({"c": ["input_1.png", "input_2.png"], "d": ["input_1.png", "input_2.png", "input_3.png"]}, r"3 inputs, but case 'c' has 2"),
        ({"bad name": ["input_1.png", "input_2.png"]}, r"not usable in a file name"),
        ({"c": ["target.png"]}, r"no case subfolders"),
    ],
)
def test_folder_convention_errors(tmp_path: Path, files: dict[str, list[str]], expected: str) -> None:
    for case, names in files.items():
        for index, name in enumerate(names):
            if name.endswith(".nii.gz"):
                _volume(tmp_path / case / name, index)
            else:
                _png(tmp_path / case / name, index)
    with pytest.raises(InputError, match=expected):
        groups_from_folder(tmp_path)


def test_folder_refuses_a_single_case_folder(tmp_path: Path) -> None:
    _png(tmp_path / "input_1.png", 1)
    _png(tmp_path / "input_2.png", 2)
    with pytest.raises(InputError, match="pass the folder that holds one subfolder per case"):
        groups_from_folder(tmp_path)


# --------------------------------------------------------------------------- 2D and 3D batches


def test_2d_batch_outputs_report_and_metrics(tmp_path: Path) -> None:
    groups = _groups_2d(tmp_path / "in", 2, target=True)
    before = {p: _digest(p) for g in groups for p in (*g.inputs, g.target)}
    out = tmp_path / "new" / "out"  # created, parents included
    report = run_batch(groups, out, METHOD)
    assert (report.done, report.skipped, report.failed) == (2, 0, 0)
    for group, row in zip(groups, report.rows):
        assert row.output == out / f"{group.name}_fused.png"
        written = read_image(row.output)
        assert written.array.shape == (64, 64) and written.array.dtype == np.uint8
        expected = fuse([read_image(p) for p in group.inputs], method=METHOD).image
        np.testing.assert_array_equal(written.array, np.rint(expected * 255).astype(np.uint8))
        assert row.seconds is not None and row.seconds > 0
        assert set(row.metrics) == set(metric_names())  # a target enables the target metrics too
        assert all(math.isfinite(v) for v in row.metrics.values())
    rows = _read_report(out)
    assert list(rows[0])[:5] == ["name", "status", "seconds", "output", "error"]
    assert set(metric_names()) <= set(rows[0])
    assert [r["status"] for r in rows] == ["done", "done"]
    assert all(math.isfinite(float(r[k])) for r in rows for k in metric_names())
    assert all(float(r["seconds"]) > 0 for r in rows)
    assert {p: _digest(p) for p in before} == before  # inputs untouched


def test_colour_input_also_writes_rgb_output(tmp_path: Path) -> None:
    group = Group("pet", (_png(tmp_path / "mri.png", 1), _png(tmp_path / "pet.png", 2, (64, 64, 3))))
    report = run_batch([group], tmp_path / "out", METHOD, metrics=False)
    assert report.done == 1
    colour = read_image(tmp_path / "out" / "pet_fused_colour.png")
    assert colour.is_color and colour.array.shape == (64, 64, 3) and colour.array.dtype == np.uint8
    assert read_image(tmp_path / "out" / "pet_fused.png").array.shape == (64, 64)


def test_3d_batch_keeps_first_input_geometry(tmp_path: Path) -> None:
    groups = _groups_3d(tmp_path / "in", 2)
    out = tmp_path / "out"
    report = run_batch(groups, out, METHOD, batch_size=4)
    assert report.done == 2
    for group, row in zip(groups, report.rows):
        assert row.output == out / f"{group.name}_fused.nii.gz"
        fused = read_image(row.output)
        reference = read_image(group.inputs[0])
        assert fused.array.shape == (16, 32, 32)
        assert fused.geometry_matches(reference)
        np.testing.assert_allclose(fused.direction, DIRECTION_3D, atol=1e-5)
        np.testing.assert_allclose(fused.origin, ORIGIN_3D, atol=1e-4)
        np.testing.assert_allclose(fused.spacing, SPACING_3D, atol=1e-5)
        expected = fuse_volume([read_image(p) for p in group.inputs], method=METHOD).image
        np.testing.assert_allclose(fused.array, expected.array, atol=1e-6)
        assert row.seconds is not None and row.seconds > 0
        # volumes are scored slice by slice, as the Slicer module and `medfusion evaluate` do
        scores = evaluate_volume(fused.array, [read_image(p).array for p in group.inputs])
        assert set(row.metrics) == set(metric_names("fused")) | set(metric_names("sources"))
        assert row.metrics == pytest.approx(scores.metrics, rel=1e-6)
    rows = _read_report(out)
    assert [r["status"] for r in rows] == ["done", "done"] and all(r["QABF"] != "" for r in rows)
    # a re-run skips both and carries their metrics over; the summary says so in words
    again = run_batch(groups, out, METHOD, batch_size=4)
    assert again.skipped == 2 and again.rows[0].metrics == pytest.approx(report.rows[0].metrics, rel=1e-5)
    summary = again.summary().splitlines()
    assert summary[0].startswith("2 case(s): 0 fused, 2 skipped") and "Q^AB/F" in summary[1]
    assert summary[-1] == f"report: {again.path}"


def test_failed_groups_do_not_stop_the_batch(tmp_path: Path) -> None:
    good = _groups_2d(tmp_path / "in", 2)
    corrupt = tmp_path / "in" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    bad_read = Group("bad_read", (good[0].inputs[0], corrupt))
    bad_shape = Group("bad_shape", (good[0].inputs[0], _png(tmp_path / "in" / "small.png", 9, (32, 32))))
    out = tmp_path / "out"
    report = run_batch([good[0], bad_read, bad_shape, good[1]], out, METHOD)
    assert [r.status for r in report.rows] == ["done", "failed", "failed", "done"]
    assert (report.done, report.failed) == (2, 2)
    assert "corrupt.png" in report.rows[1].error and "\n" not in report.rows[1].error
    assert "shape" in report.rows[2].error and "\n" not in report.rows[2].error
    assert not (out / "bad_read_fused.png").exists() and not (out / "bad_shape_fused.png").exists()
    assert (out / "case1_fused.png").exists()
    rows = _read_report(out)
    assert [r["status"] for r in rows] == ["done", "failed", "failed", "done"]
    assert rows[1]["output"] == "" and rows[1]["error"]


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("dimension", [2, 3])
def test_resume_gives_byte_identical_outputs(tmp_path: Path, dimension: int) -> None:
    groups = _groups_2d(tmp_path / "in", 4) if dimension == 2 else _groups_3d(tmp_path / "in", 4)
    out = tmp_path / "out"
    first = run_batch(groups, out, METHOD)
    assert first.done == 4
    digests = {row.output: _digest(row.output) for row in first.rows}
    for row in first.rows[1:3]:
        row.output.unlink()
    resumed = run_batch(groups, out, METHOD)
    assert [r.status for r in resumed.rows] == ["skipped", "done", "done", "skipped"]
    assert {row.output: _digest(row.output) for row in resumed.rows} == digests
    if dimension == 2:  # skipped rows carry the metrics of the run that made them
        assert resumed.rows[0].metrics == pytest.approx(first.rows[0].metrics, rel=1e-5)
        assert resumed.rows[1].metrics == pytest.approx(first.rows[1].metrics, rel=1e-9)
    again = run_batch(groups, out, METHOD, overwrite=True)
    assert again.done == 4
    assert {row.output: _digest(row.output) for row in again.rows} == digests


def test_skipped_group_metrics_recomputed_without_previous_report(tmp_path: Path) -> None:
    groups = _groups_2d(tmp_path / "in", 1, target=True)
    out = tmp_path / "out"
    first = run_batch(groups, out, METHOD)
    (out / REPORT_NAME).unlink()
    resumed = run_batch(groups, out, METHOD)
    assert resumed.rows[0].status == "skipped" and resumed.rows[0].seconds is None
    assert resumed.rows[0].metrics == pytest.approx(first.rows[0].metrics, rel=1e-9)


# --------------------------------------------------------------------------- cancel


def test_cancel_inside_volume_fusion_leaves_no_partial_output(tmp_path: Path) -> None:
    groups = _groups_3d(tmp_path / "in", 3)
    out = tmp_path / "out"
    flag = threading.Event()
    messages: list[str] = []

    def progress(fraction: float, message: str) -> None:
        messages.append(message)
        if message.startswith("vol1: fused slices"):
            flag.set()  # after vol1's first batch of slices: cancel inside fuse_volume

    with pytest.raises(FusionCancelled) as caught:
        run_batch(groups, out, METHOD, progress=progress, cancel=flag, batch_size=4)
    assert isinstance(caught.value, BatchCancelled)
    assert "vol1: fused slices 4/16" in messages and "vol1: fused slices 8/16" not in messages
    assert sorted(p.name for p in out.iterdir()) == [REPORT_NAME, "vol0_fused.nii.gz"]
    assert _hidden_entries(out) == []
    rows = _read_report(out)
    assert [(r["name"], r["status"]) for r in rows] == [("vol0", "done")]
    assert caught.value.report.cancelled and caught.value.report.done == 1


def test_cancel_between_2d_groups(tmp_path: Path) -> None:
    groups = _groups_2d(tmp_path / "in", 3)
    out = tmp_path / "out"
    flag = threading.Event()

    def progress(fraction: float, message: str) -> None:
        if message == "case0: done":
            flag.set()

    with pytest.raises(FusionCancelled):
        run_batch(groups, out, METHOD, metrics=False, progress=progress, cancel=flag)
    assert sorted(p.name for p in out.iterdir()) == ["batch_report.csv", "case0_fused.png"]
    assert [r["name"] for r in _read_report(out)] == ["case0"]
    # Resuming after the cancel finishes the rest.
    report = run_batch(groups, out, METHOD, metrics=False)
    assert [r.status for r in report.rows] == ["skipped", "done", "done"]


def test_interrupted_batch_still_writes_its_report(tmp_path: Path) -> None:
    groups = _groups_2d(tmp_path / "in", 3)
    out = tmp_path / "out"

    def progress(fraction: float, message: str) -> None:
        if message == "case1: done":
            raise KeyboardInterrupt  # as Ctrl-C would, between report rewrites

    with pytest.raises(KeyboardInterrupt):
        run_batch(groups, out, METHOD, metrics=False, progress=progress)
    assert [r["name"] for r in _read_report(out)] == ["case0", "case1"]
    assert sorted(p.name for p in out.iterdir()) == [REPORT_NAME, "case0_fused.png", "case1_fused.png"]


# --------------------------------------------------------------------------- safety


def test_output_that_is_an_input_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    victim = _png(out / "case0_fused.png", 1)  # an input sitting where an output would go
    other = _png(tmp_path / "other.png", 2)
    digest = _digest(victim)
    groups = [Group("case0", (victim, other))]
    with pytest.raises(InputError, match="is the input"):
        run_batch(groups, out, METHOD)
    assert _digest(victim) == digest
    assert sorted(p.name for p in out.iterdir()) == ["case0_fused.png"]  # nothing else written


def test_output_of_another_group_that_is_an_input_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    victim = _png(out / "second_fused.png", 1)
    groups = [Group("first", (victim, _png(tmp_path / "x.png", 2))), Group("second", (victim, _png(tmp_path / "y.png", 3)))]
    with pytest.raises(InputError, match="second_fused.png"):
        run_batch(groups, out, METHOD)


def test_unusable_output_folder_and_options(tmp_path: Path) -> None:
    groups = _groups_2d(tmp_path / "in", 1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="output folder"):
        run_batch(groups, blocker, METHOD)
    with pytest.raises(InputError, match="output_format"):
        run_batch(groups, tmp_path / "o1", METHOD, output_format=".exe")
    with pytest.raises(InputError, match="unknown fusion option"):
        run_batch(groups, tmp_path / "o2", METHOD, blocksize=8)
    with pytest.raises(InputError, match="duplicate case name"):
        run_batch(groups * 2, tmp_path / "o3", METHOD)
    with pytest.raises(InputError, match="not_a_method"):
        run_batch(groups, tmp_path / "o4", "not_a_method")
    assert not (tmp_path / "o4").exists()  # a bad model stops the batch before anything is made


def test_unwritable_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    groups = _groups_2d(tmp_path / "in", 1)
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.name == "posix" and os.geteuid() != 0:
        locked.chmod(0o500)
    else:
        # root ignores permission bits: simulate the read-only folder instead.
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    try:
        with pytest.raises(InputError, match="not writable"):
            run_batch(groups, locked, METHOD)
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_manifest_accepts_a_dicom_series_folder(tmp_path: Path) -> None:
    """A folder in a manifest is a DICOM series: accepted when the manifest is read, read as a volume later."""
    (tmp_path / "series").mkdir()
    _png(tmp_path / "b.png", 3)
    manifest = tmp_path / "m.csv"
    manifest.write_text("name,input_1,input_2\nx,series,b.png\n")
    assert groups_from_manifest(manifest)[0].inputs[0] == (tmp_path / "series").resolve()
    report = run_batch(groups_from_manifest(manifest), tmp_path / "out", METHOD)
    assert report.rows[0].status == "failed" and "holds no DICOM series" in report.rows[0].error


def test_cli_batch_ends_with_a_readable_summary(tmp_path: Path, capsys) -> None:
    from MedFusionLib.cli import main

    groups = _groups_2d(tmp_path / "in", 2)
    manifest = tmp_path / "cases.csv"
    manifest.write_text("name,input_1,input_2\n" + "".join(f"{g.name},{g.inputs[0]},{g.inputs[1]}\n" for g in groups))
    assert main(["batch", str(manifest), "-o", str(tmp_path / "out"), "--method", "average", "--denoise", "gaussian",
                 "-q"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("2 case(s): 2 fused, 0 skipped (output already there), 0 failed; fusion time ")
    assert printed[1].startswith("mean over 2 scored case(s): Q^AB/F ") and "BatchReport(" not in "".join(printed)
    assert printed[-1] == f"report: {tmp_path / 'out' / REPORT_NAME}"


def test_batch_registers_and_denoises_as_fuse_files_does(tmp_path: Path) -> None:
    """--register/--denoise in a batch: each group's result equals fuse_files with the same options."""
    from MedFusionLib.fusion import fuse_files

    groups = _groups_3d(tmp_path / "in", 1)
    report = run_batch(groups, tmp_path / "out", METHOD, register="rigid", denoise="gaussian", metrics=False)
    assert report.done == 1, report.rows[0].error
    single = fuse_files(list(groups[0].inputs), tmp_path / "single.nii.gz", method=METHOD, register="rigid",
                        denoise="gaussian")
    np.testing.assert_allclose(read_image(report.rows[0].output).array, read_image(single.path).array, atol=1e-6)
    plain = run_batch(groups, tmp_path / "plain", METHOD, metrics=False)
    assert not np.allclose(read_image(plain.rows[0].output).array, read_image(single.path).array, atol=1e-4)
    with pytest.raises(InputError, match="unknown fusion option"):
        run_batch(groups, tmp_path / "bad", METHOD, regsiter="rigid")
