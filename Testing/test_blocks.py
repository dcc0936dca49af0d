"""Tests of MedFusionLib.engine.blocks: block cutting, reconstruction and block-wise fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from MedFusionLib.engine import (
    BlockGrid,
    block_window,
    default_stride,
    extract_blocks,
    fuse_blockwise,
    reconstruct,
    validate_block_size,
    validate_stride,
)
from MedFusionLib.engine import blocks as blocks_module
from MedFusionLib.errors import InputError

BLOCK_SIZES = [2**i for i in range(1, 8)]  # 2 .. 128
WEIGHTS = ["uniform", "hann"]
# Identity tolerance per dtype, as promised by the module (values in [0, 1)).
ATOL = {torch.float32: 1e-6, torch.float64: 1e-12}
# Skip stride 1 where the blocks would exceed this many values (keeps the file fast).
CHEAP_BLOCK_VALUES = 5_000_000


def _images(shape: tuple[int, ...], dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=dtype)


def _assert_identity(images: torch.Tensor, grid: BlockGrid, weights: str) -> None:
    result = reconstruct(extract_blocks(images, grid), grid, weights)
    assert result.dtype == images.dtype
    assert result.shape == images.shape
    torch.testing.assert_close(result, images, rtol=0, atol=ATOL[images.dtype])


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, np.int64(8)])
def test_valid_block_sizes_are_returned_as_int(n):
    result = validate_block_size(n)
    assert result == int(n) and type(result) is int


@pytest.mark.parametrize("n", [3, 0, 1, -2, 6, 2048, 2.0, 8.0, True, False, "8", None])
def test_invalid_block_size_raises_with_value(n):
    with pytest.raises(InputError, match="block size") as info:
        validate_block_size(n)
    assert repr(n) in str(info.value)


def test_block_size_larger_than_image_names_both_sizes():
    with pytest.raises(InputError) as info:
        validate_block_size(256, (100, 100))
    message = str(info.value)
    assert "256" in message and "100x100" in message
    # n equal to the smaller side is fine; one more power of two is not.
    assert validate_block_size(64, (64, 300)) == 64
    with pytest.raises(InputError, match="64x300"):
        validate_block_size(128, (64, 300))
    with pytest.raises(InputError, match="128"):
        BlockGrid.for_image(64, 300, 128)


@pytest.mark.parametrize("n", BLOCK_SIZES)
def test_default_stride_is_half_the_block(n):
    assert default_stride(n) == n // 2
    assert BlockGrid.for_image(200, 200, n).stride == n // 2


@pytest.mark.parametrize("stride", [0, -1, 9, 1.5, 4.0, True, "4", None])
def test_invalid_stride_raises_with_value(stride):
    with pytest.raises(InputError, match="stride") as info:
        validate_stride(stride, 8)
    assert repr(stride) in str(info.value)
    if stride is not None:  # None is fuse_blockwise's "use the default"
        with pytest.raises(InputError, match="stride"):
            fuse_blockwise(_images((1, 1, 20, 20)), lambda b: b, 8, stride=stride)


def test_valid_strides_accepted():
    assert [validate_stride(s, 8) for s in range(1, 9)] == list(range(1, 9))
    assert type(validate_stride(np.int32(3), 8)) is int


def test_invalid_tensors_and_arguments_raise():
    grid = BlockGrid.for_image(20, 24, 4, 2)
    with pytest.raises(InputError, match="shape"):
        extract_blocks(torch.zeros(20, 24), grid)
    with pytest.raises(InputError, match="floating"):
        extract_blocks(torch.zeros(1, 1, 20, 24, dtype=torch.int64), grid)
    with pytest.raises(InputError, match="21x24"):
        extract_blocks(torch.zeros(1, 1, 21, 24), grid)
    with pytest.raises(InputError, match="torch.Tensor"):
        extract_blocks(np.zeros((1, 1, 20, 24)), grid)
    blocks = extract_blocks(torch.zeros(1, 1, 20, 24), grid)
    with pytest.raises(InputError, match="multiple"):
        reconstruct(blocks[:-1], grid)
    with pytest.raises(InputError, match="shape"):
        reconstruct(blocks[:, :, :2], grid)
    with pytest.raises(InputError, match="'gauss'"):
        reconstruct(blocks, grid, "gauss")
    with pytest.raises(InputError, match="'gauss'"):
        fuse_blockwise(torch.zeros(1, 1, 20, 24), lambda b: b, 4, weights="gauss")
    with pytest.raises(InputError, match="batch_blocks"):
        fuse_blockwise(torch.zeros(1, 1, 20, 24), lambda b: b, 4, batch_blocks=0)
    with pytest.raises(InputError, match="block_fn"):
        fuse_blockwise(torch.zeros(1, 2, 20, 24), lambda b: b[:, :, :2], 4)
    with pytest.raises(InputError, match="block_fn"):
        fuse_blockwise(torch.zeros(1, 2, 20, 24), lambda b: b[:1], 4, batch_blocks=3)
    with pytest.raises(InputError, match="height"):
        BlockGrid.for_image(0, 24, 2, 1)


def test_hand_built_inconsistent_grid_is_rejected():
    good = BlockGrid.for_image(37, 53, 8, 3)
    fields = dict(good.__dict__)
    fields["padded_height"] += 1
    with pytest.raises(InputError, match="inconsistent height"):
        BlockGrid(**fields)


# --------------------------------------------------------------------------- geometry


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    exponent=st.integers(1, 8),
    data=st.data(),
)
def test_grid_tiles_padded_image_exactly(height, width, exponent, data):
    n = 2**exponent
    if n > min(height, width):
        with pytest.raises(InputError):
            BlockGrid.for_image(height, width, n)
        return
    stride = data.draw(st.integers(1, n), label="stride")
    grid = BlockGrid.for_image(height, width, n, stride)
    for size, padded, before, after, count in (
        (height, grid.padded_height, grid.pad_top, grid.pad_bottom, grid.blocks_y),
        (width, grid.padded_width, grid.pad_left, grid.pad_right, grid.blocks_x),
    ):
        assert padded == size + before + after == n + (count - 1) * stride
        # Minimal padding, split evenly: one block fewer would not cover the image.
        assert 0 <= before + after < stride
        assert after - before in (0, 1)
        assert n + (count - 2) * stride < size or count == 1
    assert grid.num_blocks == grid.blocks_y * grid.blocks_x
    assert grid.padding_modes == ("reflect", "reflect")


def test_blocks_layout_is_batch_major_then_row_major():
    images = _images((2, 3, 12, 8))
    grid = BlockGrid.for_image(12, 8, 4, 4)  # tiles exactly, no padding
    blocks = extract_blocks(images, grid)
    assert blocks.shape == (2 * 6, 3, 4, 4)
    assert (grid.blocks_y, grid.blocks_x) == (3, 2)
    for b in range(2):
        for by in range(3):
            for bx in range(2):
                expected = images[b, :, 4 * by : 4 * by + 4, 4 * bx : 4 * bx + 4]
                assert torch.equal(blocks[b * 6 + by * 2 + bx], expected)


def test_padding_reflects_the_image():
    images = _images((1, 2, 11, 9))
    grid = BlockGrid.for_image(11, 9, 4, 3)  # padded to 13 x 10: pads (1, 1) rows, (0, 1) cols
    assert (grid.pad_top, grid.pad_bottom, grid.pad_left, grid.pad_right) == (1, 1, 0, 1)
    blocks = extract_blocks(images, grid).view(1, grid.num_blocks, 2, 4, 4)
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (1, 1), (0, 1)), mode="reflect")
    last = grid.num_blocks - 1
    np.testing.assert_array_equal(blocks[0, 0].numpy(), padded[0, :, 0:4, 0:4])
    np.testing.assert_array_equal(blocks[0, last].numpy(), padded[0, :, 9:13, 6:10])


def test_replicate_padding_when_reflection_impossible():
    # A hand-built grid may pad more than the image size; reflection cannot do that.
    grid = BlockGrid(
        height=3, width=5, n=4, stride=2, padded_height=8, padded_width=6,
        pad_top=3, pad_bottom=2, pad_left=1, pad_right=0, blocks_y=3, blocks_x=2,
    )
    assert grid.padding_modes == ("replicate", "reflect")
    images = _images((1, 1, 3, 5))
    blocks = extract_blocks(images, grid).view(1, 6, 1, 4, 4)
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (3, 2), (0, 0)), mode="edge")
    padded = np.pad(padded, ((0, 0), (0, 0), (0, 0), (1, 0)), mode="reflect")
    np.testing.assert_array_equal(blocks[0, 0, 0].numpy(), padded[0, 0, 0:4, 0:4])
    for weights in WEIGHTS:
        _assert_identity(images, grid, weights)


# --------------------------------------------------------------------------- identity reconstruction


def _strides(n: int, height: int, width: int) -> list[int]:
    strides = {n // 2, n, max(1, n // 4)}
    if BlockGrid.for_image(height, width, n, 1).num_blocks * n * n <= CHEAP_BLOCK_VALUES:
        strides.add(1)
    return sorted(strides)


@pytest.mark.parametrize(
    "height,width,n",
    [(h, w, n) for h, w in [(37, 53), (129, 130)] for n in BLOCK_SIZES if n <= min(h, w)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identity_reconstruction_every_block_size(height, width, n, dtype):
    images = _images((1, 1, height, width), dtype, seed=n)
    for stride in _strides(n, height, width):
        grid = BlockGrid.for_image(height, width, n, stride)
        for weights in WEIGHTS:
            _assert_identity(images, grid, weights)


def test_stride_one_with_heavy_overlap_is_exact_in_float32():
    # 4096 blocks cover some pixels: plain float32 summation would be off by ~5e-5.
    images = _images((1, 1, 129, 130), torch.float32, seed=3)
    grid = BlockGrid.for_image(129, 130, 64, 1)
    assert blocks_module._max_overlap(grid) == 64 * 64
    for weights in WEIGHTS:
        _assert_identity(images, grid, weights)


@pytest.mark.parametrize("height,width,n,stride", [(37, 53, 32, 7), (40, 33, 8, 3), (129, 130, 64, 1), (20, 9, 8, 8)])
def test_max_overlap_matches_brute_force_count(height, width, n, stride):
    # Decides when float32 sums switch to float64; an undercount would lose precision.
    grid = BlockGrid.for_image(height, width, n, stride)
    ones = torch.ones(1, n * n, grid.num_blocks, dtype=torch.float64)
    counts = torch.nn.functional.fold(ones, (grid.padded_height, grid.padded_width), n, stride=stride)
    assert blocks_module._max_overlap(grid) == int(counts.max())


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(2, 90),
    width=st.integers(2, 90),
    exponent=st.integers(1, 7),
    batch=st.integers(1, 2),
    channels=st.integers(1, 3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    weights=st.sampled_from(WEIGHTS),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_identity_reconstruction_property(height, width, exponent, batch, channels, dtype, weights, seed, data):
    # Largest allowed block is the largest power of two <= min(height, width).
    n = min(2**exponent, 1 << (min(height, width).bit_length() - 1))
    stride = data.draw(st.integers(1, n), label="stride")
    images = _images((batch, channels, height, width), dtype, seed)
    grid = BlockGrid.for_image(height, width, n, stride)
    blocks = extract_blocks(images, grid)
    assert blocks.shape == (batch * grid.num_blocks, channels, n, n)
    assert blocks.dtype == dtype
    _assert_identity(images, grid, weights)


def test_batch_and_channels_are_independent():
    images = _images((3, 2, 40, 33))
    grid = BlockGrid.for_image(40, 33, 8, 3)
    together = reconstruct(extract_blocks(images, grid), grid, "hann")
    for b in range(3):
        for c in range(2):
            alone = reconstruct(extract_blocks(images[b : b + 1, c : c + 1], grid), grid, "hann")
            torch.testing.assert_close(together[b : b + 1, c : c + 1], alone, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- weights


def test_hann_window_shape():
    for n in BLOCK_SIZES:
        window = block_window(n, "hann")
        assert window.shape == (n,)
        assert torch.all(window >= blocks_module.HANN_FLOOR) and torch.all(window <= 1)
        torch.testing.assert_close(window, window.flip(0), rtol=0, atol=1e-15)  # symmetric
        if n >= 4:
            assert window[n // 2] > 5 * window[0]  # centre dominates the edge
            # With 50 % overlap the shifted windows add to a constant: no ripple.
            shifted = window[: n // 2] + window[n // 2 :]
            torch.testing.assert_close(shifted, torch.full_like(shifted, shifted[0].item()))
    # The floor holds for large blocks too, where sin^2 alone would reach ~1.5e-4 at the edge.
    assert block_window(128, "hann").min() >= 1e-3
    assert torch.equal(block_window(8, "uniform"), torch.ones(8, dtype=torch.float64))
    assert block_window(8, "hann", dtype=torch.float32).dtype == torch.float32


def _block_constant_fn(blocks: torch.Tensor) -> torch.Tensor:
    # Each fused block is constant: its own mean. Neighbouring blocks disagree, like a real model.
    return blocks.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *blocks.shape[-2:]).clone()


def test_weights_change_blending_but_stay_within_block_values():
    images = _images((1, 2, 48, 40))
    results = {w: fuse_blockwise(images, _block_constant_fn, 8, 4, weights=w) for w in WEIGHTS}
    assert not torch.allclose(results["uniform"], results["hann"])
    # A weighted average of block values never leaves their range.
    grid = BlockGrid.for_image(48, 40, 8, 4)
    values = _block_constant_fn(extract_blocks(images, grid))
    for result in results.values():
        assert result.min() >= values.min() - 1e-12 and result.max() <= values.max() + 1e-12
    # The Hann blend is smoother: smaller jumps between neighbouring pixels.
    jumps = {w: r.diff(dim=-1).abs().max() for w, r in results.items()}
    assert jumps["hann"] < jumps["uniform"]


# --------------------------------------------------------------------------- fuse_blockwise


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channel_average_block_fn_gives_pixel_average(weights, dtype):
    images = _images((2, 3, 37, 53), dtype, seed=7)
    fused = fuse_blockwise(images, lambda b: b.mean(dim=1, keepdim=True), 16, 8, weights=weights)
    assert fused.shape == (2, 1, 37, 53) and fused.dtype == dtype
    torch.testing.assert_close(fused, images.mean(dim=1, keepdim=True), rtol=0, atol=ATOL[dtype])


def _block_constant_fn_plus_square(blocks: torch.Tensor) -> torch.Tensor:
    return _block_constant_fn(blocks) + blocks[:, :1] ** 2


@pytest.mark.parametrize("batch_blocks", [1, 7, 64, 10_000])
@pytest.mark.parametrize("weights", WEIGHTS)
def test_chunked_equals_unchunked(batch_blocks, weights):
    images = _images((2, 2, 45, 38), seed=11)
    sizes: list[int] = []

    def block_fn(blocks: torch.Tensor) -> torch.Tensor:
        sizes.append(blocks.shape[0])
        return _block_constant_fn_plus_square(blocks)

    whole = fuse_blockwise(images, _block_constant_fn_plus_square, 8, 3, weights=weights)
    chunked = fuse_blockwise(images, block_fn, 8, 3, batch_blocks=batch_blocks, weights=weights)
    total = 2 * BlockGrid.for_image(45, 38, 8, 3).num_blocks
    assert sum(sizes) == total
    assert max(sizes) == min(batch_blocks, total)
    assert len(sizes) == -(-total // batch_blocks)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-14)


def test_inputs_not_modified_even_by_in_place_block_fn():
    for size in [(1, 1, 8, 8), (2, 2, 37, 53)]:  # one block without padding: the aliasing risk
        images = _images(size, seed=5)
        original = images.clone()

        def destructive(blocks: torch.Tensor) -> torch.Tensor:
            return blocks.mul_(0.0)[:, :1]

        fused = fuse_blockwise(images, destructive, 8, 4)
        assert torch.equal(images, original)
        assert torch.all(fused == 0)
        grid = BlockGrid.for_image(size[-2], size[-1], 8, 4)
        blocks = extract_blocks(images, grid)
        assert blocks.untyped_storage().data_ptr() != images.untyped_storage().data_ptr()
        blocks_copy = blocks.clone()
        reconstruct(blocks, grid, "hann")
        assert torch.equal(blocks, blocks_copy)
        assert torch.equal(images, original)


def test_runs_on_the_input_device_without_hard_coded_cpu():
    # The meta device has no data: any tensor created on another device would fail to mix.
    images = torch.empty(2, 3, 37, 53, device="meta")
    for weights in WEIGHTS:
        fused = fuse_blockwise(images, lambda b: b.mean(1, keepdim=True), 8, 1, batch_blocks=500, weights=weights)
        assert fused.device.type == "meta" and fused.shape == (2, 1, 37, 53) and fused.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    images = _images((1, 2, 37, 53), torch.float32)
    fn = lambda b: b.mean(1, keepdim=True)  # noqa: E731
    cpu = fuse_blockwise(images, fn, 8, 3, weights="hann")
    gpu = fuse_blockwise(images.cuda(), fn, 8, 3, weights="hann")
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-6)
