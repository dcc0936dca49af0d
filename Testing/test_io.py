"""Tests of MedFusionLib.io: reading, writing, atomicity and input protection."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from MedFusionLib.errors import InputError
from MedFusionLib.io import (
    DicomSeries,
    LoadedImage,
    atomic_output,
    cast_array,
    list_dicom_series,
    read_image,
    write_image,
)

RNG = np.random.default_rng(1234)

# Oblique direction: a rotation about a non-axis direction, so every cosine differs from identity.
def _rotation(axis: tuple[float, float, float], angle: float) -> tuple[float, ...]:
    x, y, z = np.asarray(axis) / np.linalg.norm(axis)
    c, s, t = math.cos(angle), math.sin(angle), 1 - math.cos(angle)
    matrix = np.array(
        [
            [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
            [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
            [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
        ]
    )
    return tuple(matrix.ravel())


DIRECTION = _rotation((1.0, 2.0, 3.0), 0.4)
SPACING = (0.7, 1.3, 2.5)
ORIGIN = (-12.5, 40.25, 7.125)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_volume(dtype=np.float32, shape=(5, 6, 7)) -> LoadedImage:
    """Distinct Z, Y, X sizes so an axis swap cannot go unnoticed."""
    data = (RNG.random(shape) * 1000 - 300).astype(dtype)
    return LoadedImage(data, SPACING, ORIGIN, DIRECTION, None, False)


def assert_geometry(image: LoadedImage, spacing, origin, direction, tol=1e-5) -> None:
    np.testing.assert_allclose(image.spacing, spacing, rtol=tol, atol=tol)
    np.testing.assert_allclose(image.origin, origin, rtol=tol, atol=tol)
    np.testing.assert_allclose(image.direction, direction, rtol=tol, atol=tol)


def one_line_error(excinfo, *fragments: str) -> str:
    """The message is one line, names what it should and carries no raw ITK text."""
    message = str(excinfo.value)
    assert "\n" not in message
    assert "sitk::ERROR" not in message and ".cxx" not in message and "0x" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def only_files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# ----------------------------------------------------------------------------- volumes


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_volume_round_trip_keeps_pixels_and_oblique_geometry(tmp_path, extension):
    volume = make_volume()
    target = tmp_path / f"volume{extension}"
    assert write_image(volume, target) == target
    loaded = read_image(target)
    assert loaded.array.shape == (5, 6, 7)
    assert loaded.array.dtype == np.float32
    assert not loaded.is_color
    np.testing.assert_array_equal(loaded.array, volume.array)
    assert_geometry(loaded, SPACING, ORIGIN, DIRECTION)
    assert loaded.geometry_matches(volume)
    assert loaded.path == str(target)
    # Detached headers bring their data file; nothing temporary is left over.
    leftovers = [f for f in only_files(tmp_path) if f.startswith(".")]
    assert leftovers == []


def test_mhd_side_file_is_moved_next_to_the_header(tmp_path):
    write_image(make_volume(), tmp_path / "v.mhd", use_compression=False)
    assert only_files(tmp_path) == ["v.mhd", "v.raw"]
    assert "ElementDataFile = v.raw" in (tmp_path / "v.mhd").read_text()


def test_reading_files_written_by_simpleitk_itself(tmp_path):
    """Independent of write_image: SimpleITK writes, read_image must see the same."""
    volume = make_volume(np.int16)
    reference = volume.to_sitk()
    for extension in (".nii.gz", ".nrrd", ".mha"):
        path = tmp_path / f"direct{extension}"
        sitk.WriteImage(reference, str(path))
        loaded = read_image(path)
        np.testing.assert_array_equal(loaded.array, sitk.GetArrayFromImage(reference))
        assert loaded.array.dtype == np.int16
        assert_geometry(loaded, reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection())


def test_to_sitk_carries_geometry():
    volume = make_volume()
    image = volume.to_sitk()
    assert image.GetSize() == (7, 6, 5)
    assert image.GetSpacing() == pytest.approx(SPACING)
    assert image.GetOrigin() == pytest.approx(ORIGIN)
    assert image.GetDirection() == pytest.approx(DIRECTION)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume.array)


def test_to_sitk_colour_image_is_a_vector_image():
    rgb = LoadedImage.from_array(RNG.integers(0, 255, (4, 5, 3), dtype=np.uint8), is_color=True)
    image = rgb.to_sitk()
    assert image.GetDimension() == 2
    assert image.GetNumberOfComponentsPerPixel() == 3


def test_to_sitk_refuses_geometry_of_the_wrong_dimension():
    broken = LoadedImage(np.zeros((3, 4, 5)), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    with pytest.raises(InputError, match="geometry"):
        broken.to_sitk()


def test_geometry_matches_detects_each_difference():
    volume = make_volume()
    assert volume.geometry_matches(LoadedImage(volume.array.copy(), SPACING, ORIGIN, DIRECTION))
    moved = LoadedImage(volume.array, SPACING, (ORIGIN[0] + 0.5, *ORIGIN[1:]), DIRECTION)
    rescaled = LoadedImage(volume.array, (0.7, 1.3, 2.6), ORIGIN, DIRECTION)
    turned = LoadedImage(volume.array, SPACING, ORIGIN, tuple(np.eye(3).ravel()))
    cropped = LoadedImage(volume.array[:4], SPACING, ORIGIN, DIRECTION)
    for other in (moved, rescaled, turned, cropped):
        assert not volume.geometry_matches(other)
    # Inside the tolerance counts as equal, outside does not.
    nudged = LoadedImage(volume.array, SPACING, (ORIGIN[0] + 1e-7, *ORIGIN[1:]), DIRECTION)
    assert volume.geometry_matches(nudged)
    assert not volume.geometry_matches(nudged, tol=1e-12)


def test_reference_geometry_is_copied_to_an_array(tmp_path):
    reference = make_volume()
    data = RNG.random((5, 6, 7)).astype(np.float32)
    write_image(data, tmp_path / "out.nrrd", reference=reference)
    loaded = read_image(tmp_path / "out.nrrd")
    np.testing.assert_array_equal(loaded.array, data)
    assert_geometry(loaded, SPACING, ORIGIN, DIRECTION)


def test_bare_array_gets_unit_geometry(tmp_path):
    data = RNG.random((3, 4, 5)).astype(np.float64)
    write_image(data, tmp_path / "plain.mha")
    loaded = read_image(tmp_path / "plain.mha")
    assert loaded.array.dtype == np.float64
    assert_geometry(loaded, (1, 1, 1), (0, 0, 0), tuple(np.eye(3).ravel()))


def test_reference_of_another_shape_is_refused(tmp_path):
    with pytest.raises(InputError, match="reference"):
        write_image(np.zeros((5, 6, 8), np.float32), tmp_path / "out.nii.gz", reference=make_volume())
    assert only_files(tmp_path) == []


def test_sitk_image_can_be_written(tmp_path):
    image = make_volume().to_sitk()
    write_image(image, tmp_path / "s.nii.gz")
    loaded = read_image(tmp_path / "s.nii.gz")
    np.testing.assert_array_equal(loaded.array, sitk.GetArrayFromImage(image))
    assert_geometry(loaded, SPACING, ORIGIN, DIRECTION)


def test_bool_and_float16_arrays_are_promoted_losslessly(tmp_path):
    mask = RNG.random((3, 4, 5)) > 0.5
    write_image(mask, tmp_path / "mask.nii.gz")
    loaded = read_image(tmp_path / "mask.nii.gz")
    assert loaded.array.dtype == np.uint8
    np.testing.assert_array_equal(loaded.array, mask.astype(np.uint8))
    half = np.array([[0.5, -2.25], [1e4, 3.0]], dtype=np.float16)
    write_image(half, tmp_path / "half.nrrd")
    np.testing.assert_array_equal(read_image(tmp_path / "half.nrrd").array, half.astype(np.float32))


# ---------------------------------------------------------------------------- 2D images


def test_png_grey_8bit_both_directions(tmp_path):
    grey = RNG.integers(0, 256, (9, 13), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "pil.png")
    loaded = read_image(tmp_path / "pil.png")
    assert loaded.array.dtype == np.uint8 and loaded.array.shape == (9, 13)
    assert not loaded.is_color and loaded.dimension == 2
    np.testing.assert_array_equal(loaded.array, grey)
    write_image(loaded, tmp_path / "ours.png")
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "ours.png")), grey)


def test_png_grey_16bit_both_directions(tmp_path):
    grey = RNG.integers(0, 65536, (9, 13), dtype=np.uint16)
    assert grey.max() > 255
    Image.fromarray(grey).save(tmp_path / "pil16.png")
    loaded = read_image(tmp_path / "pil16.png")
    assert loaded.array.dtype == np.uint16
    np.testing.assert_array_equal(loaded.array, grey)
    write_image(grey, tmp_path / "ours16.png")
    back = read_image(tmp_path / "ours16.png")
    assert back.array.dtype == np.uint16
    np.testing.assert_array_equal(back.array, grey)


def test_png_rgb(tmp_path):
    rgb = RNG.integers(0, 256, (7, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    loaded = read_image(tmp_path / "rgb.png")
    assert loaded.is_color and loaded.array.shape == (7, 11, 3)
    assert loaded.dimension == 2 and loaded.spatial_shape == (7, 11)
    np.testing.assert_array_equal(loaded.array, rgb)
    write_image(rgb, tmp_path / "ours.png")  # (H, W, 3) to PNG is colour by default
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "ours.png").convert("RGB")), rgb)
    assert Image.open(tmp_path / "ours.png").mode == "RGB"


def test_png_rgba_drops_alpha(tmp_path):
    rgba = RNG.integers(0, 256, (7, 11, 4), dtype=np.uint8)
    rgba[..., 3] = np.arange(11, dtype=np.uint8) * 20  # alpha differs from every colour channel
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    loaded = read_image(tmp_path / "rgba.png")
    assert loaded.is_color and loaded.array.shape == (7, 11, 3)
    np.testing.assert_array_equal(loaded.array, rgba[..., :3])
    assert loaded.array.flags["C_CONTIGUOUS"]


def test_palette_png_becomes_rgb(tmp_path):
    rgb = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    expected = np.array(Image.open(tmp_path / "palette.png").convert("RGB"))
    loaded = read_image(tmp_path / "palette.png")
    assert loaded.is_color
    np.testing.assert_array_equal(loaded.array, expected)


def test_grey_alpha_png_is_refused_clearly(tmp_path):
    Image.fromarray(RNG.integers(0, 256, (6, 8), dtype=np.uint8)).convert("LA").save(tmp_path / "la.png")
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "la.png")
    one_line_error(excinfo, str(tmp_path / "la.png"), "grey+alpha")


@pytest.mark.parametrize("extension", [".bmp", ".tif"])
def test_lossless_2d_formats_read_exactly(tmp_path, extension):
    rgb = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / f"c{extension}")
    np.testing.assert_array_equal(read_image(tmp_path / f"c{extension}").array, rgb)


def test_float_tiff_keeps_float32(tmp_path):
    data = RNG.random((5, 6)).astype(np.float32)
    Image.fromarray(data).save(tmp_path / "f.tif")
    loaded = read_image(tmp_path / "f.tif")
    assert loaded.array.dtype == np.float32
    np.testing.assert_array_equal(loaded.array, data)
    write_image(data.astype(np.float64), tmp_path / "g.tif")  # TIFF has no float64: float32
    back = read_image(tmp_path / "g.tif")
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, data)


def test_jpeg_reads_close_to_the_original(tmp_path):
    grey = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (16, 1))
    Image.fromarray(grey).save(tmp_path / "g.jpg", quality=95)
    loaded = read_image(tmp_path / "g.jpg")
    assert loaded.array.shape == (16, 16)
    assert np.abs(loaded.array.astype(int) - grey).max() <= 8


# --------------------------------------------------------------- float to integer rule


def test_float_to_png_is_rounded_and_clipped_not_wrapped(tmp_path):
    values = np.array([[-1.7, 0.4, 0.5, 1.5], [2.5, 254.6, 255.4, 300.2]])
    write_image(values, tmp_path / "f.png")
    stored = read_image(tmp_path / "f.png").array
    assert stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, [[0, 0, 0, 2], [2, 255, 255, 255]])


def test_int16_to_png_becomes_uint16_clipped(tmp_path):
    values = np.array([[-5, 0], [300, 32767]], dtype=np.int16)
    write_image(values, tmp_path / "ct.png")
    stored = read_image(tmp_path / "ct.png").array
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, [[0, 0], [300, 32767]])


def test_explicit_dtype_and_rescale(tmp_path):
    values = np.array([[0.0, 0.25], [0.5, 1.0]])
    write_image(values, tmp_path / "r.png", cast="rescale", dtype=np.uint16)
    stored = read_image(tmp_path / "r.png").array
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, [[0, 16384], [32768, 65535]])


def test_uint16_to_jpeg_is_clipped_to_uint8(tmp_path):
    values = np.full((8, 8), 1000, dtype=np.uint16)
    write_image(values, tmp_path / "j.jpg")
    stored = read_image(tmp_path / "j.jpg").array
    assert stored.dtype == np.uint8 and stored.min() >= 250  # 1000 -> 255, not 1000 % 256 = 232


def test_cast_error_rule_refuses_lossy_conversion(tmp_path):
    with pytest.raises(InputError, match="cast="):
        write_image(np.array([[0.5, 1.0]]), tmp_path / "e.png", cast="error")
    write_image(np.array([[3.0, 200.0]]), tmp_path / "ok.png", cast="error")  # exact integers pass
    np.testing.assert_array_equal(read_image(tmp_path / "ok.png").array, [[3, 200]])
    assert only_files(tmp_path) == ["ok.png"]


def test_nan_cannot_be_stored_as_integers(tmp_path):
    with pytest.raises(InputError, match="NaN"):
        write_image(np.array([[np.nan, 1.0]]), tmp_path / "n.png")
    assert only_files(tmp_path) == []


def test_unsupported_dtype_for_format_and_unknown_cast(tmp_path):
    with pytest.raises(InputError, match="cannot store float32"):
        write_image(np.zeros((3, 3)), tmp_path / "x.png", dtype=np.float32)
    with pytest.raises(InputError, match="cast"):
        write_image(np.zeros((3, 3)), tmp_path / "x.png", cast="wrap")
    assert only_files(tmp_path) == []


def test_volume_to_png_is_refused(tmp_path):
    with pytest.raises(InputError, match="2D images only"):
        write_image(np.zeros((3, 4, 5), np.uint8), tmp_path / "v.png")
    assert only_files(tmp_path) == []


def test_unknown_output_format_is_refused_without_leftovers(tmp_path):
    with pytest.raises(InputError) as excinfo:
        write_image(np.zeros((3, 4), np.float32), tmp_path / "x.unknownfmt")
    one_line_error(excinfo, "unsupported output format")
    assert only_files(tmp_path) == []


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=6), elements=st.floats(-1e6, 1e6)),
    st.sampled_from([np.uint8, np.uint16, np.int16]),
)
def test_cast_clip_is_round_then_clip(values, dtype):
    out = cast_array(values, dtype)
    info = np.iinfo(dtype)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, np.clip(np.rint(values), info.min, info.max))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.int64, hnp.array_shapes(max_dims=2, max_side=6), elements=st.integers(-(2**62), 2**62)))
def test_cast_clip_of_wide_integers_never_wraps(values):
    out = cast_array(values, np.uint16)
    np.testing.assert_array_equal(out, np.clip(values, 0, 65535))


# ------------------------------------------------------------------------------- DICOM


def write_dicom_series(
    folder: Path, volume: LoadedImage, series_uid: str, description: str = "test", positions=None
) -> list[Path]:
    """SimpleITK's documented recipe for writing a series slice by slice."""
    folder.mkdir(parents=True, exist_ok=True)
    image = volume.to_sitk()
    d = image.GetDirection()
    shared = [
        ("0008|0060", "CT"),
        ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"),  # CT Image Storage
        ("0008|0008", "DERIVED\\SECONDARY"),
        ("0020|000d", series_uid + ".0"),
        ("0020|000e", series_uid),
        ("0008|103e", description),
        ("0020|0037", "\\".join(repr(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))),
    ]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # keep our UIDs instead of fresh ones per file
    paths = []
    for i in range(image.GetDepth()):
        index = positions[i] if positions is not None else i
        piece = image[:, :, i]
        for key, value in shared:
            piece.SetMetaData(key, value)
        position = image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(index)))
        piece.SetMetaData("0020|0032", "\\".join(repr(v) for v in position))
        piece.SetMetaData("0020|0013", str(i + 1))
        piece.SetMetaData("0008|0018", f"{series_uid}.{i + 1}")
        path = folder / f"slice{i:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(piece)
        paths.append(path)
    return paths


def dicom_volume() -> LoadedImage:
    data = RNG.integers(-1000, 2000, (4, 6, 7)).astype(np.int16)
    return LoadedImage(data, (0.8, 0.9, 2.5), ORIGIN, DIRECTION)


def test_dicom_series_read_back_with_geometry(tmp_path):
    volume = dicom_volume()
    files = write_dicom_series(tmp_path / "series", volume, "1.2.826.0.1.3680043.2.1125.1")
    digests = [sha256(f) for f in files]
    loaded = read_image(tmp_path / "series")
    assert loaded.array.shape == (4, 6, 7)
    np.testing.assert_array_equal(loaded.array, volume.array)
    assert_geometry(loaded, (0.8, 0.9, 2.5), ORIGIN, DIRECTION, tol=1e-4)
    assert loaded.path == str(tmp_path / "series")
    assert [sha256(f) for f in files] == digests


def test_single_dicom_file_is_a_one_slice_volume(tmp_path):
    volume = dicom_volume()
    files = write_dicom_series(tmp_path / "series", volume, "1.2.826.0.1.3680043.2.1125.2")
    loaded = read_image(files[2])
    assert loaded.array.shape == (1, 6, 7)
    np.testing.assert_array_equal(loaded.array[0], volume.array[2])
    third_slice = np.asarray(ORIGIN) + 2 * 2.5 * np.asarray(DIRECTION).reshape(3, 3)[:, 2]
    np.testing.assert_allclose(loaded.origin, third_slice, atol=1e-4)


def test_several_series_need_a_series_id(tmp_path):
    folder = tmp_path / "mixed"
    first, second = "1.2.826.0.1.3680043.2.1125.10", "1.2.826.0.1.3680043.2.1125.20"
    volume_a, volume_b = dicom_volume(), dicom_volume()
    write_dicom_series(folder / "a", volume_a, first, "first")
    write_dicom_series(folder / "b", volume_b, second, "second")
    for sub in ("a", "b"):
        for f in (folder / sub).iterdir():
            f.rename(folder / f"{sub}_{f.name}")
    found = list_dicom_series(folder)
    assert sorted(s.series_id for s in found) == [first, second]
    assert all(isinstance(s, DicomSeries) and len(s.files) == 4 for s in found)
    assert {s.description for s in found} == {"first", "second"}
    with pytest.raises(InputError) as excinfo:
        read_image(folder)
    one_line_error(excinfo, str(folder), first, second, "series_id")
    np.testing.assert_array_equal(read_image(folder, series_id=second).array, volume_b.array)
    np.testing.assert_array_equal(read_image(folder, series_id=first).array, volume_a.array)
    with pytest.raises(InputError, match="no DICOM series '9.9'"):
        read_image(folder, series_id="9.9")


def test_missing_slice_warns_about_approximate_spacing(tmp_path):
    uid = "1.2.826.0.1.3680043.2.1125.3"
    write_dicom_series(tmp_path / "gap", dicom_volume(), uid, positions=[0, 1, 2, 4])
    with pytest.warns(UserWarning, match="unevenly spaced"):
        read_image(tmp_path / "gap")


def test_pydicom_ct_small(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    source = get_testdata_file("CT_small.dcm")
    if source is None:
        pytest.skip("pydicom test data not available")
    path = tmp_path / "CT_small.dcm"
    shutil.copyfile(source, path)
    before = sha256(path)
    loaded = read_image(path)
    dataset = pydicom.dcmread(path)
    assert loaded.array.shape == (1, dataset.Rows, dataset.Columns)
    expected = dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    np.testing.assert_array_equal(loaded.array[0], expected)
    np.testing.assert_allclose(loaded.spacing[:2], [float(v) for v in dataset.PixelSpacing[::-1]])
    np.testing.assert_allclose(loaded.origin, [float(v) for v in dataset.ImagePositionPatient], atol=1e-4)
    assert sha256(path) == before


# ------------------------------------------------------------------------------ errors


def test_missing_path(tmp_path):
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "nope.nii.gz")
    one_line_error(excinfo, str(tmp_path / "nope.nii.gz"), "no such file")


def test_empty_file(tmp_path):
    (tmp_path / "empty.nii").write_bytes(b"")
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "empty.nii")
    one_line_error(excinfo, str(tmp_path / "empty.nii"), "empty")


def test_text_file_renamed_nii(tmp_path):
    (tmp_path / "notes.nii").write_text("this is not an image\n" * 40)
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "notes.nii")
    one_line_error(excinfo, str(tmp_path / "notes.nii"), "not a readable image")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("extension", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_truncated_volume(tmp_path, extension):
    path = tmp_path / f"cut{extension}"
    sitk.WriteImage(make_volume(shape=(20, 30, 40)).to_sitk(), str(path))
    read_image(path)  # valid before the cut
    _truncate(path)
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    one_line_error(excinfo, str(path))


@pytest.mark.parametrize("extension", [".png", ".jpg", ".bmp"])
def test_truncated_2d_image(tmp_path, extension):
    path = tmp_path / f"cut{extension}"
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    read_image(path)
    _truncate(path)
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    one_line_error(excinfo, str(path))


def test_truncated_multipage_tiff_is_not_read_short(tmp_path):
    path = tmp_path / "stack.tif"
    sitk.WriteImage(sitk.GetImageFromArray(RNG.random((20, 30, 40)).astype(np.float32)), str(path))
    assert read_image(path).array.shape == (20, 30, 40)
    _truncate(path)
    with pytest.raises(InputError) as excinfo:  # SimpleITK alone returns 10 slices here
        read_image(path)
    one_line_error(excinfo, str(path), "truncated")


def test_directory_without_dicom(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path)
    one_line_error(excinfo, str(tmp_path), "no DICOM series")


def test_series_id_with_a_file_is_refused(tmp_path):
    write_image(np.zeros((3, 3), np.uint8), tmp_path / "a.png")
    with pytest.raises(InputError, match="series_id"):
        read_image(tmp_path / "a.png", series_id="1.2.3")


def test_list_dicom_series_of_missing_directory(tmp_path):
    with pytest.raises(InputError, match="no such directory"):
        list_dicom_series(tmp_path / "absent")
    assert list_dicom_series(tmp_path) == []


def test_4d_nifti_is_refused(tmp_path):
    volume = make_volume().to_sitk()
    path = tmp_path / "fmri.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(path))
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    one_line_error(excinfo, str(path), "4D")


def test_vector_volume_is_refused(tmp_path):
    volume = make_volume().to_sitk()
    path = tmp_path / "field.nii.gz"
    sitk.WriteImage(sitk.Compose([volume, volume, volume]), str(path))
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    one_line_error(excinfo, str(path), "vector volumes")


def test_zero_size_image_is_refused(tmp_path):
    path = tmp_path / "zero.mha"
    path.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 0 5 5\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
    )
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    one_line_error(excinfo, str(path), "empty")


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nrrd", "v.mha", "g.png", "rgba.png", "c.jpg", "s.tif"])
def test_reading_leaves_the_file_byte_identical(tmp_path, name):
    path = tmp_path / name
    if name.startswith("v."):
        sitk.WriteImage(make_volume().to_sitk(), str(path))
    elif name == "rgba.png":
        Image.fromarray(RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA").save(path)
    elif name == "c.jpg":
        Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    else:
        Image.fromarray(RNG.integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    before, mtime = sha256(path), path.stat().st_mtime_ns
    read_image(path)
    assert sha256(path) == before
    assert path.stat().st_mtime_ns == mtime
    assert only_files(tmp_path) == [name]


# ------------------------------------------------------------------ atomicity, refusal


def _partial_writer(calls: list):
    def fake_write(image, filename, *args, **kwargs):
        calls.append(str(filename))
        Path(filename).write_bytes(b"\x1f\x8b partial")
        raise RuntimeError("Exception thrown in SimpleITK WriteImage: x.cxx:1:\nsitk::ERROR: disk full")

    return fake_write


def test_failing_writer_leaves_nothing_behind(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(sitk, "WriteImage", _partial_writer(calls))
    target = tmp_path / "out.nii.gz"
    with pytest.raises(InputError) as excinfo:
        write_image(make_volume(), target)
    one_line_error(excinfo, str(target), "disk full")
    assert len(calls) == 1
    # The writer was handed a temporary file with the full compound extension, next to the target.
    assert calls[0].endswith(".nii.gz") and calls[0] != str(target)
    assert Path(calls[0]).parent.parent == tmp_path
    assert not target.exists()
    assert only_files(tmp_path) == []


def test_failing_writer_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "out.mha"
    write_image(make_volume(), target)
    before = sha256(target)
    monkeypatch.setattr(sitk, "WriteImage", _partial_writer([]))
    with pytest.raises(InputError):
        write_image(make_volume(), target, overwrite=True)
    assert sha256(target) == before
    assert only_files(tmp_path) == ["out.mha"]


def test_non_itk_failure_also_cleans_up(tmp_path, monkeypatch):
    def exploding(image, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(sitk, "WriteImage", exploding)
    with pytest.raises(KeyboardInterrupt):
        write_image(make_volume(), tmp_path / "v.nrrd")
    assert only_files(tmp_path) == []


def test_overwrite_is_refused_unless_asked(tmp_path):
    target = tmp_path / "out.nii.gz"
    write_image(make_volume(), target)
    before = sha256(target)
    with pytest.raises(InputError) as excinfo:
        write_image(make_volume(), target)
    one_line_error(excinfo, str(target), "already exists", "overwrite=True")
    assert sha256(target) == before
    replacement = make_volume()
    write_image(replacement, target, overwrite=True)
    np.testing.assert_array_equal(read_image(target).array, replacement.array)
    assert only_files(tmp_path) == ["out.nii.gz"]


def test_mhd_side_file_is_also_protected_from_overwrite(tmp_path):
    (tmp_path / "v.raw").write_bytes(b"someone else's data")
    with pytest.raises(InputError, match="v.raw"):
        write_image(make_volume(), tmp_path / "v.mhd", use_compression=False)
    assert (tmp_path / "v.raw").read_bytes() == b"someone else's data"
    assert only_files(tmp_path) == ["v.raw"]


def test_mhd_side_file_that_is_an_input_is_never_replaced(tmp_path):
    data_file = tmp_path / "v.raw"
    data_file.write_bytes(b"input data")
    with pytest.raises(InputError, match="input"):
        write_image(make_volume(), tmp_path / "v.mhd", overwrite=True, use_compression=False,
                    protected_paths=[data_file])
    assert data_file.read_bytes() == b"input data"
    assert only_files(tmp_path) == ["v.raw"]


def _protected_setup(tmp_path):
    source = tmp_path / "input.nii.gz"
    write_image(make_volume(), source)
    return source, sha256(source)


def test_output_can_never_replace_an_input(tmp_path):
    source, digest = _protected_setup(tmp_path)
    with pytest.raises(InputError) as excinfo:
        write_image(make_volume(), source, overwrite=True, protected_paths=[source])
    one_line_error(excinfo, "input")
    assert sha256(source) == digest


def test_protected_input_through_dotdot_path(tmp_path):
    source, digest = _protected_setup(tmp_path)
    (tmp_path / "sub").mkdir()
    sneaky = tmp_path / "sub" / ".." / "input.nii.gz"
    with pytest.raises(InputError, match="input"):
        write_image(make_volume(), sneaky, overwrite=True, protected_paths=[str(source)])
    assert sha256(source) == digest


def test_protected_input_through_symlink(tmp_path):
    source, digest = _protected_setup(tmp_path)
    link = tmp_path / "link.nii.gz"
    try:
        link.symlink_to(source)
    except OSError:
        pytest.skip("symlinks not available")
    with pytest.raises(InputError, match="input"):
        write_image(make_volume(), link, overwrite=True, protected_paths=[source])
    # ... and when the *protected* path is the link and the output the real file.
    with pytest.raises(InputError, match="input"):
        write_image(make_volume(), source, overwrite=True, protected_paths=[link])
    assert sha256(source) == digest
    assert link.is_symlink()


def test_protected_input_through_hard_link(tmp_path):
    source, digest = _protected_setup(tmp_path)
    twin = tmp_path / "twin.nii.gz"
    try:
        os.link(source, twin)
    except OSError:
        pytest.skip("hard links not available")
    with pytest.raises(InputError, match="input"):
        write_image(make_volume(), twin, overwrite=True, protected_paths=[source])
    assert sha256(source) == digest


def test_files_of_a_protected_dicom_folder_are_not_replaced(tmp_path):
    files = write_dicom_series(tmp_path / "series", dicom_volume(), "1.2.826.0.1.3680043.2.1125.4")
    digest = sha256(files[0])
    with pytest.raises(InputError, match="input folder"):
        write_image(make_volume(), files[0], overwrite=True, protected_paths=[tmp_path / "series"])
    assert sha256(files[0]) == digest
    # A new file next to the series is fine.
    write_image(make_volume(), tmp_path / "series" / "fused.nii.gz", protected_paths=[tmp_path / "series"])


def test_unprotected_other_file_can_be_overwritten(tmp_path):
    source, digest = _protected_setup(tmp_path)
    other = tmp_path / "other.nii.gz"
    write_image(make_volume(), other)
    write_image(make_volume(), other, overwrite=True, protected_paths=[source])
    assert sha256(source) == digest


def test_missing_output_folder_is_named(tmp_path):
    folder = tmp_path / "absent"
    with pytest.raises(InputError) as excinfo:
        write_image(make_volume(), folder / "out.nii.gz")
    one_line_error(excinfo, str(folder), "does not exist")


def test_output_folder_that_is_a_file(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        write_image(make_volume(), tmp_path / "plain" / "out.nii.gz")


def test_output_path_that_is_a_directory(tmp_path):
    (tmp_path / "dir.nii.gz").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        write_image(make_volume(), tmp_path / "dir.nii.gz", overwrite=True)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder_is_named(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError) as excinfo:
            write_image(make_volume(), folder / "out.nii.gz")
        one_line_error(excinfo, str(folder), "not writable")
    finally:
        folder.chmod(0o700)


def test_folder_that_refuses_new_files_is_named(tmp_path, monkeypatch):
    """Runs even as root: the OS refusal is simulated where the temporary folder is made."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(InputError) as excinfo:
        write_image(make_volume(), tmp_path / "out.nii.gz")
    one_line_error(excinfo, str(tmp_path), "Permission denied")
    assert only_files(tmp_path) == []


def test_atomic_output_commits_on_success(tmp_path):
    target = tmp_path / "scores.csv"
    with atomic_output(target) as temporary:
        assert temporary.name == "scores.csv" and temporary.parent.parent == tmp_path
        assert not target.exists()  # nothing visible until the block ends
        temporary.write_text("a,b\n1,2\n")
    assert target.read_text() == "a,b\n1,2\n"
    assert only_files(tmp_path) == ["scores.csv"]


def test_atomic_output_discards_on_exception(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_text("old\n")
    with pytest.raises(ZeroDivisionError):
        with atomic_output(target, overwrite=True) as temporary:
            temporary.write_text("half")
            1 / 0
    assert target.read_text() == "old\n"
    assert only_files(tmp_path) == ["scores.csv"]


def test_atomic_output_refuses_existing_and_protected(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"weights")
    with pytest.raises(InputError, match="already exists"):
        with atomic_output(target):
            pass
    with pytest.raises(InputError, match="input"):
        with atomic_output(target, overwrite=True, protected_paths=[target]):
            pass
    assert target.read_bytes() == b"weights"
    assert only_files(tmp_path) == ["model.pt"]


def test_atomic_output_without_a_file_written_is_an_error(tmp_path):
    with pytest.raises(Exception, match="produced no file"):
        with atomic_output(tmp_path / "nothing.csv"):
            pass
    assert only_files(tmp_path) == []


def test_atomic_output_refuses_a_file_created_meanwhile(tmp_path):
    target = tmp_path / "race.csv"
    with pytest.raises(InputError, match="already exists"):
        with atomic_output(target) as temporary:
            temporary.write_text("ours")
            target.write_text("theirs")  # appears after the initial check
    assert target.read_text() == "theirs"
    assert only_files(tmp_path) == ["race.csv"]


def test_atomic_output_never_clobbers_a_file_that_appears_after_the_checks(tmp_path, monkeypatch):
    """The final move itself refuses (hard link, not rename) when overwrite is False."""
    import MedFusionLib.io.atomic as medio

    target = tmp_path / "race2.csv"
    with pytest.raises(InputError, match="already exists"):
        with atomic_output(target) as temporary:
            temporary.write_text("ours")
            target.write_text("theirs")
            # Simulate the file appearing between the last check and the move.
            monkeypatch.setattr(medio, "_check_destination", lambda *args, **kwargs: None)
    assert target.read_text() == "theirs"
    assert only_files(tmp_path) == ["race2.csv"]


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from MedFusionLib.io import remove_stale_temporaries

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)  # that process has exited
    stale = tmp_path / f".fused.nii.gz.{dead}.abc123_x.tmp"
    live = tmp_path / f".fused.nii.gz.{os.getpid()}.def456.tmp"  # a writer still running (this process)
    unrelated = [tmp_path / ".fused.nii.gz.notapid.tmp", tmp_path / f".fused.{dead}.abc.tmp",
                 tmp_path / f"fused.nii.gz.{dead}.abc.tmp"]
    for folder in [stale, live, *unrelated]:
        folder.mkdir()
        (folder / "fused.nii.gz").write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path / "fused.nii.gz") == [stale.name]
    assert not stale.exists() and live.exists() and all(f.exists() for f in unrelated)


def test_dicom_folder_with_other_objects_reads_but_a_cut_slice_is_refused(tmp_path):
    """Scanner exports hold other DICOM objects beside a series (reports, other series): those are
    ignored; a slice of the chosen series that GDCM could not parse is refused, not silently dropped."""
    volume = dicom_volume()
    uid = "1.2.826.0.1.3680043.2.1125.7"
    files = write_dicom_series(tmp_path / "export", volume, uid)
    other = write_dicom_series(tmp_path / "other", LoadedImage(volume.array[:2], (1.0, 1.0, 1.0), ORIGIN, DIRECTION), uid + "9")
    other[0].rename(tmp_path / "export" / "dose_report.dcm")
    loaded = read_image(tmp_path / "export", series_id=uid)
    np.testing.assert_array_equal(loaded.array, volume.array)
    data = files[2].read_bytes()
    files[2].write_bytes(data[: int(len(data) * 0.8)])  # a copy cut short: header kept, pixels cut
    with pytest.raises(InputError, match=r"slice002\.dcm of series .* cannot be read"):
        read_image(tmp_path / "export", series_id=uid)
