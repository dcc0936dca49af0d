"""Compiled inner loops of the CNN's inference on the CPU, and the DBM's last steps (numba, the ``fast`` extra).

Imported only through :func:`MedFusionLib.engine.networks.compiled_kernels`, so MedFusion runs
without numba: every kernel here stands in for a few PyTorch calls in :mod:`.networks`, which
stay the path for training (autograd), GPUs and installations without numba; the tests check
that both give the same fused images (to float32 rounding).

Why kernels at all: the network has about 2,000 weights, so its inference is a few hundred
multiply-adds per pixel, yet in eager PyTorch each step makes a new full-size tensor (the
score heads' hidden layer is 16 times a pyramid level), and streaming those through memory,
plus the cost of each of the ~900 small calls, was almost all of the fusion's time. These
kernels stream over the image row by row and keep the per-pixel intermediate values in
registers and a row of scratch.

The blur, REDUCE and EXPAND do their arithmetic in the order of :func:`.networks._separable_blur`
(rows, then columns; outer pairs, inner pairs, centre), so they give the same float32 numbers;
the score heads sum their channels in another order than PyTorch's matrix products, which
changes the scores in the last bits only.
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
#: Parallel (numba.prange over rows) for the kernels that do most of the work. Compiling them takes
#: about 20 s on the first fusion of a new installation (2 cores); the code is cached next to this
#: file (or in numba's user cache where the package folder is read-only) and loads in well under 1 s.
_jit_parallel = numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")


@numba.njit(cache=True, nogil=True, inline="always")
def _mirror(index: int, size: int, replicate: bool) -> int:
    """PyTorch's ``reflect`` (``c b | a b c``) or ``replicate`` (``a a | a b c``) padding, for 2 samples."""
    if index < 0:
        return 0 if replicate else -index
    if index >= size:
        return size - 1 if replicate else 2 * (size - 1) - index
    return index


@numba.njit(cache=True, nogil=True, inline="always")
def _vertical(source, n, i, height, replicate, row, w0, w1, w2):
    """Row ``i`` of plane ``n`` blurred along the columns (the first pass of :func:`blur`) into ``row``."""
    up2 = source[n, _mirror(i - 2, height, replicate)]
    up1 = source[n, _mirror(i - 1, height, replicate)]
    centre = source[n, i]
    down1 = source[n, _mirror(i + 1, height, replicate)]
    down2 = source[n, _mirror(i + 2, height, replicate)]
    for j in range(row.size):
        row[j] = w0 * (up2[j] + down2[j]) + w1 * (up1[j] + down1[j]) + w2 * centre[j]


@numba.njit(cache=True, nogil=True, inline="always")
def _tap(line, j, size, replicate, w0, w1, w2):
    """The 5-tap blur of ``line`` at sample ``j``, borders mirrored (the second pass, near a border)."""
    return (w0 * (line[_mirror(j - 2, size, replicate)] + line[_mirror(j + 2, size, replicate)])
            + w1 * (line[_mirror(j - 1, size, replicate)] + line[_mirror(j + 1, size, replicate)])
            + w2 * line[j])


@_jit_parallel
def blur(source, out, w0, w1, w2, replicate):
    """The separable 5-tap blur ``[w0, w1, w2, w1, w0]`` of every ``(H, W)`` plane of ``source`` into ``out``.

    :param source: ``(N, H, W)`` float32, C-contiguous.
    :param out: the same shape; may not be ``source``.
    :param w0: outer tap; ``w1``: inner tap; ``w2``: centre tap.
    :param replicate: replicate borders (for sides under 3 pixels) instead of reflecting them.
    """
    planes, height, width = source.shape
    rows = np.empty_like(source)
    for job in numba.prange(planes * height):
        _vertical(source, job // height, job % height, height, replicate, rows[job // height, job % height], w0, w1, w2)
    for job in numba.prange(planes * height):
        row = rows[job // height, job % height]
        target = out[job // height, job % height]
        for j in range(2, width - 2):  # the interior in one branch-free loop (vectorised)
            target[j] = w0 * (row[j - 2] + row[j + 2]) + w1 * (row[j - 1] + row[j + 1]) + w2 * row[j]
        for j in range(width):
            if j < 2 or j >= width - 2:
                target[j] = _tap(row, j, width, replicate, w0, w1, w2)


@numba.njit(cache=True, nogil=True, inline="always")
def _weighted_sum(out, weights, planes, y):
    """``out = sum_c weights[c] * planes[c, y]``, the channels added in order (one output row of a 1x1
    convolution). ``planes`` is a C-contiguous ``(C, H, W)`` array: its rows are then known to be
    contiguous, which the compiler needs to vectorise (a strided ``(C, W)`` view made this 2x slower)."""
    for x in range(out.size):
        out[x] = 0.0
    for c in range(weights.size):
        row = planes[c, y]
        weight = weights[c]
        for x in range(out.size):
            out[x] += weight * row[x]


@_jit_parallel
def context_part(context, count, weight_own, weight_pooled, part):
    """The context's share of a score head's hidden layer: ``part[n, j] = weight_own[j] . context[n]
    + weight_pooled[j] . mean_k context[k]`` (the mean over the K inputs of n's batch item).

    The mean's share is the same for the K inputs of a batch item, so it is computed once per item
    and row and added to each input's own share.

    :param context: ``(B*K, C, H, W)`` float32 features of every input.
    :param count: K.
    :param part: ``(B*K, hidden, H, W)`` float32, written.
    """
    total, channels, height, width = context.shape
    hidden = weight_own.shape[0]
    items = total // count
    for job in numba.prange(items * height):
        first = (job // height) * count
        y = job % height
        pooled = np.zeros((channels, width), dtype=np.float32)
        for k in range(first, first + count):
            for c in range(channels):
                row = context[k, c, y]
                for x in range(width):
                    pooled[c, x] += row[x]
        for c in range(channels):
            for x in range(width):
                pooled[c, x] /= count
        shared = np.empty((hidden, width), dtype=np.float32)  # the mean's share
        for j in range(hidden):
            _weighted_sum(shared[j], weight_pooled[j], pooled.reshape(channels, 1, width), 0)
        own_sum = np.empty(width, dtype=np.float32)
        for n in range(first, first + count):
            for j in range(hidden):
                _weighted_sum(own_sum, weight_own[j], context[n], y)
                hidden_row = part[n, j, y]
                shared_row = shared[j]
                for x in range(width):  # PyTorch's grouping: (own part + mean part), bias added with the terms
                    hidden_row[x] = own_sum[x] + shared_row[x]


@_jit_parallel
def head_scores(part, terms, weight_terms, bias, out_weight, out_bias, out):
    """A score head's output from its context part: ``out[n, y, x] = out_bias + sum_j out_weight[j] *
    relu(weight_terms[j] . terms[n, :, y, x] + bias[j] + part[n, j, y, x])`` (1x1 conv, ReLU, 1x1 conv, fused).

    :param part: ``(B*K, hidden, H, W)`` from :func:`context_part`.
    :param terms: ``(B*K, P, H, W)`` per-pixel terms.
    :param out: ``(B*K, H, W)`` float32, written.
    """
    total, hidden, height, width = part.shape
    for job in numba.prange(total * height):
        n = job // height
        y = job % height
        hidden_row = np.empty(width, dtype=np.float32)
        score = np.zeros(width, dtype=np.float32)
        for j in range(hidden):
            _weighted_sum(hidden_row, weight_terms[j], terms[n], y)
            source = part[n, j, y]
            scale = out_weight[j]
            for x in range(width):  # PyTorch's grouping: (terms + bias) + context part; products summed, then bias
                value = (hidden_row[x] + bias[j]) + source[x]
                if value > 0:
                    score[x] += value * scale
        target = out[n, y]
        for x in range(width):
            target[x] = score[x] + out_bias


@_jit
def reduce(source, out, w0, w1, w2, replicate):
    """:func:`blur`, kept at every second row and column only (a pyramid REDUCE): ``out`` is
    ``(N, ceil(H/2), ceil(W/2))``; the same numbers as blurring everything and subsampling."""
    planes, height, width = source.shape
    half_height, half_width = out.shape[1], out.shape[2]
    rows = np.empty((planes, half_height, width), dtype=source.dtype)
    for job in numba.prange(planes * half_height):
        n, r = job // half_height, job % half_height
        _vertical(source, n, 2 * r, height, replicate, rows[n, r], w0, w1, w2)
    for job in numba.prange(planes * half_height):
        row = rows[job // half_height, job % half_height]
        target = out[job // half_height, job % half_height]
        for c in range(half_width):
            target[c] = _tap(row, 2 * c, width, replicate, w0, w1, w2)


@numba.njit(cache=True, nogil=True, inline="always")
def _inserted(line, index, size, replicate):
    """Sample ``index`` (mirrored into ``[0, size)``) of a zero-inserted line whose even samples are ``line``."""
    k = _mirror(index, size, replicate)
    return line[k // 2] if k % 2 == 0 else np.float32(0.0)


@_jit_parallel
def expand(source, out, w0, w1, w2, replicate):
    """A pyramid EXPAND: zero-insert ``source`` ``(N, h, w)`` up to ``out``'s ``(N, H, W)`` and :func:`blur`
    it (weights already doubled), without forming the zero-inserted image.

    Away from the borders a sample's five taps hold either the three even ones (``w0, w2, w0``)
    or the two odd ones (``w1, w1``) of the inserted image; the zeros of the others add exactly
    nothing, so these shorter sums are bit for bit the full ones. Within two samples of a border,
    where mirroring can land on either parity, the full five-tap sum is taken.
    """
    planes, height, width = out.shape
    coarse_width = source.shape[2]
    rows = np.empty((planes, height, coarse_width), dtype=source.dtype)  # vertical pass, even columns only
    for job in numba.prange(planes * height):
        n = job // height
        i = job % height
        row = rows[n, i]
        p = i // 2
        if 2 <= i < height - 2 and i % 2 == 0:
            above, centre, below = source[n, p - 1], source[n, p], source[n, p + 1]
            for q in range(coarse_width):
                row[q] = w0 * (above[q] + below[q]) + w2 * centre[q]
        elif 2 <= i < height - 2:
            above, below = source[n, p], source[n, p + 1]
            for q in range(coarse_width):
                row[q] = w1 * (above[q] + below[q])
        else:
            for q in range(coarse_width):
                column = source[n, :, q]
                row[q] = (w0 * (_inserted(column, i - 2, height, replicate)
                                + _inserted(column, i + 2, height, replicate))
                          + w1 * (_inserted(column, i - 1, height, replicate)
                                  + _inserted(column, i + 1, height, replicate))
                          + w2 * _inserted(column, i, height, replicate))
    for job in numba.prange(planes * height):
        n = job // height
        i = job % height
        row = rows[n, i]
        target = out[n, i]
        inner = width - 2  # samples 2 .. width - 3 need no mirroring
        last = (inner - 2) // 2  # the last q with both 2q and 2q + 1 inside
        for q in range(1, last + 1):
            target[2 * q] = w0 * (row[q - 1] + row[q + 1]) + w2 * row[q]
            target[2 * q + 1] = w1 * (row[q] + row[q + 1])
        even = 2 * (last + 1)
        if 2 <= even < inner:
            q = even // 2
            target[even] = w0 * (row[q - 1] + row[q + 1]) + w2 * row[q]
        for j in range(width):
            if j < 2 or j >= inner:
                target[j] = (w0 * (_inserted(row, j - 2, width, replicate) + _inserted(row, j + 2, width, replicate))
                             + w1 * (_inserted(row, j - 1, width, replicate) + _inserted(row, j + 1, width, replicate))
                             + w2 * _inserted(row, j, width, replicate))


# --------------------------------------------------------------------------- whole pyramids
#
# A Laplacian pyramid, and its collapse, in one call each instead of a REDUCE, an EXPAND and a
# subtraction (or an addition) per level from Python: the same kernels, in the same order, so the
# same float32 numbers; what goes is the per-call cost of about 20 small steps per fusion.


@numba.njit(cache=True, nogil=True, inline="always")
def _replicates(height, width):
    """The border rule of :func:`MedFusionLib.engine.networks._compiled_filter`: replicate below 3 samples."""
    return min(height, width) <= 2


# Parallel, like the EXPAND they call: their own subtractions and additions share its threads.
@_jit_parallel
def laplacian_pyramid(source, coarse, details, reduce_taps, expand_taps):
    """``details[l] = G_l - EXPAND(G_{l+1})`` and ``coarse[l] = G_{l+1} = REDUCE(G_l)``, ``G_0 = source``.

    :param source: ``(N, H, W)`` float32 planes.
    :param coarse: the levels' REDUCE outputs, ``(N, ceil(H_l / 2), ceil(W_l / 2))`` each (the last is the base).
    :param details: the detail levels, ``(N, H_l, W_l)`` each; written.
    :param reduce_taps: the blur's three taps; ``expand_taps``: the EXPAND's (doubled) ones.
    """
    current = source
    for level in range(len(details)):
        height, width = current.shape[1], current.shape[2]
        replicate = _replicates(height, width)
        out = coarse[level]
        reduce(current, out, reduce_taps[0], reduce_taps[1], reduce_taps[2], replicate)
        detail = details[level]
        expand(out, detail, expand_taps[0], expand_taps[1], expand_taps[2], replicate)
        planes = detail.shape[0]
        for job in numba.prange(planes * height):
            fine = current[job // height, job % height]
            row = detail[job // height, job % height]
            for j in range(width):
                row[j] = fine[j] - row[j]
        current = out


@_jit_parallel
def collapse_pyramid(details, base, images, expand_taps):
    """``images[l] = EXPAND(images[l+1]) + details[l]``, from ``base`` up (``images[0]`` is the image).

    :param details: ``(N, H_l, W_l)`` each; ``base``: ``(N, h, w)``; ``images``: like ``details``, written.
    """
    current = base
    for level in range(len(details) - 1, -1, -1):
        image = images[level]
        detail = details[level]
        height, width = image.shape[1], image.shape[2]
        expand(current, image, expand_taps[0], expand_taps[1], expand_taps[2], _replicates(height, width))
        planes = image.shape[0]
        for job in numba.prange(planes * height):
            row = image[job // height, job % height]
            add = detail[job // height, job % height]
            for j in range(width):
                row[j] = row[j] + add[j]
        current = image


# --------------------------------------------------------------------------- the last steps of a fusion
#
# The weighted levels summed, collapsed and clamped (both families: the DBM weights its levels
# too): in PyTorch a dozen full-size tensors, here three passes, with PyTorch's numbers bit for bit.
# (The finest level's score upsampling stays PyTorch's: a compiled bilinear pass was no faster and
# could only match its weights to an ulp.)


@_jit_parallel
def weighted_levels(levels, weights, fused):
    """``fused[l][b] = sum_k weights[l][b, k] * levels[l][b, k]``, the inputs added in order, for every level.

    :param levels: the inputs' pyramid levels, ``(B, K, h_l, w_l)`` float32 each; ``weights``: the same shapes.
    :param fused: ``(B, h_l, w_l)`` float32 each, written.
    """
    for level in range(len(levels)):
        x = levels[level]
        w = weights[level]
        out = fused[level]
        batch, count, height, width = x.shape
        for job in numba.prange(batch * height):
            b = job // height
            i = job % height
            row = out[b, i]
            for j in range(width):
                row[j] = w[b, 0, i, j] * x[b, 0, i, j]
            for k in range(1, count):
                for j in range(width):
                    row[j] += w[b, k, i, j] * x[b, k, i, j]


@_jit_parallel
def clamp_to_inputs(image, inputs):
    """``image = min(max(image, min_k inputs[:, k]), max_k inputs[:, k])`` per pixel, in place.

    :param image: ``(B, H, W)`` float32; ``inputs``: ``(B, K, H, W)`` float32.
    """
    batch, count, height, width = inputs.shape
    for job in numba.prange(batch * height):
        b = job // height
        i = job % height
        row = image[b, i]
        for j in range(width):
            lo = inputs[b, 0, i, j]
            hi = lo
            for k in range(1, count):
                v = inputs[b, k, i, j]
                lo = v if v < lo else lo
                hi = v if v > hi else hi
            value = row[j]
            value = lo if value < lo else value
            row[j] = hi if value > hi else value
