"""Tests of the classical fusion baselines in :mod:`MedFusionLib.baselines`."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from MedFusionLib.baselines import (
    BASELINES,
    AverageFusion,
    GuidedFilterFusion,
    LaplacianPyramidFusion,
    MaximumFusion,
    WaveletFusion,
    get_baseline,
    guided_filter,
    laplacian_pyramid,
    reconstruct_laplacian_pyramid,
)
from MedFusionLib.baselines.pyramid import max_pyramid_levels
from MedFusionLib.errors import InputError
from MedFusionLib.validation import luminance

NAMES = ("average", "maximum", "laplacian", "guided_filter", "wavelet")
#: Largest allowed |output - input| when K identical [0, 1] images are fused.
IDENTITY_TOL = {
    "average": 1e-12,
    "maximum": 0.0,
    "laplacian": 1e-10,
    "guided_filter": 1e-6,
    "wavelet": 1e-8,
}
#: Methods whose result must not depend on the order of the inputs.
ORDER_FREE = ("average", "maximum", "laplacian", "wavelet", "guided_filter")
#: Multi-scale methods that must keep sharp detail better than averaging.
MULTISCALE = ("laplacian", "guided_filter", "wavelet")


def _image(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A [0, 1] test image with smooth structure, edges and noise (distinct per seed)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    blocks = ((rows // 5 + cols // 7 + seed) % 2).astype(np.float64)
    smooth = ndimage.gaussian_filter(rng.random(shape), 2.0)
    image = 0.4 * blocks + 0.4 * smooth + 0.2 * rng.random(shape)
    return (image - image.min()) / max(np.ptp(image), 1e-12)


def _group(k: int, shape: tuple[int, int] = (37, 53)) -> list[np.ndarray]:
    return [_image(shape, seed) for seed in range(k)]


@pytest.fixture(params=NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


# --- registry and parameters -------------------------------------------------


def test_registry_maps_names_to_classes() -> None:
    assert set(BASELINES) == set(NAMES)
    for key, cls in BASELINES.items():
        assert cls.name == key
        assert isinstance(get_baseline(key), cls)
    assert isinstance(get_baseline(" Laplacian "), LaplacianPyramidFusion)


def test_get_baseline_unknown_name_lists_valid_names() -> None:
    with pytest.raises(InputError) as info:
        get_baseline("pca")
    for key in NAMES:
        assert key in str(info.value)


def test_get_baseline_passes_and_checks_parameters() -> None:
    assert get_baseline("laplacian", levels=2).levels == 2
    assert get_baseline("wavelet", wavelet="haar", levels=1).wavelet.name == "haar"
    with pytest.raises(InputError, match="levels"):
        get_baseline("average", levels=3)
    with pytest.raises(InputError, match="accepted: levels"):
        get_baseline("laplacian", level=3)


@pytest.mark.parametrize(
    "cls, params",
    [
        (LaplacianPyramidFusion, {"levels": -1}),
        (LaplacianPyramidFusion, {"levels": 2.5}),
        (LaplacianPyramidFusion, {"levels": True}),
        (WaveletFusion, {"wavelet": "no-such-wavelet"}),
        (WaveletFusion, {"wavelet": "morl"}),  # continuous, not usable for a DWT
        (WaveletFusion, {"wavelet": 2}),
        (WaveletFusion, {"levels": -2}),
        (WaveletFusion, {"mode": "wrap-around"}),
        (GuidedFilterFusion, {"eps1": 0}),
        (GuidedFilterFusion, {"eps2": -1e-6}),
        (GuidedFilterFusion, {"r1": -1}),
        (GuidedFilterFusion, {"r2": 3.5}),
        (GuidedFilterFusion, {"base_size": 30}),
        (GuidedFilterFusion, {"saliency_sigma": float("nan")}),
    ],
)
def test_invalid_parameters_raise_input_error(cls: type, params: dict) -> None:
    key = next(iter(params))
    with pytest.raises(InputError, match=key):
        cls(**params)


def test_input_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        LaplacianPyramidFusion(levels=-1)


# --- the common contract -------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("shape", [(64, 64), (37, 53), (53, 37)])
def test_shape_and_dtype(name: str, k: int, shape: tuple[int, int]) -> None:
    images = _group(k, shape)
    fused = get_baseline(name).fuse(images)
    assert fused.shape == shape
    assert fused.dtype == np.float64
    assert np.all(np.isfinite(fused))
    assert not any(np.shares_memory(fused, image) for image in images)
    # Distinct inputs give a result that is not simply one of them (the method did something).
    assert all(not np.allclose(fused, image) for image in images) or name == "maximum"


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (3, 2), (1, 7), (7, 1), (5, 5)])
def test_tiny_images(name: str, shape: tuple[int, int]) -> None:
    images = _group(3, shape)
    fused = get_baseline(name).fuse(images)
    assert fused.shape == shape
    assert np.all(np.isfinite(fused))
    same = get_baseline(name).fuse([images[0]] * 3)
    np.testing.assert_allclose(same, images[0], rtol=0, atol=IDENTITY_TOL[name] + 1e-12)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_identical_inputs_give_the_input(name: str, k: int) -> None:
    image = _image((37, 53), seed=7)
    fused = get_baseline(name).fuse([image.copy() for _ in range(k)])
    np.testing.assert_allclose(fused, image, rtol=0, atol=IDENTITY_TOL[name])


def test_inputs_are_not_modified(name: str) -> None:
    rng = np.random.default_rng(3)
    images = [
        _image((37, 53), 0),
        (_image((37, 53), 1) * 255).astype(np.uint8),
        (_image((37, 53), 2) * 3000 - 1000).astype(np.int16),
        _image((37, 53), 3).astype(np.float32),
        rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
    ]
    copies = [image.copy() for image in images]
    get_baseline(name).fuse(images)
    for image, copy in zip(images, copies):
        assert image.dtype == copy.dtype
        assert image.tobytes() == copy.tobytes()


@pytest.mark.parametrize(
    "dtype, low, high",
    [
        (np.uint8, 0, 255),
        (np.uint16, 0, 4000),
        (np.int16, -1024, 3071),  # CT in Hounsfield units
        (np.float32, -0.5, 2.5),
    ],
)
def test_dtypes_keep_intensity_units(name: str, dtype: type, low: float, high: float) -> None:
    scaled = [(low + (high - low) * image).astype(dtype) for image in _group(2)]
    as_float = [image.astype(np.float64) for image in scaled]
    method = get_baseline(name)
    fused = method.fuse(scaled)
    np.testing.assert_allclose(fused, method.fuse(as_float), rtol=0, atol=1e-9 * (high - low))
    # Same units as the inputs: identical inputs come back unchanged, negatives included.
    same = method.fuse([scaled[0], scaled[0]])
    tolerance = max(IDENTITY_TOL[name], 1e-12) * (high - low)
    np.testing.assert_allclose(same, as_float[0], rtol=0, atol=tolerance)
    if low < 0:
        assert same.min() < 0
    # ... and distinct inputs fuse to a mean brightness near theirs, not near a [0, 1] scale.
    expected_mean = np.max(as_float, axis=0).mean() if name == "maximum" else np.mean(as_float)
    assert abs(fused.mean() - expected_mean) < 0.05 * (high - low)


def test_rgb_is_fused_on_luminance(name: str) -> None:
    rng = np.random.default_rng(5)
    colour = [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8) for _ in range(2)]
    grey = [luminance(image) for image in colour]
    method = get_baseline(name)
    np.testing.assert_allclose(method.fuse(colour), method.fuse(grey), rtol=0, atol=1e-9)
    # A colour image fused with a grey one works too.
    assert method.fuse([colour[0], grey[1]]).shape == (37, 53)


def test_call_is_fuse(name: str) -> None:
    images = _group(2)
    method = get_baseline(name)
    np.testing.assert_array_equal(method(images), method.fuse(images))


@pytest.mark.parametrize("order_free", ORDER_FREE)
def test_result_does_not_depend_on_input_order(order_free: str) -> None:
    images = _group(3)
    method = get_baseline(order_free)
    reference = method.fuse(images)
    for permutation in itertools.permutations(range(3)):
        fused = method.fuse([images[i] for i in permutation])
        np.testing.assert_allclose(fused, reference, rtol=0, atol=1e-12)


def test_invalid_inputs_raise_input_error(name: str) -> None:
    method = get_baseline(name)
    image = _image((16, 16), 0)
    with pytest.raises(InputError, match="at least 2"):
        method.fuse([image])
    with pytest.raises(InputError, match="at least 2"):
        method.fuse([])
    with pytest.raises(InputError, match="shape"):
        method.fuse([image, image[:, :15]])
    broken = image.copy()
    broken[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        method.fuse([image, broken])
    with pytest.raises(InputError):
        method.fuse(np.stack([image, image]))  # an array, not a sequence of images


# --- method-specific behaviour -------------------------------------------------


def test_average_and_maximum_hand_values() -> None:
    a = np.array([[0.0, 2.0], [4.0, -6.0]])
    b = np.array([[2, 2], [0, 10]], dtype=np.int16)
    c = np.array([[1.0, 5.0], [-1.0, -4.0]])
    np.testing.assert_allclose(AverageFusion().fuse([a, b, c]), [[1.0, 3.0], [1.0, 0.0]], atol=1e-15)
    np.testing.assert_array_equal(MaximumFusion().fuse([a, b, c]), [[2.0, 5.0], [4.0, 10.0]])
    np.testing.assert_array_equal(MaximumFusion().fuse([[[-5.0, 1.0]], [[-3.0, 0.0]]]), [[-3.0, 1.0]])


def _multifocus_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An all-sharp scene and two versions each blurred on one half (multi-focus pair)."""
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[:64, :96]
    scene = 100.0 * ((rows // 6 + cols // 6) % 2) + 50.0 * ndimage.gaussian_filter(rng.random((64, 96)), 2)
    blurred = ndimage.gaussian_filter(scene, 3)
    left_sharp, right_sharp = scene.copy(), scene.copy()
    left_sharp[:, 48:] = blurred[:, 48:]
    right_sharp[:, :48] = blurred[:, :48]
    return scene, left_sharp, right_sharp


def _mean_gradient(image: np.ndarray) -> float:
    grad_rows, grad_cols = np.gradient(image)
    return float(np.hypot(grad_rows, grad_cols).mean())


@pytest.mark.parametrize("multiscale", MULTISCALE)
def test_multiscale_keeps_sharp_edges_better_than_average(multiscale: str) -> None:
    scene, _, _ = _multifocus_scene()
    smooth = ndimage.gaussian_filter(np.random.default_rng(2).random(scene.shape) * 100, 4)
    average = AverageFusion().fuse([scene, smooth])
    fused = get_baseline(multiscale).fuse([scene, smooth])
    # Averaging halves the edges of the sharp image; the multi-scale rules keep them.
    assert _mean_gradient(fused) > 1.5 * _mean_gradient(average)
    assert _mean_gradient(fused) > 0.9 * _mean_gradient(scene)


@pytest.mark.parametrize("multiscale", MULTISCALE)
def test_multiscale_recovers_multifocus_scene(multiscale: str) -> None:
    scene, left_sharp, right_sharp = _multifocus_scene()

    def rmse(image: np.ndarray) -> float:
        return float(np.sqrt(np.mean((image - scene) ** 2)))

    average = AverageFusion().fuse([left_sharp, right_sharp])
    fused = get_baseline(multiscale).fuse([left_sharp, right_sharp])
    assert rmse(fused) < 0.5 * rmse(average)


# --- Laplacian pyramid -----------------------------------------------------------


def test_max_pyramid_levels() -> None:
    assert max_pyramid_levels((1, 1)) == 0
    assert max_pyramid_levels((1, 9)) == 0
    assert max_pyramid_levels((2, 3)) == 1
    assert max_pyramid_levels((37, 53)) == 5
    assert max_pyramid_levels((256, 256)) == 8


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (37, 53), (64, 64), (33, 17)])
@pytest.mark.parametrize("levels", [0, 1, 4, 20])
def test_pyramid_reconstruction_is_exact(shape: tuple[int, int], levels: int) -> None:
    image = _image(shape, 4) * 1000 - 300
    pyramid = laplacian_pyramid(image, levels)
    assert len(pyramid) == min(levels, max_pyramid_levels(shape)) + 1
    for finer, coarser in zip(pyramid, pyramid[1:]):
        assert coarser.shape == tuple((side + 1) // 2 for side in finer.shape)
    np.testing.assert_allclose(reconstruct_laplacian_pyramid(pyramid), image, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 3), (8, 8), (37, 53), (33, 17)])
def test_pyramid_of_constant_has_no_detail(shape: tuple[int, int]) -> None:
    # Catches EXPAND border handling that does not keep a constant constant.
    pyramid = laplacian_pyramid(np.full(shape, 7.5), 10)
    for detail in pyramid[:-1]:
        np.testing.assert_allclose(detail, 0.0, atol=1e-12)
    np.testing.assert_allclose(pyramid[-1], 7.5, atol=1e-12)


def test_laplacian_pyramid_does_not_modify_input() -> None:
    image = _image((37, 53), 0)
    copy = image.copy()
    laplacian_pyramid(image, 3)
    assert image.tobytes() == copy.tobytes()


def test_laplacian_rule_is_max_abs_details_and_mean_base() -> None:
    image = _image((37, 53), 0) - 0.5
    zeros = np.zeros_like(image)
    pyramid = laplacian_pyramid(image, 3)
    # Against a zero image every non-zero detail wins and the base is halved.
    expected = reconstruct_laplacian_pyramid(pyramid[:-1] + [pyramid[-1] / 2])
    fused = LaplacianPyramidFusion(levels=3).fuse([image, zeros])
    np.testing.assert_allclose(fused, expected, rtol=0, atol=1e-12)


def test_laplacian_levels_zero_and_one_pixel_images_average() -> None:
    images = _group(3)
    np.testing.assert_allclose(
        LaplacianPyramidFusion(levels=0).fuse(images), AverageFusion().fuse(images), atol=1e-15
    )
    column = [image[:, :1] for image in images]
    np.testing.assert_allclose(
        LaplacianPyramidFusion().fuse(column), AverageFusion().fuse(column), atol=1e-15
    )
    assert not np.allclose(LaplacianPyramidFusion(levels=1).fuse(images), AverageFusion().fuse(images))


# --- wavelet -------------------------------------------------------------------------


def test_wavelet_rule_is_max_abs_details_and_mean_approximation() -> None:
    import pywt

    image = _image((37, 53), 0) - 0.5
    coefficients = pywt.wavedec2(image, "db2", mode="symmetric", level=2)
    coefficients[0] = coefficients[0] / 2
    expected = pywt.waverec2(coefficients, "db2", mode="symmetric")[:37, :53]
    fused = WaveletFusion(levels=2).fuse([np.zeros_like(image), image])
    np.testing.assert_allclose(fused, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("wavelet, mode", [("haar", "symmetric"), ("db2", "periodization"), ("sym4", "zero")])
def test_wavelet_options_keep_identity(wavelet: str, mode: str) -> None:
    image = _image((37, 53), 6)
    fused = WaveletFusion(wavelet=wavelet, levels=10, mode=mode).fuse([image, image])
    np.testing.assert_allclose(fused, image, rtol=0, atol=1e-8)


# --- guided filter ----------------------------------------------------------------


@pytest.mark.parametrize("radius, eps", [(2, 1e-6), (7, 0.3), (45, 1e-2)])
def test_guided_filter_of_constant_is_constant(radius: int, eps: float) -> None:
    guide = _image((37, 53), 1)
    output = guided_filter(guide, np.full(guide.shape, 0.25), radius, eps)
    np.testing.assert_allclose(output, 0.25, rtol=0, atol=1e-9)


def test_guided_filter_self_guided_preserves_edges() -> None:
    step = np.zeros((40, 40))
    step[:, 20:] = 1.0
    noisy = step + 0.01 * np.random.default_rng(0).standard_normal(step.shape)
    output = guided_filter(noisy, noisy, radius=4, eps=1e-8)
    np.testing.assert_allclose(output, noisy, rtol=0, atol=1e-3)
    # A large eps turns it into box-like smoothing, which blurs the edge.
    smoothed = guided_filter(noisy, noisy, radius=4, eps=10.0)
    assert np.abs(smoothed - noisy).max() > 0.1


def test_guided_filter_follows_the_guide_edge() -> None:
    guide = np.zeros((30, 30))
    guide[:, 15:] = 1.0
    src = guide + 0.2 * np.random.default_rng(1).standard_normal(guide.shape)
    output = guided_filter(guide, src, radius=3, eps=1e-4)
    # Noise is smoothed within each flat side while the step stays sharp.
    assert np.abs(output - guide).std() < 0.5 * np.abs(src - guide).std()
    assert output[:, 16:].mean() - output[:, :14].mean() > 0.9


def test_guided_filter_validates_arguments() -> None:
    image = _image((10, 10), 0)
    with pytest.raises(InputError, match="shape"):
        guided_filter(image, image[:9], 2, 1e-3)
    with pytest.raises(InputError, match="radius"):
        guided_filter(image, image, -1, 1e-3)
    with pytest.raises(InputError, match="eps"):
        guided_filter(image, image, 2, 0.0)


@pytest.mark.parametrize("shape, fitting_radius", [((5, 5), 2), ((3, 8), 3), ((1, 1), 0)])
def test_guided_filter_radius_is_clipped_for_small_images(
    shape: tuple[int, int], fitting_radius: int
) -> None:
    # A radius beyond the image acts like the largest window that fits along each axis.
    guide, src = _image(shape, 0), _image(shape, 1)
    for guide_image in (guide, np.ones(shape)):
        clipped = guided_filter(guide_image, src, 45, 0.3)
        np.testing.assert_allclose(clipped, guided_filter(guide_image, src, fitting_radius, 0.3), atol=1e-14)
    np.testing.assert_allclose(guided_filter(guide, np.ones(shape), 45, 0.3), 1.0, atol=1e-12)
