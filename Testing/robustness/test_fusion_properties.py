"""Property-based tests (Hypothesis) of fusion on random valid inputs.

For any group of K = 2..3 registered images of any size from 1x1 up, any pixel type and any
intensities (including extreme ones and constants), with the shipped model or a baseline,
whole-image or block-wise: the result has the inputs' shape, is float32, finite and inside
[0, 1], the inputs are left untouched, and (for methods that treat inputs alike) the input
order does not matter. Example counts stay modest so CI stays fast.
"""

from __future__ import annotations

import hashlib

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from MedFusionLib.baselines import BASELINES
from MedFusionLib.fusion import fuse, fuse_volume

DTYPES = ["uint8", "int8", "uint16", "int16", "int32", "float32", "float64"]
METHODS = ["default", *sorted(BASELINES)]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def image_groups(draw, max_side: int = 40):
    """K same-shape images of one dtype; values uniform, constant, or spread over extreme magnitudes."""
    count = draw(st.integers(2, 3))
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        kind = draw(st.sampled_from(["uniform", "constant", "extreme"]))
        if dtype.kind == "f":
            limit = 300 if dtype == np.float64 else 30  # the largest magnitudes the type holds (float32: 3e38)
            scale = 10.0 ** draw(st.integers(-limit, limit)) if kind == "extreme" else 1.0
            image = (rng.random(shape) - (0.5 if kind == "extreme" else 0.0)) * scale
            if kind == "constant":
                image = np.full(shape, rng.random() * scale)
        else:
            info = np.iinfo(dtype)
            low, high = (info.min, info.max) if kind == "extreme" else (max(info.min, -1024), min(info.max, 3000))
            image = rng.integers(low, high, shape, endpoint=True)
            if kind == "constant":
                image = np.full(shape, image.flat[0])
        images.append(np.asarray(image, dtype=dtype))
    return images


def _digest(images):
    return [hashlib.sha256(np.ascontiguousarray(i).tobytes()).hexdigest() for i in images]


def _check(result, shape):
    assert result.image.shape == shape
    assert result.image.dtype == np.float32
    assert np.all(np.isfinite(result.image))
    assert result.image.min() >= 0.0 and result.image.max() <= 1.0
    assert result.colour is None


@SETTINGS
@given(images=image_groups(), method=st.sampled_from(METHODS))
def test_fusion_shape_dtype_range_and_inputs_untouched(images, method):
    before = _digest(images)
    result = fuse(images, method=method)
    _check(result, images[0].shape)
    assert _digest(images) == before


@SETTINGS
@given(images=image_groups(), exponent=st.integers(1, 5), data=st.data())
def test_blockwise_fusion_of_any_valid_block_size(images, exponent, data):
    side = min(images[0].shape)
    block = 2 ** min(exponent, max(1, int(np.log2(side)))) if side >= 2 else None
    if block is None:  # 1-pixel-wide images hold no 2x2 block: whole-image fusion only
        result = fuse(images)
    else:
        stride = data.draw(st.sampled_from([None, max(1, block // 2), block]))
        result = fuse(images, block_size=block, stride=stride)
    _check(result, images[0].shape)


@SETTINGS
@given(images=image_groups(max_side=24), method=st.sampled_from(["default", "average", "maximum", "laplacian"]),
       order=st.permutations([0, 1, 2]))
def test_input_order_does_not_matter(images, method, order):
    """The default CNN shares its weights across inputs and pools their context, so it treats
    inputs alike, as these baselines do; the result must not depend on their order."""
    permuted = [images[i] for i in order if i < len(images)]
    first, second = fuse(images, method=method).image, fuse(permuted, method=method).image
    np.testing.assert_allclose(first, second, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(depth=st.integers(1, 5), height=st.integers(2, 24), width=st.integers(2, 24), axis=st.integers(0, 2),
       dtype=st.sampled_from(["int16", "float32", "uint8"]), seed=st.integers(0, 1000))
def test_volume_fusion_shape_and_range(depth, height, width, axis, dtype, seed):
    rng = np.random.default_rng(seed)
    volumes = [(rng.random((depth, height, width)) * (3000 if dtype == "int16" else 255 if dtype == "uint8" else 1))
               .astype(dtype) for _ in range(2)]
    before = _digest(volumes)
    fused = fuse_volume(volumes, axis=axis)
    assert fused.array.shape == (depth, height, width) and fused.array.dtype == np.float32
    assert np.all(np.isfinite(fused.array)) and 0.0 <= fused.array.min() and fused.array.max() <= 1.0
    assert _digest(volumes) == before
