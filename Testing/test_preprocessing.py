"""Tests of MedFusionLib.preprocessing: denoising, registration, intensity standardisation, colour."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from MedFusionLib.errors import InputError, MedFusionError
from MedFusionLib.io import LoadedImage
from MedFusionLib.preprocessing import (
    CT_WINDOWS,
    DENOISE_METHODS,
    Chroma,
    RegistrationCancelled,
    RegistrationProgress,
    denoise,
    merge_luminance,
    percentile_normalise,
    register,
    resample_to,
    rgb_to_ycbcr,
    split_luminance,
    standardise,
    window_ct,
    ycbcr_to_rgb,
)
from MedFusionLib.validation import luminance

RNG = np.random.default_rng(20240611)
FILTERS = [m for m in DENOISE_METHODS if m != "none"]


# --------------------------------------------------------------------------- fixtures


def blocks_phantom(shape=(96, 96)) -> np.ndarray:
    """Piecewise-constant image: flat regions to measure noise in, edges to keep."""
    clean = np.zeros(shape)
    clean[20:76, 20:76] = 100.0
    clean[40:56, 30:60] = 200.0
    return clean


def noisy_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    clean = blocks_phantom()
    return clean, clean + np.random.default_rng(seed).normal(0.0, 10.0, clean.shape)


FLAT = (slice(24, 36), slice(24, 36))  # inside the 100-plateau, away from edges


def head_phantom(n: int = 128) -> np.ndarray:
    """Asymmetric 2D 'head': ellipses of distinct intensities, so rotation is identifiable."""
    y, x = np.mgrid[:n, :n].astype(float)
    c = n / 2
    image = np.zeros((n, n))
    image[((x - c) / (0.42 * n)) ** 2 + ((y - c) / (0.36 * n)) ** 2 <= 1] = 0.3
    image[((x - c - 0.15 * n) / (0.12 * n)) ** 2 + ((y - c + 0.1 * n) / (0.08 * n)) ** 2 <= 1] = 1.0
    image[((x - c + 0.18 * n) / (0.06 * n)) ** 2 + ((y - c - 0.12 * n) / (0.14 * n)) ** 2 <= 1] = 0.7
    image[(abs(x - c + 0.05 * n) < 0.05 * n) & (abs(y - c - 0.2 * n) < 0.03 * n)] = 0.5
    # Smooth edges give the optimizer a gradient to follow.
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(image), 1.0))


def remap(values: np.ndarray) -> np.ndarray:
    """Non-monotonic 'other modality' map: 0->1, 0.3->0.68, 0.5->0.29, 0.7->0.03, 1->0.17."""
    return 0.5 + 0.5 * np.cos(4.0 * values)


def to_loaded(image: sitk.Image) -> LoadedImage:
    return LoadedImage(
        sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    )


FIXED_SPACING = (0.9, 0.9)
FIXED_ORIGIN = (-40.0, 25.0)


def rigid_pair_2d(intensity=None):
    """Fixed head phantom and a moving copy rotated by 5 deg and shifted by (3, -2) mm,
    sampled on a different grid. Returns (fixed, moving, true transform)."""
    fixed_sitk = sitk.GetImageFromArray(head_phantom().astype(np.float32))
    fixed_sitk.SetSpacing(FIXED_SPACING)
    fixed_sitk.SetOrigin(FIXED_ORIGIN)
    truth = sitk.Euler2DTransform()
    truth.SetCenter(fixed_sitk.TransformContinuousIndexToPhysicalPoint((63.5, 63.5)))
    truth.SetAngle(math.radians(5.0))
    truth.SetTranslation((3.0, -2.0))
    grid = sitk.Image(120, 110, sitk.sitkFloat32)
    grid.SetSpacing((1.0, 1.0))
    grid.SetOrigin((FIXED_ORIGIN[0] - 3.0, FIXED_ORIGIN[1] + 4.0))
    # moving(p) = fixed(truth(p)): the registration must find truth's inverse.
    moving_sitk = sitk.Resample(fixed_sitk, grid, truth, sitk.sitkLinear, 0.0)
    moving = to_loaded(moving_sitk)
    if intensity is not None:
        remapped = intensity(moving.array).astype(np.float32)
        moving = LoadedImage(remapped, moving.spacing, moving.origin, moving.direction)
    return to_loaded(fixed_sitk), moving, truth


def max_point_error(truth: sitk.Transform, found: sitk.Transform, points) -> float:
    """Largest distance |truth(found(p)) - p|: zero when ``found`` is exactly truth's inverse."""
    return max(
        float(np.linalg.norm(np.subtract(truth.TransformPoint(found.TransformPoint(p)), p))) for p in points
    )


def inner_points_2d(image: LoadedImage):
    sitk_image = image.to_sitk()
    corners = [(20, 20), (107, 20), (20, 107), (107, 107)]
    return [sitk_image.TransformContinuousIndexToPhysicalPoint(ij) for ij in corners]


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


def assert_same_geometry(result: LoadedImage, reference: LoadedImage) -> None:
    assert result.spatial_shape == reference.spatial_shape
    assert result.spacing == reference.spacing
    assert result.origin == reference.origin
    assert result.direction == reference.direction


@pytest.fixture(scope="module")
def rigid_result():
    fixed, moving, truth = rigid_pair_2d()
    fixed_copy, moving_copy = fixed.array.copy(), moving.array.copy()
    result = register(fixed, moving)
    return fixed, moving, truth, result, fixed_copy, moving_copy


# --------------------------------------------------------------------------- denoise


@pytest.mark.parametrize("method", FILTERS)
def test_denoise_reduces_noise_and_keeps_shape(method):
    clean, noisy = noisy_pair()
    before = noisy.copy()
    result = denoise(noisy, method)
    assert result.shape == noisy.shape
    assert result.dtype == np.float64
    assert np.array_equal(noisy, before)  # input untouched
    assert not np.shares_memory(result, noisy)
    noise_before = np.std(noisy[FLAT] - clean[FLAT])
    assert np.std(result[FLAT] - clean[FLAT]) < 0.6 * noise_before
    assert rms(result, clean) < 0.8 * rms(noisy, clean)


def test_denoise_none_is_a_float_copy():
    _, noisy = noisy_pair()
    result = denoise(noisy, "none")
    assert np.array_equal(result, noisy)
    assert not np.shares_memory(result, noisy)
    ints = np.arange(12, dtype=np.int16).reshape(3, 4)
    assert denoise(ints, "none").dtype == np.float64


@pytest.mark.parametrize("method", FILTERS)
def test_denoise_volume(method):
    rng = np.random.default_rng(1)
    clean = np.zeros((16, 24, 24), dtype=np.float32)
    clean[:, 6:18, 6:18] = 100.0
    noisy = (clean + rng.normal(0, 10, clean.shape)).astype(np.float32)
    before = noisy.copy()
    result = denoise(noisy, method)
    assert result.shape == noisy.shape
    assert result.dtype == np.float32  # float32 stays float32
    assert np.array_equal(noisy, before)
    flat = (slice(4, 12), slice(8, 16), slice(8, 16))
    assert np.std(result[flat] - clean[flat]) < 0.6 * np.std(noisy[flat] - clean[flat])


def test_denoise_defaults_are_the_documented_ones():
    _, noisy = noisy_pair()
    # 2D curvature flow: 5 iterations of time step 0.125 (not the 3D 0.0625).
    default = denoise(noisy, "curvature_flow")
    assert np.allclose(default, denoise(noisy, "curvature_flow", iterations=5, time_step=0.125))
    assert not np.allclose(default, denoise(noisy, "curvature_flow", time_step=0.0625))
    volume = np.random.default_rng(2).normal(0, 1, (8, 12, 12))
    assert np.allclose(
        denoise(volume, "curvature_flow"), denoise(volume, "curvature_flow", time_step=0.0625)
    )
    assert np.allclose(denoise(noisy, "gaussian"), denoise(noisy, "gaussian", sigma=1.0))
    assert np.allclose(denoise(noisy, "median"), denoise(noisy, "median", radius=1))
    span = noisy.max() - noisy.min()
    assert np.allclose(
        denoise(noisy, "bilateral"), denoise(noisy, "bilateral", domain_sigma=2.0, range_sigma=0.1 * span)
    )


def test_denoise_parameters_take_effect():
    clean, noisy = noisy_pair()
    wide = denoise(noisy, "gaussian", sigma=2.0)
    narrow = denoise(noisy, "gaussian", sigma=0.5)
    assert np.std(wide[FLAT]) < 0.5 * np.std(narrow[FLAT])
    # A 3x3 median of a lone spike removes it; radius counts in pixels.
    spike = np.zeros((9, 9))
    spike[4, 4] = 1000.0
    assert denoise(spike, "median", radius=1)[4, 4] == 0.0
    # A 2-pixel stripe survives a 3x3 median (6 of 9 pixels) but not a 5x5 one (10 of 25).
    stripe = np.zeros((11, 11))
    stripe[5:7] = 1.0
    assert np.all(denoise(stripe, "median")[5:7, 2:-2] == 1.0)
    assert np.all(denoise(stripe, "median", radius=2)[5:7] == 0.0)


def test_denoise_loaded_image_keeps_geometry_and_pixel_units():
    _, noisy = noisy_pair()
    loaded = LoadedImage.from_array(noisy, spacing=(0.25, 4.0), origin=(1.0, 2.0))
    result = denoise(loaded, "gaussian")
    assert isinstance(result, LoadedImage)
    assert_same_geometry(result, loaded)
    assert result is not loaded and result.array is not loaded.array
    assert np.allclose(result.array, denoise(noisy, "gaussian"))


def test_denoise_constant_image_bilateral():
    flat = np.full((10, 10), 7.0)
    assert np.array_equal(denoise(flat, "bilateral"), flat)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: denoise(np.zeros((8, 8)), "wiener"), ["wiener", "curvature_flow", "median"]),
        (lambda: denoise(np.zeros((8, 8)), "gaussian", radius=2), ["radius", "sigma"]),
        (lambda: denoise(np.zeros((8, 8)), "gaussian", sigma=-1.0), ["sigma"]),
        (lambda: denoise(np.zeros((8, 8)), "median", radius=1.5), ["radius"]),
        (lambda: denoise(np.zeros((8, 8)), "curvature_flow", iterations=0), ["iterations"]),
        (lambda: denoise(np.array([[0.0, np.nan], [1.0, 2.0]])), ["NaN"]),
        (lambda: denoise(np.zeros(8)), ["dimensions"]),
        (lambda: denoise(np.zeros((2, 4, 4, 4))), ["dimensions"]),
        (lambda: denoise(np.zeros((8, 8, 3))), ["RGB"]),
        (lambda: denoise(LoadedImage.from_array(np.zeros((8, 8, 3)), is_color=True)), ["colour"]),
        (lambda: denoise(np.zeros((0, 4))), ["empty"]),
        (lambda: denoise(np.array([["a"]])), ["numeric"]),
    ],
)
def test_denoise_bad_inputs(call, words):
    with pytest.raises(InputError) as info:
        call()
    for word in words:
        assert word in str(info.value)


# --------------------------------------------------------------------------- registration


def test_register_recovers_rigid_transform(rigid_result):
    fixed, moving, truth, result, fixed_copy, moving_copy = rigid_result
    assert isinstance(result.transform, sitk.Euler2DTransform)
    assert math.degrees(result.transform.GetAngle()) == pytest.approx(-5.0, abs=0.5)
    assert max_point_error(truth, result.transform, inner_points_2d(fixed)) < 0.5
    before = resample_to(fixed, moving)  # same physical place, no correction
    inner = (slice(16, 112), slice(16, 112))
    error_before = rms(before.array[inner], fixed.array[inner])
    error_after = rms(result.resampled.array[inner], fixed.array[inner])
    assert error_after < 0.15 * error_before
    assert result.converged and "Step too small" in result.stop_condition
    assert result.iterations > 10
    assert result.metric_value < -0.5  # negative mutual information of well-aligned images
    # Inputs unchanged.
    assert np.array_equal(fixed.array, fixed_copy) and np.array_equal(moving.array, moving_copy)


def test_register_result_has_fixed_geometry(rigid_result):
    fixed, moving, _, result, _, _ = rigid_result
    assert_same_geometry(result.resampled, fixed)
    assert result.resampled.array.shape == fixed.array.shape != moving.array.shape
    assert result.resampled.array.dtype == np.float32
    assert result.resampled.path is None and not result.resampled.is_color


def test_register_multimodal_pair():
    fixed, moving, truth = rigid_pair_2d(intensity=remap)
    result = register(fixed, moving)
    assert math.degrees(result.transform.GetAngle()) == pytest.approx(-5.0, abs=0.5)
    assert max_point_error(truth, result.transform, inner_points_2d(fixed)) < 0.5
    target = remap(fixed.array)  # what a perfectly aligned moving image shows
    inner = (slice(16, 112), slice(16, 112))
    error_before = rms(resample_to(fixed, moving).array[inner], target[inner])
    assert rms(result.resampled.array[inner], target[inner]) < 0.25 * error_before
    # Fixed points that fall outside the moving grid (the top row) get the moving minimum,
    # here ~0, unlike this moving image's background remap(0) = 1.
    assert moving.array.min() < 0.1
    assert result.resampled.array[0, 64] == moving.array.min()


def test_register_affine():
    fixed, moving, truth = rigid_pair_2d()
    result = register(fixed, moving, transform="affine")
    assert isinstance(result.transform, sitk.AffineTransform)
    assert max_point_error(truth, result.transform, inner_points_2d(fixed)) < 1.0


def test_register_reports_non_convergence():
    fixed, moving, _ = rigid_pair_2d()
    result = register(fixed, moving, max_iterations=2)
    assert not result.converged
    assert "Maximum number of iterations" in result.stop_condition
    assert result.iterations == 6  # 2 per level


def test_register_is_deterministic():
    fixed, moving, _ = rigid_pair_2d(intensity=remap)
    first = register(fixed, moving)
    second = register(fixed, moving)
    other_seed = register(fixed, moving, seed=12345)
    # Same samples every run. ITK's multi-threaded sums can still round differently (seen: 3e-7 mm),
    # and once in a full test run two repeats disagreed beyond 1e-5 or in their iteration count (the
    # optimiser's stopping step can flip on rounding). So the count is not compared and the tolerance
    # is 1e-3: twenty times below what another sampling seed moves the result (about 0.02 mm here,
    # checked below).
    assert np.allclose(first.transform.GetParameters(), second.transform.GetParameters(), rtol=0, atol=1e-3)
    assert not np.allclose(first.transform.GetParameters(), other_seed.transform.GetParameters(), rtol=0, atol=1e-3)


def test_register_3d_translation():
    n = 48
    z, y, x = np.mgrid[:n, :n, :n].astype(float)
    c = n / 2
    volume = np.zeros((n, n, n))
    volume[((x - c) / (0.4 * n)) ** 2 + ((y - c) / (0.35 * n)) ** 2 + ((z - c) / (0.3 * n)) ** 2 <= 1] = 0.3
    volume[((x - c - 6) / 5) ** 2 + ((y - c + 5) / 4) ** 2 + ((z - c - 2) / 5) ** 2 <= 1] = 1.0
    volume[((x - c + 7) / 3) ** 2 + ((y - c - 5) / 6) ** 2 + ((z - c + 5) / 3.5) ** 2 <= 1] = 0.6
    image = sitk.GetImageFromArray(volume.astype(np.float32))
    image.SetSpacing((1.1, 1.0, 1.3))
    image.SetOrigin((5.0, -3.0, 2.0))
    image.SetDirection(sitk.VersorTransform((1.0, 2.0, 3.0), 0.3).GetMatrix())  # oblique
    image = sitk.SmoothingRecursiveGaussian(image, 1.2)
    truth = sitk.TranslationTransform(3, (2.5, -1.5, 2.0))
    moving_image = sitk.Resample(image, image, truth, sitk.sitkLinear, 0.0)
    fixed, moving = to_loaded(image), to_loaded(moving_image)
    start = time.perf_counter()
    result = register(fixed, moving)
    assert time.perf_counter() - start < 20.0
    assert isinstance(result.transform, sitk.Euler3DTransform)
    assert np.max(np.abs(result.transform.GetParameters()[:3])) < 0.01  # no rotation
    indices = [(12, 12, 12), (36, 36, 36), (12, 36, 24)]
    points = [image.TransformContinuousIndexToPhysicalPoint(ijk) for ijk in indices]
    assert max_point_error(truth, result.transform, points) < 0.3
    assert_same_geometry(result.resampled, fixed)
    inner = (slice(8, 40),) * 3
    error_before = rms(moving.array[inner], fixed.array[inner])
    assert rms(result.resampled.array[inner], fixed.array[inner]) < 0.2 * error_before


def test_register_colour_moving_is_resampled_in_colour():
    fixed, moving, truth = rigid_pair_2d()
    rgb = np.stack([moving.array, moving.array ** 2, 1.0 - moving.array], axis=-1)
    colour = LoadedImage(rgb, moving.spacing, moving.origin, moving.direction, None, True)
    result = register(fixed, colour)
    assert result.resampled.is_color and result.resampled.array.shape == fixed.array.shape + (3,)
    # The luminance of this colour map (m, m^2, 1 - m) is a non-linear remap of the moving image,
    # and the optimiser ends in one of two places: ~0.02 px in most multi-threaded runs, 0.59-0.60 px
    # in about 3 % of them and in every single-threaded one (rounding of the threaded sums decides).
    # Both are sub-pixel; a failed registration is off by pixels, which this bound still catches.
    assert max_point_error(truth, result.transform, inner_points_2d(fixed)) < 1.0


def test_register_progress_reports_every_iteration(rigid_result):
    fixed, moving, _, reference, _, _ = rigid_result
    seen: list[RegistrationProgress] = []
    result = register(fixed, moving, progress=seen.append)
    assert len(seen) == result.iterations == reference.iterations
    assert [p.total_iterations for p in seen] == list(range(1, len(seen) + 1))
    assert [p.level for p in seen] == sorted(p.level for p in seen)
    assert {p.level for p in seen} == {0, 1, 2} and seen[0].levels == 3
    assert all(math.isfinite(p.metric_value) for p in seen)


def test_register_cancel_stops_and_raises():
    fixed, moving, _ = rigid_pair_2d()
    event = threading.Event()
    calls: list[int] = []

    def progress(step: RegistrationProgress) -> None:
        calls.append(step.total_iterations)
        if len(calls) == 3:
            event.set()

    with pytest.raises(RegistrationCancelled) as info:
        register(fixed, moving, progress=progress, cancel=event)
    assert calls == [1, 2, 3]  # nothing reported once cancelled
    assert "after 3 iterations" in str(info.value)
    # The optimizer really stopped: at most one more iteration in each of the 2 remaining levels.
    assert 3 <= info.value.iterations <= 5
    assert isinstance(info.value, MedFusionError) and not isinstance(info.value, InputError)


def test_register_cancel_before_start():
    fixed, moving, _ = rigid_pair_2d()
    event = threading.Event()
    event.set()
    calls: list[RegistrationProgress] = []
    with pytest.raises(RegistrationCancelled):
        register(fixed, moving, progress=calls.append, cancel=event)
    assert calls == []


def test_register_progress_exception_propagates():
    fixed, moving, _ = rigid_pair_2d()

    def broken(step: RegistrationProgress) -> None:
        raise ZeroDivisionError("from the callback")

    with pytest.raises(ZeroDivisionError, match="from the callback"):
        register(fixed, moving, progress=broken)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda f, m: register(f.array, m), ["fixed", "LoadedImage"]),
        (lambda f, m: register(f, m, transform="bspline"), ["bspline", "rigid", "affine"]),
        (lambda f, m: register(f, LoadedImage.from_array(np.zeros((6, 8, 8)))), ["3D", "2D"]),
        (lambda f, m: register(f, LoadedImage.from_array(np.zeros((3, 64)))), ["moving", "4 pixels"]),
        (lambda f, m: register(f, LoadedImage.from_array(np.full((8, 8), np.nan))), ["moving", "NaN"]),
        (lambda f, m: register(f, m, sampling_percentage=1.5), ["sampling_percentage"]),
        (lambda f, m: register(f, m, cancel=True), ["cancel"]),
        (lambda f, m: register(f, m, max_iterations=0), ["max_iterations"]),
    ],
)
def test_register_bad_inputs(call, words):
    fixed, moving, _ = rigid_pair_2d()
    with pytest.raises(InputError) as info:
        call(fixed, moving)
    for word in words:
        assert word in str(info.value)


def test_register_starts_from_aligned_centres():
    # GEOMETRY initialisation: a moving image 5 m away in scanner space still registers.
    fixed, moving, truth = rigid_pair_2d()
    offset = np.array([5000.0, 5000.0]) - moving.origin
    far = LoadedImage(moving.array, moving.spacing, (5000.0, 5000.0), moving.direction)
    result = register(fixed, far)
    # far(p) = moving(p - offset), so truth(found(p) - offset) must give p back.
    errors = []
    for p in inner_points_2d(fixed):
        in_moving = tuple(np.subtract(result.transform.TransformPoint(p), offset))
        errors.append(np.linalg.norm(np.subtract(truth.TransformPoint(in_moving), p)))
    assert max(errors) < 0.5


def test_register_constant_image_is_an_input_error():
    fixed, moving, _ = rigid_pair_2d()
    flat = LoadedImage(np.zeros_like(moving.array), moving.spacing, moving.origin, moving.direction)
    with pytest.raises(InputError, match="moving: the image is constant"):
        register(fixed, flat)


# --------------------------------------------------------------------------- resample_to


def physical_ramp(image: sitk.Image) -> np.ndarray:
    """Values 2 x + 3 y of each pixel's physical point: linear interpolation reproduces it exactly."""
    size = image.GetSize()
    out = np.empty((size[1], size[0]))
    for j in range(size[1]):
        for i in range(size[0]):
            px, py = image.TransformIndexToPhysicalPoint((i, j))
            out[j, i] = 2.0 * px + 3.0 * py
    return out


def test_resample_to_copies_geometry_and_interpolates_in_physical_space():
    moving_grid = sitk.Image(40, 30, sitk.sitkFloat64)
    moving_grid.SetSpacing((0.5, 0.75))
    moving_grid.SetOrigin((-5.0, 3.0))
    moving = to_loaded(moving_grid)
    moving = LoadedImage(physical_ramp(moving_grid), moving.spacing, moving.origin, moving.direction)
    # x from -4 to 5 mm lies inside the moving grid (-5..14.5), y = 4, 8, .. 36 mm only up to 24 (3..24.75).
    reference = LoadedImage.from_array(
        np.zeros((9, 7), dtype=np.uint8), spacing=(1.5, 4.0), origin=(-4.0, 4.0)
    )
    moving_copy = moving.array.copy()
    result = resample_to(reference, moving)
    assert_same_geometry(result, reference)
    assert result.array.dtype == np.float64  # float64 moving stays float64
    expected = physical_ramp(reference.to_sitk())
    assert np.allclose(result.array[:6], expected[:6], atol=1e-9)
    assert np.all(result.array[6:] == moving.array.min())  # outside the moving grid: default = min
    assert np.array_equal(moving.array, moving_copy)


def test_resample_to_with_transform_and_nearest():
    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[5:10, 5:10] = 3
    image = LoadedImage.from_array(labels)
    shift = sitk.TranslationTransform(2, (2.0, 0.0))  # reference point p shows moving at p + (2, 0)
    result = resample_to(image, image, shift, interpolator="nearest")
    assert result.array.dtype == np.uint8
    assert np.array_equal(result.array[5:10, 3:8], np.full((5, 5), 3, np.uint8))
    assert result.array[5, 8] == 0 and result.array[5, 2] == 0
    identity = resample_to(image, image)
    assert np.array_equal(identity.array, labels) and identity.array.dtype == np.float64


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda img: resample_to(img, img, interpolator="cubic"), ["cubic", "linear", "nearest"]),
        (lambda img: resample_to(img, img, sitk.TranslationTransform(3)), ["3D transform"]),
        (lambda img: resample_to(img, img, transform="identity"), ["transform"]),
        (lambda img: resample_to(img.array, img), ["reference", "LoadedImage"]),
    ],
)
def test_resample_to_bad_inputs(call, words):
    image = LoadedImage.from_array(np.zeros((8, 8)))
    with pytest.raises(InputError) as info:
        call(image)
    for word in words:
        assert word in str(info.value)


# --------------------------------------------------------------------------- intensities


@pytest.mark.parametrize("preset", sorted(CT_WINDOWS))
def test_ct_window_edges_map_to_0_and_1(preset):
    level, width = CT_WINDOWS[preset]
    hu = np.array([[level - width / 2, level, level + width / 2], [-3000.0, level + width / 4, 5000.0]])
    result = window_ct(hu, preset)
    assert np.allclose(result, [[0.0, 0.5, 1.0], [0.0, 0.75, 1.0]])


def test_ct_window_brain_values_and_pair():
    hu = np.array([[-1000, 0, 20], [40, 80, 1200]], dtype=np.int16)
    expected = np.array([[0.0, 0.0, 0.25], [0.5, 1.0, 1.0]])  # brain: 0 HU -> 0, 80 HU -> 1
    assert np.allclose(window_ct(hu), expected)
    assert np.allclose(window_ct(hu, (40, 80)), expected)
    assert CT_WINDOWS["brain"] == (40.0, 80.0) and CT_WINDOWS["bone"] == (600.0, 2800.0)
    assert window_ct(hu).dtype == np.float64
    assert window_ct(hu.astype(np.float32)).dtype == np.float32


def test_ct_window_keeps_geometry():
    volume = LoadedImage.from_array(
        np.full((3, 4, 5), 40, np.int16), spacing=(0.5, 0.5, 2.0), origin=(1, 2, 3)
    )
    result = window_ct(volume, "brain")
    assert_same_geometry(result, volume)
    assert np.allclose(result.array, 0.5) and np.all(volume.array == 40)


def test_percentile_normalise_hand_checked():
    ramp = np.arange(101.0).reshape(1, 101)  # percentile p of 0..100 is p itself
    result = percentile_normalise(ramp, low=10.0, high=90.0)
    assert result[0, 10] == 0.0 and result[0, 90] == 1.0
    assert result[0, 30] == pytest.approx(0.25) and result[0, 50] == pytest.approx(0.5)
    assert result[0, 0] == 0.0 and result[0, 100] == 1.0  # clipped
    default = percentile_normalise(ramp)  # 1st and 99th percentiles: 1 and 99
    assert default[0, 50] == pytest.approx(49.0 / 98.0)


def test_percentile_normalise_mask():
    image = np.zeros((2, 101))
    image[1] = np.arange(101.0)
    mask = np.zeros_like(image, dtype=bool)
    mask[1] = True
    result = percentile_normalise(image, 10.0, 90.0, mask=mask)
    # Percentiles of the masked row only (10 and 90); the unmasked row is mapped too.
    assert result[1, 50] == pytest.approx(0.5)
    assert np.all(result[0] == 0.0)
    assert percentile_normalise(image, 10.0, 90.0)[1, 50] != pytest.approx(0.5)


def test_percentile_normalise_degenerate_images():
    constant = np.full((5, 5), 42.0)
    assert np.array_equal(percentile_normalise(constant), np.zeros((5, 5)))
    sparse = np.zeros((20, 20))  # 1st and 99th percentiles are both 0: fall back on min..max
    sparse[3, 4] = 50.0
    sparse[7, 8] = 100.0
    result = percentile_normalise(sparse)
    assert result[7, 8] == 1.0 and result[3, 4] == 0.5 and result[0, 0] == 0.0


def test_standardise_dispatch():
    rng = np.random.default_rng(3)
    ct = rng.integers(-1000, 2000, (16, 16)).astype(np.int16)
    assert np.array_equal(standardise(ct, "CT"), window_ct(ct, "brain"))
    assert np.array_equal(standardise(ct, "ct", preset="bone"), window_ct(ct, "bone"))
    assert np.array_equal(standardise(ct, "CT", preset="percentile"), percentile_normalise(ct))
    mri = rng.gamma(2.0, 100.0, (16, 16))
    for modality in ("MRI", "MR", "PET", "pt", "SPECT", "NM"):
        assert np.array_equal(standardise(mri, modality), percentile_normalise(mri))
    assert np.array_equal(standardise(mri, "PET", low=5, high=95), percentile_normalise(mri, 5, 95))
    png_ct = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    assert np.array_equal(standardise(png_ct, "CT", preset="percentile"), percentile_normalise(png_ct))


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: standardise(np.zeros((4, 4)), "ultrasound"), ["ultrasound", "CT", "MRI", "PET", "SPECT"]),
        (lambda: standardise(np.zeros((4, 4)), "CT", preset="liver"), ["liver", "brain", "bone", "percentile"]),
        (lambda: standardise(np.zeros((4, 4)), "MRI", preset="brain"), ["CT only"]),
        (lambda: standardise(np.zeros((4, 4), np.uint8), "CT"), ["Hounsfield", "percentile"]),
        (lambda: window_ct(np.zeros((4, 4)), "liver"), ["liver", "brain"]),
        (lambda: window_ct(np.zeros((4, 4)), (40, 0)), ["width"]),
        (lambda: window_ct(np.zeros((4, 4)), (40, 80, 1)), ["level, width"]),
        (lambda: window_ct(np.array([[np.inf]]), "brain"), ["NaN"]),
        (lambda: window_ct(np.zeros(4), "brain"), ["dimensions"]),
        (lambda: percentile_normalise(np.zeros((4, 4)), 50, 50), ["low", "high"]),
        (lambda: percentile_normalise(np.zeros((4, 4)), -1, 50), ["low"]),
        (lambda: percentile_normalise(np.zeros((4, 4)), mask=np.zeros((4, 4))), ["mask", "no voxel"]),
        (lambda: percentile_normalise(np.zeros((4, 4)), mask=np.ones((4, 5))), ["mask", "shape"]),
        (lambda: percentile_normalise(np.array([[1.0, np.nan]])), ["NaN"]),
    ],
)
def test_intensity_bad_inputs(call, words):
    with pytest.raises(InputError) as info:
        call()
    for word in words:
        assert word in str(info.value)


# --------------------------------------------------------------------------- colour


def random_rgb(shape=(17, 23)) -> np.ndarray:
    return RNG.integers(0, 256, shape + (3,)).astype(np.uint8)


def test_ycbcr_round_trip_uint8_and_unit_floats():
    rgb = random_rgb()
    y, cb, cr = rgb_to_ycbcr(rgb)
    assert np.max(np.abs(ycbcr_to_rgb(y, cb, cr) - rgb)) < 1e-6
    unit = rgb / 255.0
    back = ycbcr_to_rgb(*rgb_to_ycbcr(unit, scale=1.0), scale=1.0)
    assert np.max(np.abs(back - unit)) < 1e-6


def test_ycbcr_luma_is_validation_luminance():
    rgb = random_rgb()
    y, _, _ = rgb_to_ycbcr(rgb)
    assert np.array_equal(y, luminance(rgb))
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    assert np.array_equal(rgb_to_ycbcr(rgba)[0], luminance(rgb))  # alpha ignored


def test_ycbcr_is_full_range_jpeg():
    white = np.full((1, 1, 3), 255, np.uint8)
    assert np.allclose(np.ravel(rgb_to_ycbcr(white)), [255.0, 128.0, 128.0])
    red = np.array([[[255, 0, 0]]], np.uint8)
    assert np.allclose(np.ravel(rgb_to_ycbcr(red)), [76.245, 84.972, 255.5], atol=1e-3)
    # Same convention as Pillow's (JFIF) YCbCr, which rounds to integers.
    rgb = random_rgb()
    pillow = np.asarray(Image.fromarray(rgb, "RGB").convert("YCbCr"), dtype=np.float64)
    ours = np.stack(rgb_to_ycbcr(rgb), axis=-1)
    assert np.max(np.abs(np.clip(ours, 0, 255) - pillow)) <= 1.0
    # Converting commutes with rescaling to [0, 1].
    assert np.allclose(np.stack(rgb_to_ycbcr(rgb / 255.0, scale=1.0)), np.stack(rgb_to_ycbcr(rgb)) / 255.0)


def test_split_and_merge_luminance_colour():
    rgb = random_rgb()
    before = rgb.copy()
    y, chroma = split_luminance(rgb)
    assert isinstance(chroma, Chroma)
    assert np.allclose(y * 255.0, luminance(rgb), atol=1e-9)
    assert np.max(np.abs(merge_luminance(y, chroma) - rgb / 255.0)) < 1e-6
    assert np.array_equal(rgb, before)
    # A fused Y brighter than the colour allows is clipped into the RGB gamut.
    bright = merge_luminance(np.ones_like(y), chroma)
    assert bright.shape == rgb.shape and bright.min() >= 0.0 and bright.max() <= 1.0
    # Float data on 0..255 needs its scale said out loud.
    with pytest.raises(InputError, match="scale"):
        split_luminance(rgb.astype(np.float64))
    y255, _ = split_luminance(rgb.astype(np.float64), scale=255.0)
    assert np.allclose(y255, y)


def test_split_and_merge_luminance_grey():
    grey = np.random.default_rng(4).normal(500.0, 100.0, (12, 12))
    y, chroma = split_luminance(grey)
    assert chroma is None and np.array_equal(y, grey) and not np.shares_memory(y, grey)
    assert np.array_equal(merge_luminance(y, None), grey)
    volume = LoadedImage.from_array(np.zeros((4, 5, 3)))  # a volume, not RGB, because it says so
    y3, chroma3 = split_luminance(volume)
    assert chroma3 is None and y3.shape == (4, 5, 3)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: rgb_to_ycbcr(np.zeros((4, 4))), ["RGB", "shape"]),
        (lambda: rgb_to_ycbcr(np.full((2, 2, 3), np.nan)), ["NaN"]),
        (lambda: rgb_to_ycbcr(np.full((2, 2, 3), 300.0)), ["scale"]),
        (lambda: rgb_to_ycbcr(np.zeros((2, 2, 3)), scale=0), ["scale"]),
        (lambda: ycbcr_to_rgb(np.zeros((2, 2)), np.zeros((2, 3)), np.zeros((2, 2))), ["Cb", "shape"]),
        (lambda: merge_luminance(np.zeros((3, 3)), Chroma(np.zeros((2, 2)), np.zeros((2, 2)))), ["shape"]),
        (lambda: merge_luminance(np.zeros((3, 3)), "colour"), ["chroma"]),
        (lambda: split_luminance(np.zeros(5)), ["dimensions"]),
    ],
)
def test_colour_bad_inputs(call, words):
    with pytest.raises(InputError) as info:
        call()
    for word in words:
        assert word in str(info.value)
