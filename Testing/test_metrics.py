"""Tests of MedFusionLib.metrics: hand-computed values, identities, invariances, library agreement, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.measure import shannon_entropy
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from MedFusionLib.errors import InputError
from MedFusionLib.metrics import (
    METRICS,
    average_gradient,
    conditional_entropy,
    cross_entropy,
    edge_dependent_quality_index,
    energy_of_gradient,
    entropy,
    evaluate,
    evaluate_volume,
    feature_mutual_information,
    format_table,
    fusion_mutual_information,
    gradient_based_quality_index,
    gradient_based_quality_index_liu,
    mean_intensity,
    metric_names,
    metrics_table,
    mutual_information,
    peak_signal_to_noise_ratio,
    relative_error,
    root_mean_squared_error,
    spatial_frequency,
    ssim_to_sources,
    standard_deviation,
    structural_similarity,
    table_to_csv,
    to_score_scale,
    universal_quality_index,
    visual_information_fidelity,
    weighted_quality_index,
)
from MedFusionLib.metrics.qabf import QABF_CONSTANTS, QABF_LIU_CONSTANTS

RNG = np.random.default_rng(20261121)


def phantom(shape=(64, 72), seed=0) -> np.ndarray:
    """A uint8 image with edges, texture and a smooth part."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    image = 60 + 80 * ((x // 9 + y // 11) % 2) + 40 * np.sin(x / 7.0 + seed) + rng.normal(0, 6, shape)
    return np.clip(image, 0, 255).astype(np.uint8)


A = phantom(seed=1)
B = phantom(seed=2)
F = ((A.astype(float) + B) / 2).astype(np.uint8)
T = np.maximum(A, B)

# The top value of VIFB's Q^AB/F: equal strengths give G = g_F (large), so the strength sigmoid
# reaches gamma_g; equal orientations give A = 1.
c = QABF_CONSTANTS
QABF_MAX = c["gamma_g"] * c["gamma_a"] / (1 + math.exp(c["k_a"] * (1 - c["d_a"])))


# ------------------------------------------------------------------ intensity scale


def test_scale_rules():
    u8 = np.array([[0, 10], [200, 255]], dtype=np.uint8)
    assert np.array_equal(to_score_scale([u8], ["x"])[0], u8.astype(float))
    unit = np.array([[0.0, 0.5], [0.25, 1.0]])
    assert np.allclose(to_score_scale([unit], ["x"])[0], unit * 255)
    grey = np.array([[0.0, 3.0], [100.0, 255.0]])
    assert np.array_equal(to_score_scale([grey], ["x"])[0], grey)
    ct = np.array([[-1000, 0], [500, 3000]], dtype=np.int16)
    scaled = to_score_scale([ct], ["x"])[0]
    assert scaled.min() == 0 and scaled.max() == 255 and np.isclose(scaled[0, 1], 1000 / 4000 * 255)
    assert np.array_equal(to_score_scale([np.array([[True, False]])], ["x"])[0], [[255.0, 0.0]])
    ranged = to_score_scale([ct], ["x"], data_range=(-1000, 1000))[0]
    assert ranged[0, 0] == 0 and ranged[1, 1] == 255 and np.isclose(ranged[0, 1], 127.5)
    # joint: a [0, 1] image next to a [0, 255] one keeps the common scale
    a, b = to_score_scale([np.array([[0.0, 1.0]]), np.array([[0.0, 200.0]])], ["a", "b"])
    assert a.max() == 1.0 and b.max() == 200.0
    # constant value outside [0, 255] maps to 0 rather than dividing by zero
    assert np.array_equal(to_score_scale([np.full((2, 2), -1000.0)], ["x"])[0], np.zeros((2, 2)))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([[np.nan, 1.0], [0.0, 1.0]]), "NaN"),
        (np.array([[np.inf, 1.0], [0.0, 1.0]]), "infinite"),
        (np.zeros((0, 4)), "empty"),
        (np.zeros((2, 2, 2, 2)), "shape"),
        (np.zeros((4, 4, 5)), "shape"),
        (np.array([["a", "b"]]), "numeric"),
    ],
)
def test_bad_images_raise_clear_errors(bad, message):
    with pytest.raises(InputError, match=message):
        evaluate(bad, [A[:2, :2], B[:2, :2]]) if bad.ndim == 2 and bad.size and bad.dtype.kind == "f" else evaluate(bad, [A, B])


def test_shape_mismatch_and_source_count_errors():
    with pytest.raises(InputError, match="source B"):
        evaluate(F, [A, B[:10]])
    with pytest.raises(InputError, match="at least 2"):
        evaluate(F, [A])
    with pytest.raises(InputError, match="list or tuple"):
        evaluate(F, A)
    with pytest.raises(InputError, match="target image"):
        evaluate(F, [A, B], target=T[:5])
    with pytest.raises(InputError, match="data_range"):
        entropy(A, data_range=(5, 5))


def test_evaluate_metric_selection_errors():
    with pytest.raises(InputError, match="unknown"):
        evaluate(F, [A, B], metrics=["EN", "BOGUS"])
    with pytest.raises(InputError, match="need a target"):
        evaluate(F, [A, B], metrics=["RMSE"])


# ------------------------------------------------------------------ entropy, statistics


def test_entropy_hand_values_and_skimage():
    assert entropy(np.full((5, 7), 42, np.uint8)) == 0.0
    half = np.zeros((4, 4), np.uint8)
    half[:2] = 255
    assert entropy(half) == pytest.approx(1.0)
    all_levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert entropy(all_levels) == pytest.approx(8.0)
    noisy = RNG.integers(0, 256, (50, 61)).astype(np.uint8)
    assert entropy(noisy) == pytest.approx(shannon_entropy(noisy, base=2))


def test_statistics_hand_values():
    image = np.array([[0, 10], [20, 30]], dtype=np.uint8)
    assert mean_intensity(image) == pytest.approx(15.0)
    assert standard_deviation(image) == pytest.approx(np.sqrt(125.0))  # population, ddof = 0
    # VIFB: RF^2 = (10^2 + 10^2) / 4 and CF^2 = (20^2 + 20^2) / 4, sums over M x N pixels.
    assert spatial_frequency(image) == pytest.approx(np.sqrt((2 * 10**2 + 2 * 20**2) / 4))
    # VIFB: every pixel's (one-sided here) gradient, summed over 4 pixels, over (2-1)(2-1).
    assert average_gradient(image) == pytest.approx(4 * np.sqrt((10**2 + 20**2) / 2))
    assert energy_of_gradient(image) == pytest.approx(10**2 + 20**2)
    checker = (np.indices((6, 6)).sum(axis=0) % 2 * 255).astype(np.uint8)
    assert spatial_frequency(checker) == pytest.approx(255 * np.sqrt(2 * 5 / 6))  # 30 pairs per axis / 36


def test_spatial_frequency_of_a_ramp_divides_by_the_pixels_not_the_pairs():
    for width in (5, 40, 200):
        ramp = np.tile(np.arange(width, dtype=np.uint8) * 1, (7, 1))
        assert spatial_frequency(ramp) == pytest.approx(np.sqrt((width - 1) / width))  # VIFB's M x N
        assert energy_of_gradient(ramp) == pytest.approx(1.0)


def test_one_pixel_and_one_row_images():
    pixel = np.array([[7]], dtype=np.uint8)
    for function in (spatial_frequency, average_gradient, energy_of_gradient, entropy, standard_deviation):
        assert function(pixel) == 0.0
    row = np.array([[0, 10, 20]], dtype=np.uint8)
    assert spatial_frequency(row) == pytest.approx(10.0 * np.sqrt(2 / 3))
    assert average_gradient(row) == 0.0


# ------------------------------------------------------------------ information


def test_mutual_information_identities():
    assert mutual_information(A, B) == pytest.approx(mutual_information(B, A))
    assert mutual_information(A, A) == pytest.approx(entropy(A) * np.log(2))
    assert mutual_information(A, A, base=2) == pytest.approx(entropy(A))
    assert mutual_information(A, np.full_like(A, 9)) == 0.0
    expected = mutual_information(A, F) + mutual_information(B, F)
    assert fusion_mutual_information(F, [A, B]) == pytest.approx(expected)
    assert fusion_mutual_information(F, [A, B, A]) == pytest.approx(expected + mutual_information(A, F))


def test_histogram_metrics_do_not_depend_on_tiling_or_translation():
    tiled = [np.tile(x, (2, 3)) for x in (F, A, B)]
    assert entropy(tiled[0]) == pytest.approx(entropy(F))
    assert fusion_mutual_information(tiled[0], tiled[1:]) == pytest.approx(fusion_mutual_information(F, [A, B]))
    patch = RNG.integers(0, 256, (10, 12)).astype(np.uint8)
    canvas_1 = np.zeros((40, 40), np.uint8)
    canvas_2 = np.zeros((40, 40), np.uint8)
    canvas_1[5:15, 6:18] = patch
    canvas_2[22:32, 20:32] = patch
    for function in (entropy, spatial_frequency, average_gradient, energy_of_gradient, standard_deviation):
        assert function(canvas_1) == pytest.approx(function(canvas_2))


def test_cross_entropy_and_conditional_entropy():
    assert cross_entropy(T, T) == 0.0
    assert cross_entropy(F, T) > 0.0
    shuffled = RNG.permutation(F.ravel()).reshape(F.shape)
    assert cross_entropy(shuffled, T) == pytest.approx(cross_entropy(F, T))  # histogram only
    assert conditional_entropy(T, T) == 0.0
    assert conditional_entropy(255 - T, T) == pytest.approx(0.0, abs=1e-12)  # a bijection explains T
    assert conditional_entropy(np.full_like(T, 3), T) == pytest.approx(entropy(T))
    assert 0.0 < conditional_entropy(F, T) <= entropy(T)


# ------------------------------------------------------------------ full-reference


def test_rmse_psnr_rel_hand_values_and_skimage():
    target = np.full((8, 9), 100, np.uint8)
    off_by_one = target + 1
    assert root_mean_squared_error(off_by_one, target) == pytest.approx(1.0)
    assert peak_signal_to_noise_ratio(off_by_one, target) == pytest.approx(20 * np.log10(255))
    assert relative_error(off_by_one, target) == pytest.approx(0.01)
    assert peak_signal_to_noise_ratio(T, T) == math.inf
    assert root_mean_squared_error(T, T) == 0.0
    assert peak_signal_to_noise_ratio(F, T) == pytest.approx(sk_psnr(T, F, data_range=255))
    zero = np.zeros((3, 3), np.uint8)
    assert relative_error(zero, zero) == 0.0
    assert relative_error(zero + 1, zero) == math.inf


def test_ssim_agrees_with_skimage_and_handles_small_images():
    expected = sk_ssim(T.astype(float), F.astype(float), data_range=255, gaussian_weights=True,
                       sigma=1.5, use_sample_covariance=False)
    assert structural_similarity(F, T) == pytest.approx(expected)
    # float images in [0, 1] are scored on the same 0-255 scale
    assert structural_similarity(F / 255.0, T / 255.0) == pytest.approx(expected)
    assert structural_similarity(T, T) == pytest.approx(1.0)
    small = phantom((5, 9))
    assert structural_similarity(small, small) == pytest.approx(1.0)
    assert -1.0 <= structural_similarity(small, 255 - small) < 0.0
    assert ssim_to_sources(A, [A, A]) == pytest.approx(2.0)
    assert ssim_to_sources(F, [A, B]) == pytest.approx(
        sum(sk_ssim(s.astype(float), F.astype(float), data_range=255, gaussian_weights=True,
                    sigma=1.5, use_sample_covariance=False) for s in (A, B)))


# ------------------------------------------------------------------ Q0, QW, QE


def _q_index(x: np.ndarray, y: np.ndarray) -> float:
    """Wang & Bovik's Q of two windows, written out from the paper (oracle for the tests)."""
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = ((x - mx) * (y - my)).mean()
    if vx + vy == 0:
        return 1.0 if mx**2 + my**2 == 0 else 2 * mx * my / (mx**2 + my**2)
    return 4 * cov * mx * my / ((vx + vy) * (mx**2 + my**2))


def _windows(shape, size=8):
    for r in range(shape[0] - size + 1):
        for col in range(shape[1] - size + 1):
            yield slice(r, r + size), slice(col, col + size)


def test_q0_matches_the_sliding_window_definition():
    a, b, f = (x[:13, :15].astype(float) for x in (A, B, F))
    expected = np.mean([np.mean([_q_index(s[w], f[w]) for w in _windows(f.shape)]) for s in (a, b)])
    assert universal_quality_index(f, [a, b]) == pytest.approx(expected)


def _gaussian_window() -> np.ndarray:
    """MATLAB's ``fspecial('gaussian', 11, 1.5)``, written out."""
    x = np.arange(-5, 6)
    window = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5**2))
    return window / window.sum()


def _peilla_qw(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """metricPeilla.m case 2 as a plain loop over the 'valid' 11x11 windows (ssim_index.m's statistics)."""
    w = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    numerator = denominator = 0.0
    for i in range(f.shape[0] - 10):
        for j in range(f.shape[1] - 10):
            x = [img[i : i + 11, j : j + 11] for img in (a, b, f)]
            mean = [float(np.sum(w * v)) for v in x]
            var = [float(np.sum(w * v * v)) - m * m for v, m in zip(x, mean)]
            ssim = [((2 * mean[2] * mean[k] + c1) * (2 * (float(np.sum(w * x[2] * x[k])) - mean[2] * mean[k]) + c2))
                    / ((mean[2] ** 2 + mean[k] ** 2 + c1) * (var[2] + var[k] + c2)) for k in (0, 1)]
            sa, sb = var[0], var[1]
            if sa + sb == 0:
                sa = sb = 0.5
            weight = max(sa, sb)
            numerator += weight * (sa / (sa + sb) * ssim[0] + sb / (sa + sb) * ssim[1])
            denominator += weight
    return numerator / denominator


def test_qw_matches_a_plain_loop_over_liu_s_windows():
    a, b, f = (x[10:27, 5:24].astype(float) for x in (A, B, F))
    assert weighted_quality_index(f, [a, b]) == pytest.approx(_peilla_qw(a, b, f), rel=1e-10)


def test_qe_is_qw_times_qw_of_the_prewitt_edge_images():
    from scipy import ndimage

    def edges(x):
        x = x.astype(float)
        return np.hypot(ndimage.prewitt(x, axis=1, mode="constant"), ndimage.prewitt(x, axis=0, mode="constant"))

    a, b, f = (x[10:27, 5:24] for x in (A, B, F))
    expected = _peilla_qw(*(x.astype(float) for x in (a, b, f))) * _peilla_qw(edges(a), edges(b), edges(f))
    assert edge_dependent_quality_index(f, [a, b]) == pytest.approx(expected, rel=1e-10)


def test_quality_indices_identities_and_ranges():
    for function in (universal_quality_index, weighted_quality_index, edge_dependent_quality_index):
        assert function(A, [A, A]) == pytest.approx(1.0)
        assert function(F, [A, B]) == pytest.approx(function(F, [B, A]))
        assert -1.0 <= function(F, [A, B]) <= 1.0
    assert universal_quality_index(255 - A, [A, A]) < 0.0
    flat = np.full_like(A, 80)
    # A flat source has no saliency, so QW judges F only against a source that varies in every window.
    textured = np.random.default_rng(3).integers(0, 256, A.shape).astype(np.uint8)
    assert weighted_quality_index(textured, [textured, flat]) == pytest.approx(1.0)
    assert universal_quality_index(flat, [flat, flat]) == 1.0
    zero = np.zeros_like(A)
    assert universal_quality_index(zero, [zero, zero]) == 1.0
    # Smaller than one 11x11 window: one window of global statistics, not ssim_index.m's -Inf.
    assert weighted_quality_index(A[:6, :9], [A[:6, :9], A[:6, :9]]) == pytest.approx(1.0)


# ------------------------------------------------------------------ Q^AB/F


def test_qabf_identities():
    assert QABF_MAX == pytest.approx(0.9994 * 0.97592, abs=1e-5)
    assert gradient_based_quality_index(A, [A, A]) == pytest.approx(QABF_MAX)
    # A black source has no edge, not even at the zero-padded border: F = A is perfect for (A, black).
    black = np.zeros_like(A)
    assert gradient_based_quality_index(A, [A, black]) == pytest.approx(QABF_MAX)
    assert gradient_based_quality_index(np.full_like(A, 40), [A, B]) < 0.05
    assert gradient_based_quality_index(A, [black, black]) == 0.0  # no edge anywhere: 0, not VIFB's 0/0
    value = gradient_based_quality_index(F, [A, B])
    assert 0.0 < value < QABF_MAX
    assert value == pytest.approx(gradient_based_quality_index(F, [B, A]))


def test_qabf_is_translation_invariant_on_a_black_canvas():
    canvases = []
    for offset in (3, 17):
        group = []
        for x in (F[:20, :20], A[:20, :20], B[:20, :20]):
            canvas = np.zeros((50, 50), np.uint8)
            canvas[offset : offset + 20, offset + 2 : offset + 22] = x
            group.append(canvas)
        canvases.append(gradient_based_quality_index(group[0], group[1:]))
    assert canvases[0] == pytest.approx(canvases[1])


def test_qabf_hand_example_single_edge():
    # A vertical step edge in A; F keeps the edges at half contrast everywhere (the Sobel filter is
    # linear), so every pixel with weight has G = 0.5 and the same orientation (A = 1).
    a = np.zeros((9, 9))
    a[:, 5:] = 200
    f = a / 2
    q_g = c["gamma_g"] / (1 + math.exp(c["k_g"] * (0.5 - c["d_g"])))
    q_a = c["gamma_a"] / (1 + math.exp(c["k_a"] * (1 - c["d_a"])))
    assert gradient_based_quality_index(f, [a, a], data_range=(0, 255)) == pytest.approx(q_g * q_a)


def test_qabf_liu_variant_identities():
    liu = QABF_LIU_CONSTANTS
    top = 1 / (1 + math.exp(liu["k_g"] * (1 - liu["d_g"]))) / (1 + math.exp(liu["k_a"] * (1 - liu["d_a"])))
    assert gradient_based_quality_index_liu(A, [A, A]) == pytest.approx(top)  # G = 1 and A = 1 everywhere
    value = gradient_based_quality_index_liu(F, [A, B])
    assert 0.0 < value < top and value == pytest.approx(gradient_based_quality_index_liu(F, [B, A]))
    assert evaluate(F, [A, B], metrics=["QABF_LIU"]) == {"QABF_LIU": value}
    assert "QABF_LIU" not in evaluate(F, [A, B])  # a named variant: computed only when asked for


# ------------------------------------------------------------------ VIF, FMI


def test_vif_agrees_with_sewar():
    sewar = pytest.importorskip("sewar.full_ref")
    a, b, f = (x.astype(float) for x in (A, B, F))
    expected = sewar.vifp(a, f) + sewar.vifp(b, f)
    assert visual_information_fidelity(f, [a, b]) == pytest.approx(expected, rel=1e-9)


def test_vif_identities():
    assert visual_information_fidelity(A, [A, A]) == pytest.approx(2.0, abs=1e-6)
    flat = np.full_like(A, 50)
    assert visual_information_fidelity(flat, [flat, flat]) == 2.0
    assert visual_information_fidelity(A, [flat, flat]) == 0.0
    tiny = np.array([[1, 2], [3, 4]], np.uint8)
    assert visual_information_fidelity(tiny, [tiny, tiny]) == 2.0
    assert 0.0 <= visual_information_fidelity(F, [A, B]) < 2.0


def _fmi_window_oracle(source_window: np.ndarray, fused_window: np.ndarray) -> float:
    """One window of Haghighat's fmi.m, written out loop by loop with dense l x l matrices."""
    if np.array_equal(source_window, fused_window):
        return 1.0

    def normalise(x):
        return np.ones_like(x) if x.max() == x.min() else (x - x.min()) / (x.max() - x.min())

    s = normalise(source_window).flatten(order="F")
    f = normalise(fused_window).flatten(order="F")
    ps, pf = s / s.sum(), f / f.sum()
    cs, cf = np.cumsum(ps), np.cumsum(pf)
    ts, tf = ps - ps.mean(), pf - pf.mean()
    numerator = (ts * tf).sum()
    corr = 0.0 if numerator == 0 else numerator / np.sqrt((ts * ts).sum() * (tf * tf).sum())
    i = np.arange(1, len(ps) + 1)
    sd_s = np.sqrt((i**2 * ps).sum() - ((i * ps).sum()) ** 2)
    sd_f = np.sqrt((i**2 * pf).sum() - ((i * pf).sum()) ** 2)
    rows = np.concatenate([[0], cf])[:, None]
    cols = np.concatenate([[0], cs])[None, :]
    bound = np.minimum(rows, cols) if corr >= 0 else np.maximum(rows + cols - 1, 0)
    if (corr == 0 and corr >= 0) or sd_s == 0 or sd_f == 0:
        kappa = 0.0
    else:
        kappa = corr / ((bound[1:, 1:] - cf[:, None] * cs[None, :]).sum() / (sd_f * sd_s))
    joint = kappa * np.diff(np.diff(bound, axis=0), axis=1) + (1 - kappa) * pf[:, None] * ps[None, :]
    nz = joint[joint != 0]
    h_joint = np.sum(-nz * np.log2(np.abs(nz)))
    h_s = -(ps[ps > 0] * np.log2(ps[ps > 0])).sum()
    h_f = -(pf[pf > 0] * np.log2(pf[pf > 0])).sum()
    mi = h_s + h_f - h_joint
    return 0.0 if mi == 0 else 2 * mi / (h_s + h_f)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("feature", ["pixel", "gradient", "dct"])
def test_fmi_matches_the_loop_definition(feature, backend):
    from MedFusionLib.metrics import ScoredGroup
    from MedFusionLib.metrics.fmi import _feature_mutual_information, fmi_backend

    if backend == "numba" and fmi_backend() != "numba":
        pytest.skip("numba is not installed")
    from MedFusionLib.metrics.fmi import _fmi_feature

    a, b, f = (x[:11, :13].astype(float) for x in (A, B, F))
    f[2:6, 3:8] = a[2:6, 3:8]  # identical windows take the "1" branch
    f[7:, :4] = 255 - b[7:, :4]  # negatively correlated windows take the lower bound
    per_source = []
    for s in (a, b):
        fs, ff = _fmi_feature(s, feature), _fmi_feature(f, feature)
        per_source.append(np.mean([_fmi_window_oracle(fs[r : r + 3, q : q + 3], ff[r : r + 3, q : q + 3])
                                   for r in range(9) for q in range(11)]))
    group = ScoredGroup.from_inputs(f, [a, b], data_range=(0, 255))
    value = _feature_mutual_information(group, feature, 3, backend=backend)
    assert value == pytest.approx(np.mean(per_source), abs=1e-12)


@pytest.mark.parametrize("window, shape, count", [(2, (9, 12), 2), (5, (14, 11), 2), (3, (2, 15), 2), (3, (12, 10), 3)])
def test_fmi_compiled_windows_of_every_length(window, shape, count):
    """The compiled band loop is built per window length (fmi_band_kernel): 4, 25, 6 (a 2 x 3 window on a
    2-row image) and 9 cells with three sources all agree with the NumPy path, itself checked against fmi.m."""
    from MedFusionLib.metrics import ScoredGroup
    from MedFusionLib.metrics.fmi import _feature_mutual_information, fmi_backend

    if fmi_backend() != "numba":
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(window * 100 + shape[0])
    sources = [rng.integers(0, 256, shape).astype(float) for _ in range(count)]
    fused = np.mean(sources, axis=0)
    fused[: shape[0] // 2] = 255 - sources[0][: shape[0] // 2]  # negatively correlated windows too
    values = {backend: _feature_mutual_information(ScoredGroup.from_inputs(fused, sources, data_range=(0, 255)),
                                                   "pixel", window, backend=backend)
              for backend in ("numpy", "numba")}
    assert 0.0 < values["numpy"] < 1.0
    assert values["numba"] == pytest.approx(values["numpy"], abs=1e-12)


def test_fmi_compiled_blocks_and_bands(monkeypatch):
    """Many blocks per band, a partial last block, and two bands where numba may use two threads:
    the compiled band loop (fmi_band) gives the NumPy path's value."""
    from MedFusionLib.metrics import ScoredGroup
    from MedFusionLib.metrics import fmi as fmi_module

    if fmi_module.fmi_backend() != "numba":
        pytest.skip("numba is not installed")
    monkeypatch.setattr(fmi_module, "_BLOCK_WINDOWS", 50)  # 2 of the 21 window columns' rows per block
    rng = np.random.default_rng(7)
    sources = [rng.integers(0, 256, (71, 23)).astype(float) for _ in range(2)]
    fused = 0.6 * sources[0] + 0.4 * sources[1]
    fused[30:40] = sources[1][30:40]  # identical windows in the middle of a band
    group = ScoredGroup.from_inputs(fused, sources, data_range=(0, 255))
    values = {backend: fmi_module._feature_mutual_information(group, "gradient", 3, backend=backend)
              for backend in ("numpy", "numba")}
    assert values["numba"] == pytest.approx(values["numpy"], abs=1e-12)


def test_fmi_identities_and_errors():
    assert feature_mutual_information(A, [A, A]) == 1.0
    value = feature_mutual_information(F, [A, B])
    assert 0.0 < value < 1.0
    assert value == pytest.approx(feature_mutual_information(F, [B, A]))
    with pytest.raises(ValueError, match="feature"):
        feature_mutual_information(F, [A, B], feature="sift")
    with pytest.raises(ValueError, match="window"):
        feature_mutual_information(F, [A, B], window=0)


# ------------------------------------------------------------------ every metric: edge cases


EDGE_CASES = {
    "constant": (np.full((16, 16), 7, np.uint8),) * 4,
    "zeros": (np.zeros((16, 16)),) * 4,
    "one pixel": (np.array([[3.0]]), np.array([[1.0]]), np.array([[5.0]]), np.array([[2.0]])),
    "non-square": (phantom((9, 31), 3), phantom((9, 31), 4), phantom((9, 31), 5), phantom((9, 31), 6)),
    "int16 CT": tuple((phantom((20, 24), s).astype(np.int16) * 12 - 1000) for s in range(4)),
    "uint16": tuple(phantom((20, 24), s).astype(np.uint16) * 200 for s in range(4)),
    "float32 unit": tuple((phantom((20, 24), s) / 255.0).astype(np.float32) for s in range(4)),
    "RGB": tuple(np.stack([phantom((20, 24), s)] * 3, axis=-1) for s in range(4)),
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_every_metric_gives_a_defined_value(case):
    fused, a, b, target = EDGE_CASES[case]
    before = [x.copy() for x in (fused, a, b, target)]
    results = evaluate(fused, [a, b], target, metrics=metric_names(variants=True))
    assert list(results) == list(METRICS)
    for key, value in results.items():
        assert isinstance(value, float), key
        assert not math.isnan(value), (case, key)
        if key not in ("PSNR", "REL"):  # the only metrics defined as inf (F = T, zero target)
            assert math.isfinite(value), (case, key)
    for original, after in zip(before, (fused, a, b, target)):
        assert np.array_equal(original, after)  # inputs never modified


def test_rgb_is_scored_on_luminance():
    colour = np.stack([A, B, F], axis=-1)
    luma = 0.299 * A + 0.587 * B + 0.114 * F
    assert evaluate(colour, [A, B]) == pytest.approx(evaluate(luma, [A, B], data_range=(0, 255)))


def test_evaluate_matches_the_individual_functions():
    unit = [x / 255.0 for x in (F, A, B, T)]
    results = evaluate(unit[0], unit[1:3], unit[3])
    assert results["QABF"] == pytest.approx(gradient_based_quality_index(F, [A, B]))
    assert results["SSIM"] == pytest.approx(structural_similarity(F, T))
    assert results["EN"] == pytest.approx(entropy(F))
    assert results["PSNR"] == pytest.approx(peak_signal_to_noise_ratio(F, T))
    no_target = evaluate(F, [A, B])
    assert set(no_target) == set(metric_names("fused") + metric_names("sources"))
    three = evaluate(F, [A, B, T], metrics=["MI", "QABF"])
    assert list(three) == ["MI", "QABF"]
    assert three["MI"] == pytest.approx(fusion_mutual_information(F, [A, B, T]))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_ssim_and_qw_share_one_gaussian_pass(backend):
    """evaluate() asks for SSIM and QW together: the compiled backend makes their Gaussian moments once
    (structural.gaussian_structure), and every value is exactly the one each metric's own call gives."""
    from MedFusionLib.metrics import ScoredGroup, metrics_backend
    from MedFusionLib.metrics import edge_dependent_quality_index, ssim_to_sources, weighted_quality_index

    if backend == "numba" and metrics_backend() != "numba":
        pytest.skip("numba is not installed")
    keys = ["SSIM_S", "QW", "QE", "SSIM"]
    together = evaluate(F, [A, B], T, metrics=keys, backend=backend)
    alone = {"SSIM_S": ssim_to_sources(F, [A, B]), "QW": weighted_quality_index(F, [A, B]),
             "QE": edge_dependent_quality_index(F, [A, B]), "SSIM": structural_similarity(F, T)}
    if backend == "numba":
        assert together == alone  # bit for bit: one formula per pixel, summed in the same order
    else:
        assert together == pytest.approx(alone, rel=1e-12)
    group = ScoredGroup.from_inputs(F, [A, B], T, backend=backend)
    group.requested = frozenset(keys)
    for key in keys:
        METRICS[key].compute(group)
    passes = [key for key in group._cache if key[0] == "gaussian_structure"]
    assert passes == ([("gaussian_structure", True, True)] if backend == "numba" else [])


def test_metrics_table_and_csv(tmp_path):
    rows = metrics_table({"avg": {"QABF": 0.5, "EN": 7.0, "time_s": 0.01}, "max": {"EN": 6.0}})
    assert list(rows[0]) == ["image", "EN", "QABF", "time_s"]
    assert math.isnan(rows[1]["QABF"])
    path = tmp_path / "metrics.csv"
    text = table_to_csv(rows, path)
    assert path.read_text() == text
    assert text.splitlines()[0] == "image,EN,QABF,time_s"
    assert text.splitlines()[1] == "avg,7,0.5,0.01"
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind
    assert format_table(rows).splitlines()[0].split() == ["image", "EN", "QABF", "time_s"]


def test_registry_is_complete_and_documented():
    expected = {"EN", "MEAN", "STD", "SF", "GRAD", "EOG", "MI", "FMI", "Q0", "QW", "QE", "QABF",
                "SSIM_S", "VIF", "RMSE", "PSNR", "SSIM", "REL", "CE", "H"}
    assert set(METRICS) == expected | {"QABF_LIU"}
    assert set(metric_names()) == expected  # the defaults; variants only by name
    assert {k: m.variant_of for k, m in METRICS.items() if m.variant_of} == {"QABF_LIU": "QABF"}
    for info in METRICS.values():
        assert info.function.__doc__ and "Range" in info.function.__doc__, info.key
        assert info.family in ("fused", "sources", "target")


def test_float_fused_image_next_to_uint8_sources_is_read_on_their_scale():
    # The README's call: a float fused image in [0, 1] scored against uint8 sources.
    as_unit = evaluate(F / 255.0, [A, B], T)
    as_grey = evaluate(F.astype(float), [A, B], T)
    assert as_unit == pytest.approx(as_grey)
    with pytest.raises(InputError, match="0-255 scale"):
        evaluate(F.astype(float) * 10, [A, B])


# ------------------------------------------------------------------ backends: compiled kernels and NumPy


def _needs_numba():
    from MedFusionLib.metrics import metrics_backend

    if metrics_backend() != "numba":
        pytest.skip("numba is not installed")


def _half_grey_levels(shape, seed):
    """Values on .5 steps: every grey level is a rounding tie (NumPy rounds half to even)."""
    return np.random.default_rng(seed).integers(0, 511, shape) / 2.0


BACKEND_CASES = {
    "phantom": (F, [A, B], T),
    "three sources, odd shape": (F[:37, :51], [A[:37, :51], B[:37, :51], T[:37, :51]], T[:37, :51]),
    "float fused image": (np.clip(F + RNG.normal(0, 3, F.shape), 0, 255), [A, B], T),
    "negatively correlated": (255 - F, [A, B], F),
    "one flat source": (A, [A, np.full_like(A, 80)], B),
    "extreme contrast": tuple(x for x in (RNG.integers(0, 2, (40, 40)) * 255.0,
                                          [RNG.integers(0, 2, (40, 40)) * 255.0 for _ in range(2)],
                                          RNG.integers(0, 2, (40, 40)) * 255.0)),
    "rounding ties": (_half_grey_levels((30, 33), 1), [_half_grey_levels((30, 33), s) for s in (2, 3)],
                      _half_grey_levels((30, 33), 4)),
    "smaller than the windows": (F[:6, :9], [A[:6, :9], B[:6, :9]], T[:6, :9]),
    **{name: (case[0], list(case[1:3]), case[3]) for name, case in EDGE_CASES.items()},
}


@pytest.mark.parametrize("case", list(BACKEND_CASES))
def test_compiled_and_numpy_backends_agree(case):
    _needs_numba()
    fused, sources, target = BACKEND_CASES[case]
    compiled = evaluate(fused, sources, target, backend="numba")
    reference = evaluate(fused, sources, target, backend="numpy")
    assert list(compiled) == list(reference)
    for key in reference:
        assert compiled[key] == pytest.approx(reference[key], rel=1e-9, abs=1e-12), key


def test_compiled_results_do_not_depend_on_the_number_of_threads():
    _needs_numba()
    import numba

    big = [np.kron(x, np.ones((2, 2))) for x in (F, A, B, T)]  # 128 x 144: rows enough for several bands
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        alone = evaluate(big[0], big[1:3], big[3])
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        shared = evaluate(big[0], big[1:3], big[3])
    finally:
        numba.set_num_threads(before)
    assert shared == pytest.approx(alone, rel=1e-12, abs=1e-14)
    assert shared == pytest.approx(evaluate(big[0], big[1:3], big[3], backend="numpy"), rel=1e-9, abs=1e-12)


def test_compiled_logarithm_is_fdlibms_to_one_ulp_and_takes_every_input():
    """The kernels' vectorised log (fdlibm's) against NumPy's, over the whole normal range."""
    _needs_numba()
    from MedFusionLib.metrics import _group

    kernels = _group.compiled_kernels()
    rng = np.random.default_rng(3)
    normal = np.concatenate([
        np.exp(rng.uniform(-708, 709, 200_000)),
        rng.uniform(0.5, 2.0, 50_000),  # around the reduction's sqrt(2) boundary and 1
        [1.0, 2.0, 0.5, np.sqrt(2), np.nextafter(np.sqrt(2), 0), np.sqrt(0.5), 1 - 2**-53, 1 + 2**-52,
         np.finfo(float).tiny, np.finfo(float).max, 1e-300, 255.0, 1 / 9],
    ])
    values = normal.copy()
    kernels.log_in_place(values, np.empty((2, values.size), np.int64))
    reference = np.log(normal)
    assert np.all(np.abs(values - reference) <= np.spacing(np.abs(reference)))  # within 1 ulp
    assert values[normal == 1.0][0] == 0.0
    # What the reduction cannot take goes to the C library, value by value.
    unusual = np.array([[0.0, -1.0, np.inf], [np.nan, 5e-324, np.e]])
    logs = unusual.copy()
    kernels.log_in_place(logs, np.empty((2, logs.size), np.int64))
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_allclose(logs, np.log(unusual), rtol=1e-15)


def test_compiled_atan_and_exp_are_fdlibms_to_one_ulp():
    """The kernels' vectorised atan and exp (fdlibm's, for Q^AB/F) against NumPy's, every range and edge."""
    _needs_numba()
    from MedFusionLib.metrics import _group

    kernels = _group.compiled_kernels()
    rng = np.random.default_rng(4)
    sign = rng.choice([-1.0, 1.0], 100_000)
    x = np.concatenate([rng.normal(0, 1, 100_000), rng.normal(0, 100, 50_000),
                        sign * np.exp(rng.uniform(-700, 700, 100_000)),
                        [0.0, -0.0, 0.4375, 0.6875, 1.1875, 2.4375, np.nextafter(0.4375, 0), np.nextafter(2.4375, 9),
                         1e300, -1e-300, 2.0**66, np.inf, -np.inf]])
    angles = x.copy()
    kernels.atan_in_place(angles)
    reference = np.arctan(x)
    assert np.all(np.abs(angles - reference) <= np.spacing(np.abs(reference)))  # within 1 ulp
    assert angles[-2] == np.pi / 2 and angles[-1] == -np.pi / 2
    assert np.signbit(angles[np.flatnonzero(x == 0)[1]])  # atan(-0.0) is -0.0: odd throughout
    nan = np.array([np.nan])
    kernels.atan_in_place(nan)
    assert np.isnan(nan[0])

    e = np.concatenate([rng.uniform(-707, 708, 200_000), rng.normal(0, 1, 50_000),
                        [0.0, -0.0, 1e-300, 0.5 * np.log(2), 1.5 * np.log(2), -40.0, 40.0]])
    exps = e.copy()
    kernels.exp_in_place(exps, np.empty((2, e.size), np.int64))
    assert np.all(np.abs(exps - np.exp(e)) <= np.spacing(np.exp(e)))
    # Beyond the reduction's range (overflow, subnormal results, NaN): the C library, value by value.
    edges = np.array([800.0, -800.0, -740.0, np.nan, 1.0])
    expected = edges.copy()
    with np.errstate(over="ignore"):
        expected = np.exp(expected)
    kernels.exp_in_place(edges, np.empty((2, edges.size), np.int64))
    np.testing.assert_array_equal(edges, expected)


def test_numpy_backend_is_used_without_numba(monkeypatch):
    import MedFusionLib.metrics._group as group_module
    from MedFusionLib.metrics import ScoredGroup, fmi_backend, metrics_backend

    reference = evaluate(F, [A, B], T, backend="numpy")
    monkeypatch.setattr(group_module, "compiled_kernels", lambda: None)
    assert metrics_backend() == "numpy" and fmi_backend() == "numpy"
    assert ScoredGroup.from_inputs(F, [A, B], backend="numba").backend == "numpy"  # falls back
    assert evaluate(F, [A, B], T) == reference
    assert evaluate(F, [A, B], T, backend="numba") == reference


def test_backend_argument_is_checked():
    with pytest.raises(ValueError, match="backend"):
        evaluate(F, [A, B], backend="gpu")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_fmi_flat_windows(backend):
    # A flat window against one that varies shares no feature information (Pearson's 0/0 read as 0);
    # two flat windows score 1, as fmi.m's arithmetic gives them (equal rounding residues, correlated +1).
    from MedFusionLib.metrics import ScoredGroup
    from MedFusionLib.metrics.fmi import _feature_mutual_information

    if backend == "numba":
        _needs_numba()
    flat = np.full((7, 3), 162, np.uint8)
    ramp = (np.add.outer(np.arange(7), np.arange(3)) * 30).astype(np.uint8)  # flat gradient windows
    textured = A[:7, :3]
    group = ScoredGroup.from_inputs(flat, [textured, ramp], backend=backend)
    assert _feature_mutual_information(group, backend=backend) == pytest.approx(0.5, abs=1e-12)


def test_compiled_filters_repeat_scipys_arithmetic():
    # The kernels filter in SciPy's order (centre tap, then symmetric pairs from the
    # outside in), so SSIM's and VIF's filtered interiors equal the NumPy path's bit for bit.
    _needs_numba()
    from scipy import ndimage

    from MedFusionLib.metrics import _kernels
    from MedFusionLib.metrics.structural import _SSIM_WEIGHTS, _VIF_KERNELS, _filter_valid

    image = RNG.random((40, 50)) * 255
    for weights, expected in [
        (_SSIM_WEIGHTS, ndimage.gaussian_filter(image, 1.5, truncate=3.5, mode="reflect")[5:-5, 5:-5]),
        *((kernel, _filter_valid(image, kernel)) for kernel in _VIF_KERNELS),
    ]:
        radius = weights.size // 2
        column, filtered = np.empty(image.shape[1]), np.empty(expected.shape)
        for i in range(expected.shape[0]):
            _kernels._symmetric_rows(image, i + radius, weights, column)
            _kernels._symmetric_valid(column, weights, filtered[i])
        assert np.array_equal(filtered, expected)


def test_evaluate_leaves_torch_thread_count_alone():
    """The compiled metrics run on their own threads: scoring must not change torch's thread
    count, which training reproducibility depends on."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a, b = np.random.default_rng(0).random((2, 48, 48))
        evaluate((a + b) / 2, [a, b], data_range=(0, 1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ volumes


def _volume_pair():
    rng = np.random.default_rng(11)
    a = rng.random((6, 24, 20)).astype(np.float32) * 1000
    b = rng.random((6, 24, 20)).astype(np.float32) * 300
    a[0] = 5.0  # a slice constant in every source: no signal, skipped
    b[0] = 7.0
    fused = (a / 1000 + b / 300) / 2
    return a, b, fused


def test_volume_scores_are_the_2d_metrics_slice_by_slice_over_the_slices_with_signal():
    from MedFusionLib.fusion import to_unit_range

    a, b, fused = _volume_pair()
    scores = evaluate_volume(fused, [a, b], metrics=["QABF", "MI", "SF"])
    assert list(scores.slice_indices) == list(range(6))
    assert all(math.isnan(v[0]) for v in scores.slice_metrics.values())  # the constant slice
    units = [to_unit_range(x, None, "x") for x in (a, b)]
    for s in range(1, 6):
        expected = evaluate(fused[s], [u[s] for u in units], metrics=["QABF"], data_range=(0, 1))["QABF"]
        assert scores.slice_metrics["QABF"][s] == pytest.approx(expected)
    assert scores.metrics["QABF"] == pytest.approx(np.mean(scores.slice_metrics["QABF"][1:]))
    along_j = evaluate_volume(fused, [a, b], metrics=["SF"], axis=1)
    assert len(along_j.slice_indices) == 24
    # a fused volume on another range (8-bit, another method's output) is min-max scaled to [0, 1]
    stretched = (fused - fused.min()) / (fused.max() - fused.min())
    assert evaluate_volume(fused * 255, [a, b], metrics=["QABF"]).metrics["QABF"] == pytest.approx(
        evaluate_volume(stretched, [a, b], metrics=["QABF"]).metrics["QABF"])


def test_volume_scoring_refuses_bad_input_with_one_clear_error():
    a, b, fused = _volume_pair()
    with pytest.raises(InputError, match="3D"):
        evaluate_volume(fused[0], [a, b])  # a 2D fused image against 3D sources
    with pytest.raises(InputError, match="shape"):
        evaluate_volume(fused, [a, b[:, :, :10]])
    with pytest.raises(InputError, match="at least 2"):
        evaluate_volume(fused, [a])
    bad = fused.copy()
    bad[2, 3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        evaluate_volume(bad, [a, b])
    nan_source = a.copy()
    nan_source[1, 1, 1] = np.nan
    with pytest.raises(InputError):
        evaluate_volume(fused, [nan_source, b])
    constant = np.full_like(a, 3.0)
    scores = evaluate_volume(fused, [constant, constant], metrics=["QABF"])
    assert math.isnan(scores.metrics["QABF"]) and np.all(np.isnan(scores.slice_metrics["QABF"]))


# ------------------------------------------------------------------ block-grid index (a diagnostic)


def test_block_grid_index_finds_a_visible_block_grid_and_not_a_clean_fusion():
    from MedFusionLib import fuse
    from MedFusionLib.data.targets import phantom_cases
    from MedFusionLib.metrics import block_grid_index

    case = phantom_cases(1, (128, 128), [("CT", "MRI_T1")], seed=5)[0]
    clean = fuse(list(case.inputs), "laplacian").image
    # each 4 x 4 block lifted or lowered by about 5 grey levels: a grid one sees at 4x zoom
    offsets = np.kron(np.random.default_rng(0).normal(0.0, 0.02, (32, 32)), np.ones((4, 4)))
    assert block_grid_index(clean) < 1.1
    assert block_grid_index(clean + offsets) > block_grid_index(clean) + 0.05
    # a grid of period 8 too; orientation, brightness and contrast change nothing
    offsets8 = np.kron(np.random.default_rng(1).normal(0.0, 0.02, (16, 16)), np.ones((8, 8)))
    assert block_grid_index(clean + offsets8) > block_grid_index(clean) + 0.05
    assert block_grid_index(clean.T) == pytest.approx(block_grid_index(clean))
    assert block_grid_index(3 * clean + 1) == pytest.approx(block_grid_index(clean))
    assert block_grid_index(np.full((16, 16), 0.3)) == 1.0
    with pytest.raises(InputError):
        block_grid_index(np.zeros((4, 4, 3)))
