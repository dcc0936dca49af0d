"""Compiled inner loops of the metrics (numba, installed with the ``fast`` extra).

Imported only through :func:`MedFusionLib.metrics._group.compiled_kernels`, so
MedFusion runs without numba; every kernel here has a NumPy counterpart in the
metric's own module, and the tests check that both give the same values.

Why kernels at all: on a 256x256 image each NumPy or SciPy call that makes a new
full-size ``float64`` array pays for its memory as well as its arithmetic, and the
metrics need dozens of such arrays (windowed moments, Sobel responses, filtered
products). These kernels stream over the image row by row, keep only a few rows of
scratch, and reduce straight to the sums each metric needs. The arithmetic of each
filter is written out in the order SciPy's ``correlate1d`` uses (centre tap first,
then symmetric pairs from the outside in), so filtered values match the NumPy path
to the last bit where the interior of an image is concerned; sums over pixels are
added in another order, which changes results only by rounding.

Transcendental functions (``arctan2``, ``exp``) are left to NumPy where a kernel
can hand them over in bulk: NumPy's are vectorised, the scalar calls numba makes
are several times slower. The logarithm is the exception: NumPy vectorises its
float64 log only on AVX-512 machines, so :func:`log_in_place` (fdlibm's, in
vectorisable loops) takes FMI's millions of them.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_jit_inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")


# --------------------------------------------------------------------------- filters


@_jit
def _symmetric_rows(image, centre, weights, out):
    """``out[j]`` = correlation of column j of ``image`` with the odd symmetric ``weights`` at row ``centre``.

    SciPy's symmetric ``correlate1d``: ``x[c] w[r] + sum_{t=r..1} (x[c-t] + x[c+t]) w[r-t]``;
    the caller keeps ``centre`` at least ``r`` rows from either border.
    """
    radius = weights.size // 2
    middle = weights[radius]
    row = image[centre]
    for j in range(out.size):
        out[j] = row[j] * middle
    for t in range(radius, 0, -1):
        above = image[centre - t]
        below = image[centre + t]
        weight = weights[radius - t]
        for j in range(out.size):
            out[j] += (above[j] + below[j]) * weight


@_jit
def _symmetric_rows_product(first, second, centre, weights, out):
    """:func:`_symmetric_rows` of the pixelwise product ``first * second`` (never formed as an image)."""
    radius = weights.size // 2
    middle = weights[radius]
    a0 = first[centre]
    b0 = second[centre]
    for j in range(out.size):
        out[j] = (a0[j] * b0[j]) * middle
    for t in range(radius, 0, -1):
        a1 = first[centre - t]
        b1 = second[centre - t]
        a2 = first[centre + t]
        b2 = second[centre + t]
        weight = weights[radius - t]
        for j in range(out.size):
            out[j] += (a1[j] * b1[j] + a2[j] * b2[j]) * weight


@_jit
def _symmetric_valid(line, weights, out):
    """'valid' correlation of one row with odd symmetric ``weights``: ``out[j]`` is centred on ``line[j + r]``."""
    radius = weights.size // 2
    middle = weights[radius]
    for j in range(out.size):
        out[j] = line[j + radius] * middle
    for t in range(radius, 0, -1):
        weight = weights[radius - t]
        for j in range(out.size):
            out[j] += (line[j + radius - t] + line[j + radius + t]) * weight


@_jit
def _filtered_moments(images, centre, weights, column, out):
    """Filtered x, x^2 of every image and x_k * x_F of every source k, at one output row ('valid').

    ``images`` = (sources..., fused); ``out`` rows: ``[0, P)`` means, ``[P, 2P)`` squares,
    ``[2P, 2P + K)`` cross products with the fused image (P = K + 1 images).
    """
    count = len(images)
    fused = images[count - 1]
    for p in range(count):
        image = images[p]
        _symmetric_rows(image, centre, weights, column)
        _symmetric_valid(column, weights, out[p])
        _symmetric_rows_product(image, image, centre, weights, column)
        _symmetric_valid(column, weights, out[count + p])
    for k in range(count - 1):
        _symmetric_rows_product(images[k], fused, centre, weights, column)
        _symmetric_valid(column, weights, out[2 * count + k])


# --------------------------------------------------------------------------- single-image statistics


@_jit
def image_statistics(image):
    """MEAN, STD, the two halves of SF, and the means behind GRAD and EOG, in two passes.

    Transcriptions of :mod:`MedFusionLib.metrics.statistics` without its temporaries:
    returns ``(mean, std, RF^2, CF^2, mean sqrt((dx^2 + dy^2) / 2), mean (dx^2 + dy^2))``,
    the last two over the ``(M-1) x (N-1)`` grid of forward differences; a mean over
    no differences is 0. STD is NumPy's two-pass ``sqrt(mean((F - mean F)^2))``.
    """
    height, width = image.shape
    total = 0.0
    for i in range(height):
        row = image[i]
        for j in range(width):
            total += row[j]
    mean = total / (height * width)
    deviation = 0.0
    rows = 0.0
    cols = 0.0
    average = 0.0
    energy = 0.0
    for i in range(height):
        row = image[i]
        for j in range(width):
            d = row[j] - mean
            deviation += d * d
        for j in range(1, width):
            d = row[j] - row[j - 1]
            rows += d * d
        if i > 0:
            above = image[i - 1]
            for j in range(width):
                d = row[j] - above[j]
                cols += d * d
        if i < height - 1:
            below = image[i + 1]
            for j in range(width - 1):
                dx = row[j + 1] - row[j]
                dy = below[j] - row[j]
                squared = dx * dx + dy * dy
                average += math.sqrt(squared / 2.0)
                energy += squared
    grid = (height - 1) * (width - 1)
    return (
        mean,
        math.sqrt(deviation / (height * width)),
        rows / (height * (width - 1)) if width > 1 else 0.0,
        cols / ((height - 1) * width) if height > 1 else 0.0,
        average / grid if grid > 0 else 0.0,
        energy / grid if grid > 0 else 0.0,
    )


@_jit
def error_sums(fused, target):
    """``sum (F - T)^2`` and ``sum T^2`` (RMSE, PSNR and REL) without the difference image."""
    error = 0.0
    norm = 0.0
    for i in range(fused.shape[0]):
        for j in range(fused.shape[1]):
            d = fused[i, j] - target[i, j]
            error += d * d
            norm += target[i, j] * target[i, j]
    return error, norm


# --------------------------------------------------------------------------- histograms


@_jit_inline
def _grey_level(value, top):
    """:func:`MedFusionLib.metrics._common.grey_levels` of one value: round half to even, clip to [0, top]."""
    return int(min(max(np.rint(value), 0.0), top))


@_jit
def grey_histogram(image, bins):
    """Counts of each grey level (``np.bincount(grey_levels(image), minlength=bins)``) without the level image."""
    counts = np.zeros(bins, np.int64)
    top = bins - 1.0
    for row in image:
        for value in row:
            counts[_grey_level(value, top)] += 1
    return counts


@_jit
def grey_joint_histogram(first, second, bins):
    """Joint grey-level counts, rows indexing ``first`` (see :meth:`ScoredGroup.joint_histogram`)."""
    counts = np.zeros((bins, bins), np.int64)
    top = bins - 1.0
    height, width = first.shape
    for i in range(height):
        for j in range(width):
            counts[_grey_level(first[i, j], top), _grey_level(second[i, j], top)] += 1
    return counts


# --------------------------------------------------------------------------- SSIM and QW


@_jit
def gaussian_structure_sums(images, weights, c1, c2, floor, flat, ssim_count, piella_count, first, end):
    """SSIM's and QW's sums over the 'valid' output rows ``[first, end)``, from one pass of Gaussian moments.

    ``images`` = (others..., fused); ``weights`` = SSIM's 11 taps. Every image's filtered
    x, x^2 and x * x_F are made once per row (:func:`_filtered_moments`) and serve both:

    - SSIM (:func:`MedFusionLib.metrics.structural.ssim_between`): the sum of the SSIM map
      of each of the first ``ssim_count`` images against the fused one, over the pixels at
      least ``r`` from every border (whose mean is SSIM; those are exactly the 'valid' ones,
      so the border mode of the NumPy path never enters). Rows are numbered within the
      interior (0 is image row ``r``).
    - QW (:func:`MedFusionLib.metrics.piella._weighted_quality_of`, Liu's ``metricPeilla.m``
      case 2) over the first ``piella_count`` images (the sources; 0: not computed):
      ``sum_w c(w) sum_k lambda_k SSIM_k``, ``sum_w c(w)`` and ``sum_w sum_k lambda_k SSIM_k``,
      with ``c(w) = max_k s_k`` and ``lambda_k = s_k / sum_j s_j`` for the window variances
      ``s_k`` (below ``floor`` taken as 0; all ``flat`` where none varies, and then ``c(w)``
      is ``flat`` only where every source is 0 throughout the window, else 0). The caller
      weighs windows equally when every one is flat and not black.

    SSIM_k is computed once per pixel for both, with unfloored variances. Returns
    ``(ssim sums, QW numerator, QW denominator, QW unweighted sum)``.
    """
    count = len(images)
    width = images[0].shape[1]
    radius = weights.size // 2
    out_width = width - 2 * radius
    column = np.empty(width)
    moments = np.empty((3 * count - 1, out_width))
    similarity = np.empty((count - 1, out_width))
    saliency = np.empty(max(piella_count, 1))
    ssim_sums = np.zeros(count - 1)
    numerator = 0.0
    denominator = 0.0
    unweighted = 0.0
    measured = max(ssim_count, piella_count)
    for centre in range(radius + first, radius + end):
        _filtered_moments(images, centre, weights, column, moments)
        mean_y = moments[count - 1]
        square_y = moments[2 * count - 1]
        for k in range(measured):
            mean_x = moments[k]
            square_x = moments[count + k]
            cross = moments[2 * count + k]
            row = similarity[k]
            for j in range(out_width):
                mx = mean_x[j]
                my = mean_y[j]
                var_x = square_x[j] - mx * mx
                var_y = square_y[j] - my * my
                cov = cross[j] - mx * my
                row[j] = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (var_x + var_y + c2))
        for k in range(ssim_count):
            total = 0.0
            row = similarity[k]
            for j in range(out_width):
                total += row[j]
            ssim_sums[k] += total
        if piella_count == 0:
            continue
        for j in range(out_width):
            total = 0.0
            for k in range(piella_count):
                mean = moments[k, j]
                variance = moments[count + k, j] - mean * mean
                saliency[k] = 0.0 if abs(variance) < floor else variance
                total += saliency[k]
            is_flat = total == 0.0
            black = is_flat
            if is_flat:
                for k in range(piella_count):
                    saliency[k] = flat
                    black = black and moments[k, j] == 0.0
                total = flat * piella_count
            largest = saliency[0]
            weighted = 0.0
            for k in range(piella_count):
                weighted += saliency[k] / total * similarity[k, j]
                largest = max(largest, saliency[k])
            if is_flat and not black:
                largest = 0.0  # flat, not black: the reference's round-off weighs it about nothing
            numerator += largest * weighted
            denominator += largest
            unweighted += weighted
    return ssim_sums, numerator, denominator, unweighted


@_jit
def prewitt_magnitude(image):
    """``sqrt(x^2 + y^2)`` of the 3x3 Prewitt responses with zero padding (``filter2(., 'same')``).

    x = left column minus right column, y = upper row minus lower row (signs do not reach the
    magnitude); read from a zero-padded copy so every pixel takes the same arithmetic.
    """
    height, width = image.shape
    padded = np.zeros((height + 2, width + 2))
    padded[1:-1, 1:-1] = image
    out = np.empty((height, width))
    for i in range(height):
        above = padded[i]
        here = padded[i + 1]
        below = padded[i + 2]
        for j in range(width):
            x = (above[j] + here[j] + below[j]) - (above[j + 2] + here[j + 2] + below[j + 2])
            y = (above[j] + above[j + 1] + above[j + 2]) - (below[j] + below[j + 1] + below[j + 2])
            out[i, j] = math.sqrt(x * x + y * y)
    return out


@_jit_inline
def _sobel_zero_padded_at(image, i, j):
    """Sobel responses at pixel (i, j) with zero padding: (right - left, lower - upper), weights 1, 2, 1."""
    height, width = image.shape
    x = 0.0
    y = 0.0
    for t in range(-1, 2):
        weight = 2.0 if t == 0 else 1.0
        r = i + t
        if 0 <= r < height:
            right = image[r, j + 1] if j + 1 < width else 0.0
            left = image[r, j - 1] if j >= 1 else 0.0
            x += weight * (right - left)
        c = j + t
        if 0 <= c < width:
            below = image[i + 1, c] if i + 1 < height else 0.0
            above = image[i - 1, c] if i >= 1 else 0.0
            y += weight * (below - above)
    return x, y


@_jit
def qabf_sums(images, constants, first, end):
    """VIFB's Q^AB/F sums ``sum Q^SF g_S`` and ``sum g_S`` over rows ``[first, end)``, every source at once.

    Transcription of :func:`MedFusionLib.metrics.qabf._gradient_based_quality` (``metricsQabf.m``):
    ``images`` = (sources..., fused) on the 0-255 scale, scaled by 255 as VIFB does; zero-padded
    Sobel; orientation ``atan(Sy / Sx)`` (pi/2 where ``Sx = 0``); VIFB's strength ratio with
    ``G = g_F`` for equal strengths; the unwrapped orientation term. A row at a time: the
    Sobel responses, then every orientation through :func:`atan_in_place` and every sigmoid's
    exponential through :func:`exp_in_place`, then the sums in pixel order.
    """
    gamma_g, k_g, d_g, gamma_a, k_a, d_a = constants
    count = len(images)
    sources = count - 1
    width = images[0].shape[1]
    half_pi = math.pi / 2
    strength = np.empty((count, width))
    angle = np.empty((count, width))  # atan's arguments, then the orientations
    decays = np.empty((2, sources, width))  # the sigmoids' exponents, then their exponentials
    scratch = np.empty((2, 2 * sources * width), np.int64)
    numerator = 0.0
    denominator = 0.0
    for i in range(first, end):
        for p in range(count):
            for j in range(width):
                x, y = _sobel_zero_padded_at(images[p], i, j)
                x = -255.0 * x  # conv2(255 p, h3): left minus right
                y = 255.0 * y
                strength[p, j] = math.sqrt(x * x + y * y)
                angle[p, j] = y / x if x != 0.0 else np.inf  # atan(inf) = pi/2: VIFB's value where Sx = 0
        atan_in_place(angle)
        for k in range(sources):
            for j in range(width):
                g_s = strength[k, j]
                g_f = strength[sources, j]
                ratio = g_f / g_s if g_s > g_f else (g_f if g_s == g_f else g_s / g_f)
                agreement = 1.0 - abs(angle[k, j] - angle[sources, j]) / half_pi
                # Floored at -700: exp() is then below 1e-304 and 1 + exp() is exactly 1, as it is for the
                # exponent itself (VIFB's equal-strength rule makes ratio = g_F, which can exceed 47 and
                # send the exponent below -708, where exp_in_place would take the slow path for the row).
                decays[0, k, j] = max(k_g * (ratio - d_g), -700.0)
                decays[1, k, j] = max(k_a * (agreement - d_a), -700.0)
        exp_in_place(decays, scratch)
        for j in range(width):
            for k in range(sources):
                g_s = strength[k, j]
                if g_s == 0.0:
                    continue  # weight 0 (a pixel without any source edge adds exactly 0 to both sums)
                quality = gamma_g / (1.0 + decays[0, k, j]) * (gamma_a / (1.0 + decays[1, k, j]))
                numerator += quality * g_s
                denominator += g_s
    return numerator, denominator


# --------------------------------------------------------------------------- VIF


@_jit
def vif_downsample(image, weights):
    """``filter2(w, image, 'valid')(1:2:end, 1:2:end)``: only the kept pixels are filtered."""
    height, width = image.shape
    radius = weights.size // 2
    out = np.empty(((height - 2 * radius + 1) // 2, (width - 2 * radius + 1) // 2))
    column = np.empty(width)
    line = np.empty(width - 2 * radius)
    for i in range(out.shape[0]):
        _symmetric_rows(image, 2 * i + radius, weights, column)
        _symmetric_valid(column, weights, line)
        for j in range(out.shape[1]):
            out[i, j] = line[2 * j]
    return out


@_jit
def vif_scale(images, weights, eps, noise_variance, first, end, numerator, denominator):
    """Add one scale's pixel-domain VIF sums of each source k against the fused image (last).

    Transcription of the loop body of :func:`MedFusionLib.metrics.structural.vif_between`
    (``vifp_mscale.m``), with every image's moments filtered in the same pass, over
    the 'valid' output rows ``[first, end)``. The
    sums of ``log10(1 + x)`` are taken as ``log10`` of running products, flushed
    long before they could overflow (each factor is at most ``1 + 127.5^2 / 2``, the
    largest variance on the 0-255 scale over sigma_n^2): a scalar ``log10`` per pixel
    costs more than the filtering, and the two differ only by rounding.
    """
    count = len(images)
    width = images[0].shape[1]
    radius = weights.size // 2
    out_width = width - 2 * radius
    column = np.empty(width)
    moments = np.empty((3 * count - 1, out_width))
    num_factor = np.empty(out_width)
    den_factor = np.empty(out_width)
    for centre in range(radius + first, radius + end):
        _filtered_moments(images, centre, weights, column, moments)
        mean_f = moments[count - 1]
        square_f = moments[2 * count - 1]
        for k in range(count - 1):
            mean_s = moments[k]
            square_s = moments[count + k]
            cross = moments[2 * count + k]
            # Each pixel's two factors first, its branches written as selects so the loop vectorises
            # (the same numbers as the reference's sequence of ifs), then the products in pixel order.
            for j in range(out_width):
                mu1 = mean_s[j]
                mu2 = mean_f[j]
                sigma1_sq = max(square_s[j] - mu1 * mu1, 0.0)
                sigma2_sq = max(square_f[j] - mu2 * mu2, 0.0)
                sigma12 = cross[j] - mu1 * mu2
                g = sigma12 / (sigma1_sq + eps)
                sv_sq = sigma2_sq - g * sigma12
                flat_source = sigma1_sq < eps
                g = 0.0 if flat_source else g
                sv_sq = sigma2_sq if flat_source else sv_sq
                sigma1_sq = 0.0 if flat_source else sigma1_sq
                flat_fused = sigma2_sq < eps
                g = 0.0 if flat_fused else g
                sv_sq = 0.0 if flat_fused else sv_sq
                negative = g < 0
                sv_sq = sigma2_sq if negative else sv_sq
                g = 0.0 if negative else g
                sv_sq = max(sv_sq, eps)
                num_factor[j] = 1.0 + g * g * sigma1_sq / (sv_sq + noise_variance)
                den_factor[j] = 1.0 + sigma1_sq / noise_variance
            num = 0.0
            den = 0.0
            num_product = 1.0
            den_product = 1.0
            for j in range(out_width):
                num_product *= num_factor[j]
                den_product *= den_factor[j]
                if num_product > 1e200 or den_product > 1e200:
                    num += math.log10(num_product)
                    den += math.log10(den_product)
                    num_product = 1.0
                    den_product = 1.0
            numerator[k] += num + math.log10(num_product)
            denominator[k] += den + math.log10(den_product)


# --------------------------------------------------------------------------- Q0, QW, QE


@_jit
def quality_sums(images, win_rows, win_cols, floor, first, end):
    """Sums over sliding windows of Wang & Bovik's Q(S_k, F) and of Piella's QW terms.

    Transcription of :meth:`ScoredGroup.quality_map` and
    :func:`MedFusionLib.metrics.structural._weighted_quality` for ``images`` =
    (sources..., fused), over the windows whose top row is in ``[first, end)``:
    returns ``(q_sums[k], weighted, weight, unweighted)``, where ``weighted`` =
    sum_w c(w) sum_k lambda_k Q_k, ``weight`` = sum_w c(w) and ``unweighted`` =
    sum_w sum_k lambda_k Q_k (used when no source varies anywhere).

    Column sums over the window's rows are updated as the window moves down (exact
    for integer images, like every sum here); each row of windows is then handled
    as whole vectors, all three cases of Q computed and the right one selected, so
    the loops carry no branches.
    """
    count = len(images)
    sources = count - 1
    fused = images[sources]
    width = fused.shape[1]
    out_cols = width - win_cols + 1
    inverse_size = 1.0 / (win_rows * win_cols)
    quantities = 2 * count + sources  # x_p, x_p^2, then x_k * x_F
    columns = np.zeros((quantities, width))
    windows = np.empty((quantities, out_cols))
    mean = np.empty((count, out_cols))
    var = np.empty((count, out_cols))
    total = np.empty(out_cols)
    largest = np.empty(out_cols)
    local = np.empty(out_cols)
    q_sums = np.zeros(sources)
    weighted = 0.0
    weight = 0.0
    unweighted = 0.0
    for r in range(first, end):
        # Column sums of rows [r, r + win_rows): built once, then one row in and one out.
        rows_in = range(r, r + win_rows) if r == first else range(r + win_rows - 1, r + win_rows)
        for t in rows_in:
            for p in range(count):
                row = images[p][t]
                plain = columns[p]
                square = columns[count + p]
                for j in range(width):
                    plain[j] += row[j]
                    square[j] += row[j] * row[j]
            row_f = fused[t]
            for k in range(sources):
                row = images[k][t]
                cross = columns[2 * count + k]
                for j in range(width):
                    cross[j] += row[j] * row_f[j]
        if r > first:
            t = r - 1
            for p in range(count):
                row = images[p][t]
                plain = columns[p]
                square = columns[count + p]
                for j in range(width):
                    plain[j] -= row[j]
                    square[j] -= row[j] * row[j]
            row_f = fused[t]
            for k in range(sources):
                row = images[k][t]
                cross = columns[2 * count + k]
                for j in range(width):
                    cross[j] -= row[j] * row_f[j]
        for q in range(quantities):
            line = columns[q]
            out = windows[q]
            for c in range(out_cols):
                out[c] = line[c]
            for u in range(1, win_cols):
                shifted = line[u : u + out_cols]
                for c in range(out_cols):
                    out[c] += shifted[c]
        for p in range(count):
            for c in range(out_cols):
                m = windows[p, c] * inverse_size
                v = windows[count + p, c] * inverse_size - m * m
                mean[p, c] = m
                var[p, c] = v if v >= floor else 0.0
        for c in range(out_cols):
            total[c] = 0.0
            largest[c] = 0.0
            local[c] = 0.0
        for k in range(sources):
            for c in range(out_cols):
                total[c] += var[k, c]
                largest[c] = var[k, c] if var[k, c] > largest[c] else largest[c]
        for k in range(sources):
            cross = windows[2 * count + k]
            acc = 0.0
            for c in range(out_cols):
                mx = mean[k, c]
                my = mean[sources, c]
                cov = cross[c] * inverse_size - mx * my
                variance_sum = var[k, c] + var[sources, c]
                mean_sq_sum = mx * mx + my * my
                flat = variance_sum == 0.0
                lit = mean_sq_sum > 0.0
                safe_variance = variance_sum if not flat else 1.0
                safe_mean = mean_sq_sum if lit else 1.0
                if flat:
                    q = 2.0 * mx * my / safe_mean if lit else 1.0
                else:
                    q = 4.0 * cov * mx * my / (variance_sum * safe_mean) if lit else 2.0 * cov / safe_variance
                q = -1.0 if q < -1.0 else (1.0 if q > 1.0 else q)
                acc += q
                t = total[c]
                local[c] += (var[k, c] / (t if t > 0.0 else 1.0) if t > 0.0 else 1.0 / sources) * q
            q_sums[k] += acc
        for c in range(out_cols):
            weighted += largest[c] * local[c]
            weight += largest[c]
            unweighted += local[c]
    return q_sums, weighted, weight, unweighted


# --------------------------------------------------------------------------- logarithm
#
# FMI takes about 30 logarithms per pair of windows, some 4 million per 256x256 pair.
# NumPy's float64 log is vectorised only on AVX-512 machines; elsewhere it calls the
# C library once per value (about 5 ns here), which made the logarithms a third of
# FMI's time. This is fdlibm's log (Sun Microsystems, ``e_log.c``, also FreeBSD's and
# musl's ``log``): the same reduction and the same minimax coefficients, written as
# two branch-free loops that the compiler vectorises. fdlibm bounds its error below
# 1 ulp; the tests compare it with NumPy's log over the whole normal range.

_LN2_HI = 6.93147180369123816490e-01  # ln 2, upper bits (its product with any exponent is exact)
_LN2_LO = 1.90821492927058770002e-10  # ln 2 - _LN2_HI
_LG1 = 6.666666666666735130e-01  # fdlibm's Lg1..Lg7: log(1+f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f/(2+f)
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
# 1.5 * 2^52: the double whose bits plus a small integer k are the double 1.5 * 2^52 + k,
# which turns the exponent into a float without an int64 -> double conversion
# (an AVX-512 instruction; AVX2 has none, and the loop would not vectorise).
_EXPONENT_BIAS = 6755399441055744.0
_EXPONENT_BIAS_BITS = 0x4338000000000000  # its bits
_SMALLEST_NORMAL = 2.2250738585072014e-308
_LARGEST = 1.7976931348623157e308


@_jit
def _split_exponent(values, bits, mantissa_bits, exponent_bits):
    """fdlibm's reduction x = 2^k (1 + f), 1 + f in [sqrt(2)/2, sqrt(2)), on the bits of x.

    ``bits`` is ``values`` read as int64. Writes the bits of 1 + f and of
    1.5 * 2^52 + k; returns whether some value is not a positive normal number
    (the only ones the reduction is for).
    """
    unusual = False
    for i in range(bits.size):
        hx = bits[i]
        mant = hx & 0x000FFFFFFFFFFFFF
        # Adds 1 to the exponent where the mantissa is >= sqrt(2) (0x6a09e... is its fraction).
        carry = (mant + 0x00095F6400000000) & 0x0010000000000000
        mantissa_bits[i] = mant | (carry ^ 0x3FF0000000000000)
        exponent_bits[i] = _EXPONENT_BIAS_BITS + ((hx >> 52) + (carry >> 52) - 1023)
        x = values[i]
        unusual |= not (x >= _SMALLEST_NORMAL and x <= _LARGEST)
    return unusual


@_jit
def _log_reduced(mantissa, exponent, out):
    """fdlibm's ``__ieee754_log`` for the reduced arguments of :func:`_split_exponent`."""
    for i in range(out.size):
        f = mantissa[i] - 1.0
        s = f / (2.0 + f)
        z = s * s
        w = z * z
        t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
        t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
        r = t2 + t1
        half_square = 0.5 * f * f
        k = exponent[i] - _EXPONENT_BIAS
        out[i] = k * _LN2_HI - ((half_square - (s * (half_square + r) + k * _LN2_LO)) - f)


@_jit
def log_in_place(values, scratch):
    """Natural logarithm of every element of the C-contiguous float64 array ``values``, in place.

    ``scratch``: an int64 array of shape ``(2, m)``, m >= ``values.size``. If some
    value is not a positive normal number (0, a negative, a subnormal, inf, NaN: none
    of which the metrics hand over), the whole array goes through the C library's
    ``log`` one value at a time instead (NumPy's error model: -inf for 0, NaN below).
    """
    flat = values.reshape(-1)
    n = flat.size
    if _split_exponent(flat, flat.view(np.int64), scratch[0, :n], scratch[1, :n]):
        for i in range(n):
            flat[i] = math.log(flat[i])
        return
    _log_reduced(scratch[0, :n].view(np.float64), scratch[1, :n].view(np.float64), flat)


# fdlibm's atan (``s_atan.c``) and exp (``e_exp.c``), for Q^AB/F's three orientations and four
# sigmoids per pixel: as scalar calls they were half of that metric's time. Same reductions and
# coefficients as fdlibm, the branches turned into selects so that each loop vectorises.

_ATAN_HI = (4.63647609000806093515e-01, 7.85398163397448278999e-01, 9.82793723247329054082e-01,
            1.57079632679489655800e00)  # atan(0.5), atan(1), atan(1.5), atan(inf), upper parts
_ATAN_LO = (2.26987774529616870924e-17, 3.06161699786838301793e-17, 1.39033110312309984516e-17,
            6.12323399573676603587e-17)
_AT0, _AT1, _AT2, _AT3 = 3.33333333333329318027e-01, -1.99999999998764832476e-01, 1.42857142725034663711e-01, \
    -1.11111104054623557880e-01
_AT4, _AT5, _AT6, _AT7 = 9.09088713343650656196e-02, -7.69187620504482999495e-02, 6.66107313738753120669e-02, \
    -5.83357013379057348645e-02
_AT8, _AT9, _AT10 = 4.97687799461593236017e-02, -3.65315727442169155270e-02, 1.62858201153657823623e-02


@_jit
def atan_in_place(values):
    """Arc tangent of every element of a C-contiguous float64 array, in place (fdlibm's ``atan``).

    fdlibm reduces |x| to a small argument by one of five rules, by range: x itself below
    7/16, then (2x - 1)/(2 + x), (x - 1)/(x + 1), (x - 1.5)/(1 + 1.5x) and -1/x, adding
    atan(1/2), atan(1), atan(3/2) or pi/2 back. Here each element computes every rule's
    numerator and denominator and selects by range (the same operations on the
    same values), and atan is odd. inf gives +-pi/2 and NaN NaN, as in fdlibm.
    """
    flat = values.reshape(-1)
    for i in range(flat.size):
        x = flat[i]
        u = abs(x)
        small = u < 0.4375
        below_one = u < 0.6875  # ranges of fdlibm's s_atan.c (on the high word: the same thresholds)
        near_one = u < 1.1875
        below_big = u < 2.4375
        numerator = u if small else (2.0 * u - 1.0 if below_one else (
            u - 1.0 if near_one else (u - 1.5 if below_big else -1.0)))
        denominator = 1.0 if small else (2.0 + u if below_one else (
            u + 1.0 if near_one else (1.0 + 1.5 * u if below_big else u)))
        hi = 0.0 if small else (_ATAN_HI[0] if below_one else (
            _ATAN_HI[1] if near_one else (_ATAN_HI[2] if below_big else _ATAN_HI[3])))
        lo = 0.0 if small else (_ATAN_LO[0] if below_one else (
            _ATAN_LO[1] if near_one else (_ATAN_LO[2] if below_big else _ATAN_LO[3])))
        r = numerator / denominator
        z = r * r
        w = z * z
        s1 = z * (_AT0 + w * (_AT2 + w * (_AT4 + w * (_AT6 + w * (_AT8 + w * _AT10)))))
        s2 = w * (_AT1 + w * (_AT3 + w * (_AT5 + w * (_AT7 + w * _AT9))))
        # fdlibm: x - x (s1 + s2) below 7/16, else atanhi - ((r (s1 + s2) - atanlo) - r); with
        # hi = lo = 0 the second is the first (0 - (t - r) = r - t exactly).
        result = hi - ((r * (s1 + s2) - lo) - r)
        flat[i] = math.copysign(result, x)  # odd, -0.0 included


_INV_LN2 = 1.44269504088896338700e00
_P1, _P2, _P3 = 1.66666666666666019037e-01, -2.77777777770155933842e-03, 6.61375632143793436117e-05
_P4, _P5 = -1.65339022054652515390e-06, 4.13813679705723846039e-08
# Beyond these, exp over- or underflows into subnormals: fdlibm's special paths (here math.exp).
_EXP_LARGEST = 7.09e02
_EXP_SMALLEST = -7.08e02


@_jit
def _exp_reduce(flat, rounded):
    """k = round(x / ln 2) as the double 1.5 * 2^52 + k (see :data:`_EXPONENT_BIAS`); whether all x are in range."""
    usual = True
    for i in range(flat.size):
        x = flat[i]
        rounded[i] = _INV_LN2 * x + _EXPONENT_BIAS
        usual &= (x < _EXP_LARGEST) & (x > _EXP_SMALLEST)
    return usual


@_jit
def _exp_scales(rounded_bits, scale_bits):
    """The bits of 2^k from those of 1.5 * 2^52 + k."""
    for i in range(rounded_bits.size):
        scale_bits[i] = (rounded_bits[i] - _EXPONENT_BIAS_BITS + 1023) << 52


@_jit
def _exp_reduced(flat, rounded, scale):
    """fdlibm's ``__ieee754_exp`` after the reduction x = k ln 2 + r, |r| <= ln 2 / 2."""
    for i in range(flat.size):
        k = rounded[i] - _EXPONENT_BIAS
        hi = flat[i] - k * _LN2_HI
        lo = k * _LN2_LO
        r = hi - lo
        t = r * r
        c = r - t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * _P5))))
        flat[i] = (1.0 - ((lo - (r * c) / (2.0 - c)) - hi)) * scale[i]


@_jit
def exp_in_place(values, scratch):
    """Exponential of every element of a C-contiguous float64 array, in place (fdlibm's ``exp``).

    ``scratch``: an int64 array of shape ``(2, m)``, m >= ``values.size``. If some value
    would overflow, reach the subnormals or is NaN, the whole array goes through the C
    library's ``exp`` one value at a time instead.
    """
    flat = values.reshape(-1)
    n = flat.size
    rounded = scratch[0, :n].view(np.float64)
    if not _exp_reduce(flat, rounded):
        for i in range(n):
            flat[i] = math.exp(flat[i])
        return
    _exp_scales(scratch[0, :n], scratch[1, :n])
    _exp_reduced(flat, rounded, scratch[1, :n].view(np.float64))


# --------------------------------------------------------------------------- FMI
#
# Feature mutual information scores every window pair with fmi.m's joint
# distribution (see MedFusionLib.metrics.fmi._fmi_window_scores for the algebra).
# Per block of windows the work is split where the logarithms are (see fmi_band,
# made by fmi_band_kernel): fmi_windows makes every window's pdf, log_in_place takes
# their logs, fmi_window_sums the entropies and correlations, the pair step merges the
# CDFs and writes each coupling cell's joint value, log_in_place takes those logs,
# fmi_scores sums.


@_jit
def fmi_windows(features, r0, r1, win_rows, win_cols, pdf, cdf, log_argument, stats):
    """Every image's window distributions for the windows whose top row is in ``[r0, r1)``.

    ``features`` = (sources..., fused) feature maps; windows are numbered row by row
    from ``r0`` and stored along the last axis, so every loop here runs along a row
    of windows over contiguous memory, which the compiler vectorises. For image p,
    cell q of the window (column-major, as MATLAB's ``(:)``) and window n:
    ``pdf[p, q, n]`` the min-max normalised window (all ones if constant) scaled to
    sum 1, ``cdf[p, q, n]`` its running sum,
    ``log_argument[p, q, n]`` the pdf with zeros replaced by 1 (its log is the
    entropy's ``log p``, 0 for empty cells), and ``stats[p, :4, n]`` = (sum of the CDF,
    centred sum of squares of the pdf, standard deviation of the cell index, mean of the pdf).
    """
    width = features[0].shape[1]
    out_cols = width - win_cols + 1
    length = win_rows * win_cols
    lo = np.empty(out_cols)
    hi = np.empty(out_cols)
    scale = np.empty(out_cols)
    acc = np.empty(out_cols)
    sum_cdf = np.empty(out_cols)
    first = np.empty(out_cols)
    second = np.empty(out_cols)
    centred = np.empty(out_cols)
    for p in range(len(features)):
        image = features[p]
        for r in range(r0, r1):
            window = slice((r - r0) * out_cols, (r - r0 + 1) * out_cols)
            lo[:] = image[r, :out_cols]
            hi[:] = image[r, :out_cols]
            for dr in range(win_rows):
                for dc in range(win_cols):
                    values = image[r + dr, dc : dc + out_cols]
                    # Selects, not min()/max(), whose NaN branches keep numba from vectorising.
                    for c in range(out_cols):
                        v = values[c]
                        lo[c] = v if v < lo[c] else lo[c]
                        hi[c] = v if v > hi[c] else hi[c]
            # One division per window, then products (values move by an ulp at most).
            for c in range(out_cols):
                scale[c] = 1.0 / (hi[c] - lo[c]) if hi[c] > lo[c] else 0.0
                acc[c] = 0.0
            for dc in range(win_cols):
                for dr in range(win_rows):
                    values = image[r + dr, dc : dc + out_cols]
                    out = pdf[p, dc * win_rows + dr, window]
                    for c in range(out_cols):
                        u = (values[c] - lo[c]) * scale[c] if hi[c] > lo[c] else 1.0
                        out[c] = u
                        acc[c] += u
            for c in range(out_cols):
                scale[c] = 1.0 / acc[c]
                acc[c] = 0.0
                sum_cdf[c] = 0.0
                first[c] = 0.0
                second[c] = 0.0
            for q in range(length):
                out = pdf[p, q, window]
                logs = log_argument[p, q, window]
                running = cdf[p, q, window]
                index = q + 1.0
                for c in range(out_cols):
                    x = out[c] * scale[c]
                    out[c] = x
                    logs[c] = x if x > 0 else 1.0
                    acc[c] += x
                    running[c] = acc[c]
                    sum_cdf[c] += acc[c]
                    first[c] += index * x
                    second[c] += index * index * x
            for c in range(out_cols):
                acc[c] /= length  # now the mean of the pdf
                centred[c] = 0.0
            for q in range(length):
                out = pdf[p, q, window]
                for c in range(out_cols):
                    d = out[c] - acc[c]
                    centred[c] += d * d
            # A flat window's pdf is exactly uniform, so exactly uncorrelated with any
            # other; its rounded mean would leave a sum of squares of ~1e-33, and two flat
            # windows a correlation of +-1 made of rounding alone.
            for c in range(out_cols):
                centred[c] = centred[c] if hi[c] > lo[c] else 0.0
            stats[p, 0, window] = sum_cdf
            stats[p, 1, window] = centred
            stats[p, 2, window] = np.sqrt(np.maximum(second - first * first, 0.0))
            stats[p, 3, window] = acc


@_jit
def fmi_window_sums(features, r0, r1, win_rows, win_cols, pdf, log_pdf, stats, same):
    """The per-window sums :func:`fmi_band_kernel`'s pair step needs, over rows of windows (vectorised).

    Inputs as :func:`fmi_windows` and the logarithm left them. Writes ``stats[p, 4, n]``,
    the entropy ``-sum p log p`` of image p's window n; ``stats[k, 5, n]``, the centred
    cross product ``sum_q (p_S - mean) (p_F - mean)`` of source k's window with the fused
    one; and ``same[k, n]``, whether the two windows score 1 without the merge: equal
    feature values, or both flat (as in fmi.m, see fmi._fmi_window_scores; fmi_windows left
    a flat window's centred sum of squares at exactly 0, and only a flat window's).
    """
    count = len(features)
    sources = count - 1
    fused = features[sources]
    out_cols = fused.shape[1] - win_cols + 1
    used = (r1 - r0) * out_cols
    length = pdf.shape[1]
    for p in range(count):
        entropy = stats[p, 4, :used]
        entropy[:] = 0.0
        for q in range(length):
            x = pdf[p, q, :used]
            log_x = log_pdf[p, q, :used]
            for n in range(used):
                entropy[n] -= x[n] * log_x[n]
    mean_f = stats[sources, 3, :used]
    flat_f = stats[sources, 1, :used]
    for k in range(sources):
        cross = stats[k, 5, :used]
        cross[:] = 0.0
        mean_s = stats[k, 3, :used]
        for q in range(length):
            x = pdf[k, q, :used]
            f = pdf[sources, q, :used]
            for n in range(used):
                cross[n] += (x[n] - mean_s[n]) * (f[n] - mean_f[n])
        image = features[k]
        flags = same[k, :used]
        for r in range(r0, r1):
            row = flags[(r - r0) * out_cols : (r - r0 + 1) * out_cols]
            row[:] = True
            for dr in range(win_rows):
                for dc in range(win_cols):
                    first = image[r + dr, dc : dc + out_cols]
                    second = fused[r + dr, dc : dc + out_cols]
                    for c in range(out_cols):
                        row[c] &= first[c] == second[c]
        flat_s = stats[k, 1, :used]
        for n in range(used):
            flags[n] |= (flat_s[n] == 0.0) & (flat_f[n] == 0.0)


@functools.lru_cache(maxsize=None)
def fmi_band_kernel(length: int):
    """:func:`fmi_band` compiled for windows of ``length`` cells (9 for FMI's 3x3 windows).

    The window length is a constant of the compiled code, so the compiler unrolls the
    merge's 2 ``length`` steps (about 10 % of FMI's time at 3x3). numba keys its on-disk
    cache by the closure's values as well, so each window length (and number of sources)
    compiles once per installation and change of this file (the Slicer module's worker
    compiles FMI's 3x3 windows while it warms up).
    """

    @_jit
    def fmi_band(features, first_row, end_row, win_rows, win_cols, rows, pdf, cdf, log_pdf, stats,
                 joint, log_joint, base, total, same, log_scratch, sums):
        """Add each source's FMI window scores over the windows whose top row is in ``[first_row, end_row)``.

        ``features`` = (sources..., fused) feature maps. Blocks of ``rows`` window rows
        at a time fill the buffers (see ``fmi._block_buffers``): :func:`fmi_windows`
        makes every window's pdf, :func:`log_in_place` takes their logs,
        :func:`fmi_window_sums` the entropies and correlations, the pair step below merges
        the CDFs and writes each coupling cell's joint value, :func:`log_in_place` takes
        those logs and :func:`fmi_scores` adds the window scores to ``sums``. One call per
        band keeps the whole loop in compiled code: called block by block from Python,
        two threads took the interpreter's lock in turns for every kernel call, and two
        bands ran only 1.3-1.7x faster than one.
        """
        sources = pdf.shape[0] - 1
        out_cols = features[0].shape[1] - win_cols + 1
        # Each side's values in ascending order, ending in +inf: the merge never reads past one.
        fused_values = np.full(length + 1, np.inf)
        other_values = np.full(length + 1, np.inf)
        pf = np.empty(length)
        lpf = np.empty(length)
        widths = np.empty(2 * length)
        products = np.empty(2 * length)
        for r0 in range(first_row, end_row, rows):
            r1 = min(r0 + rows, end_row)
            used = (r1 - r0) * out_cols
            # A last, partial block: the tails hold the previous block's logarithms (<= 0); back to
            # ones, so the vectorised logarithm never meets a value it hands to the C library.
            log_pdf[:, :, used:] = 1.0
            log_joint[:, used:, :] = 1.0
            fmi_windows(features, r0, r1, win_rows, win_cols, pdf, cdf, log_pdf, stats)
            log_in_place(log_pdf, log_scratch)
            fmi_window_sums(features, r0, r1, win_rows, win_cols, pdf, log_pdf, stats, same)
            # Each (source window, fused window) pair's joint cells: for source k and window n,
            # joint[k, n, :2l] the joint value of each coupling cell (0 for cells of zero width),
            # joint[k, n, 2l] the weight of log|1 - kappa|, log_joint the absolute values whose logs
            # the next log_in_place takes (1 where a value is 0), base the rest of H_S + H_F - H_J,
            # total = H_S + H_F (windows flagged same get zeros: they score 1).
            #
            # fmi.m's joint entropy -sum J log|J|, with J = kappa D + (1 - kappa) p_F p_S^T, is that
            # of the product part in closed form, corrected on the coupling's cells:
            #
            #   sum J log|J| = r log|r| (1 - m) - r (H_F + H_S) - r sum_c p_c (log p_F + log p_S)
            #                  + sum_c J_c log|J_c|,   r = 1 - kappa,  m = sum_c p_c
            #
            # over the cells c of nonzero width. Those cells are the intervals between consecutive
            # values of the fused CDF merged with the source CDF (or 1 minus it, reversed, for a
            # negative correlation), fused values first on ties. The merge is written without
            # branches (which value comes next is a select, not a jump the processor would
            # mispredict half the time); after a fused values and b source values, the next
            # interval is the cell (row a, column b), or column l - b for a negative correlation
            # (rows and columns clipped to l - 1), and adds width (l - a) (l - b) (or (l - a) b)
            # to the bound copula's sum.
            for n in range(used):
                h_f = stats[sources, 4, n]
                for q in range(length):
                    pf[q] = pdf[sources, q, n]
                    lpf[q] = log_pdf[sources, q, n]
                    fused_values[q] = cdf[sources, q, n]
                for k in range(sources):
                    if same[k, n]:
                        for e in range(2 * length + 1):
                            joint[k, n, e] = 0.0
                            log_joint[k, n, e] = 1.0
                        base[k, n] = 0.0
                        total[k, n] = 0.0
                        continue
                    h_s = stats[k, 4, n]
                    cross = stats[k, 5, n]
                    norm = math.sqrt(stats[k, 1, n] * stats[sources, 1, n])
                    corr = cross / norm if (cross != 0.0 and norm > 0.0) else 0.0
                    positive = corr >= 0.0
                    for j in range(length):
                        up = cdf[k, j, n]
                        down = 1.0 - cdf[k, length - 1 - j, n]
                        other_values[j] = up if positive else down
                    bound = 0.0
                    mass = 0.0
                    mass_log = 0.0
                    # The walk stays inside both arrays because their values are ordered and end in
                    # +inf: a NaN would break that, and none reaches here (the scoring scale refuses
                    # non-finite images, and every pdf sums to 1).
                    a = 0  # fused values merged so far
                    b = 0  # source values merged so far
                    previous = 0.0
                    for e in range(2 * length):
                        fused_next = fused_values[a]
                        other_next = other_values[b]
                        take_fused = fused_next <= other_next
                        # The smaller head, as a minimum (one instruction): selecting on take_fused
                        # compiles to a jump, mispredicted half the time. Equal heads are equal values.
                        value = fused_next if fused_next < other_next else other_next
                        w = value - previous
                        previous = value
                        bound += w * ((length - a) * ((length - b) if positive else b))
                        row = a if a < length else length - 1
                        col = ((b if b < length else length - 1) if positive
                               else (length - b if b > 0 else length - 1))
                        product = pf[row] * pdf[k, col, n]
                        widths[e] = w
                        products[e] = product
                        counted = product if w != 0.0 else 0.0
                        mass += counted
                        mass_log += counted * (lpf[row] + log_pdf[k, col, n])
                        a += take_fused
                        b += 1 - take_fused
                    sd_f = stats[sources, 2, n]
                    sd_s = stats[k, 2, n]
                    denominator = sd_f * sd_s
                    spread = (bound - stats[sources, 0, n] * stats[k, 0, n]) / (denominator if denominator > 0 else 1.0)
                    kappa = corr / spread if (sd_s > 0 and sd_f > 0 and corr != 0.0 and spread != 0.0) else 0.0
                    rest = 1.0 - kappa
                    for e in range(2 * length):
                        w = widths[e]
                        value = kappa * w + rest * products[e] if w != 0.0 else 0.0
                        joint[k, n, e] = value
                        log_joint[k, n, e] = abs(value) if value != 0.0 else 1.0
                    joint[k, n, 2 * length] = rest * (1.0 - mass)
                    log_joint[k, n, 2 * length] = abs(rest) if rest != 0.0 else 1.0
                    base[k, n] = h_s + h_f - rest * (h_f + h_s) - rest * mass_log
                    total[k, n] = h_s + h_f

            log_in_place(log_joint, log_scratch)
            fmi_scores(joint, log_joint, base, total, same, used, sums)

    return fmi_band


@_jit
def fmi_scores(joint, log_argument, base, total, same, used, sums):
    """Add each source's window scores ``2 I / (H_S + H_F)`` (1 for identical windows) to ``sums``."""
    sources, _, cells = joint.shape
    for k in range(sources):
        acc = 0.0
        for n in range(used):
            if same[k, n]:
                acc += 1.0
                continue
            information = base[k, n]
            for e in range(cells):
                information += joint[k, n, e] * log_argument[k, n, e]
            t = total[k, n]
            acc += 2.0 * information / t if (information != 0.0 and t > 0.0) else 0.0
        sums[k] += acc


def thread_count() -> int:
    """Threads the kernels' callers may use: numba's setting (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``)."""
    return numba.get_num_threads()
