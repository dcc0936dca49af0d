"""Cutting images into overlapping ``n x n`` blocks and putting them back together.

Block-based fusion cuts each registered source image into overlapping square
blocks of side ``n = 2**i``, fuses every block with a learned model and
reassembles the fused image by averaging the overlapping blocks.  Everything
here is vectorised torch code (strided views, :func:`torch.nn.functional.fold`),
runs on whatever device the input tensor lives on and keeps its floating dtype.

Geometry (see :class:`BlockGrid`)
    Blocks start every ``stride`` pixels.  So that they tile the image exactly
    for *any* height and width, the image is first padded by the fewest pixels
    that make ``padded - n`` a multiple of ``stride`` (always ``< stride`` pixels
    per axis), split as evenly as possible between the two sides (the extra
    pixel goes to the bottom/right).  Padding mirrors the image (``reflect``,
    no edge pixel repeated) so the blocks at the border see plausible
    anatomy; an axis whose padding on one side is not smaller than the image
    falls back to ``replicate`` (impossible for grids made by
    :meth:`BlockGrid.for_image`, where padding ``< stride <= n <= min(H, W)``,
    but possible for a hand-built grid).  The padding is cropped away again by
    :func:`reconstruct`.

Block layout
    :func:`extract_blocks` returns ``(B * L, C, n, n)``: one row per block,
    batch-major (block ``b * L + l`` is block ``l`` of image ``b``) and, within
    an image, row-major over block positions (left to right, then top to
    bottom).  The ``C`` co-registered sources stay together as the channels of
    a block, so the tensor (or any slice of it) feeds straight into a model
    mapping ``(N, C, n, n)`` to ``(N, 1, n, n)``; :func:`reconstruct` takes the
    model output in the same layout.  ``blocks.view(B, L, C, n, n)`` separates
    the images without copying.

Overlap weights
    :func:`reconstruct` computes, per pixel, ``sum_i w_i(p) v_i(p) / sum_i w_i(p)``
    over the blocks ``i`` covering it.  ``"uniform"`` (the default, the plain
    average used by the block-fusion papers) has ``w = 1``.  ``"hann"`` uses the
    separable raised-cosine window ``w(t) = f + (1 - f) sin^2(pi (t + 1/2) / n)``
    with floor ``f = HANN_FLOOR``: block centres dominate so seams between
    blocks fused inconsistently are blended smoothly.  The half-pixel offset
    keeps the window off its zeros, and the floor bounds every weight below by
    ``f`` whatever ``n`` is, so a pixel covered only by block edges (image
    corners, or stride ``n``) still gets a well-conditioned weight sum.  Both
    schemes are exact for an identity model: the weights cancel.

Memory
    With ``L = ceil((H - n) / s + 1) * ceil((W - n) / s + 1)`` blocks, the
    blocks hold ``L * n * n`` values per channel, about ``(n / s)**2`` times the
    image (4x for the default 50 % overlap, ``n**2`` times for stride 1).
    :func:`extract_blocks` materialises them once (a strided view is copied
    straight into the block layout, no intermediate ``unfold`` matrix);
    :func:`reconstruct` makes one more block-sized copy (the weighted, fold-ready
    matrix) plus an image-sized result, and computes the per-pixel weight sums
    from 1D sums rather than folding a second block-sized tensor.
    :func:`fuse_blockwise` bounds the *model's* memory by feeding it at most
    ``batch_blocks`` blocks at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..validation import is_integer

__all__ = [
    "HANN_FLOOR",
    "MAX_BLOCK_EXPONENT",
    "WEIGHT_KINDS",
    "BlockGrid",
    "block_window",
    "default_stride",
    "extract_blocks",
    "fuse_blockwise",
    "reconstruct",
    "validate_block_size",
    "validate_stride",
]

#: Largest accepted block size is ``2 ** MAX_BLOCK_EXPONENT`` (1024).
MAX_BLOCK_EXPONENT = 10

#: Overlap weighting schemes understood by :func:`reconstruct`.
WEIGHT_KINDS = ("uniform", "hann")

#: Above this many blocks per pixel, :func:`reconstruct` sums float32 blocks in float64
#: so that an identity model stays exact to ~1e-6 (see ``_accumulation_dtype``).
_MAX_LOW_PRECISION_OVERLAP = 16

#: Smallest value of the ``"hann"`` window (reached at block edges), relative to its peak of 1.
HANN_FLOOR = 1e-3


def validate_block_size(n: int, image_shape: tuple[int, int] | None = None) -> int:
    """Return the block size ``n`` as an ``int``, or raise :class:`InputError`.

    :param n: block side; an integer power of two from 2 to ``2 ** MAX_BLOCK_EXPONENT``.
        Booleans and floats (even ``2.0``) are rejected.
    :param image_shape: ``(height, width)`` of the image to cut; when given, ``n``
        must not exceed ``min(height, width)``.
    """
    if not is_integer(n):
        raise InputError(
            f"block size: expected an integer power of two, got {n!r} ({type(n).__name__})"
        )
    n = int(n)
    largest = 2**MAX_BLOCK_EXPONENT
    # n & (n - 1) == 0 exactly for powers of two (and 0, excluded by the range check).
    if n < 2 or n > largest or n & (n - 1):
        raise InputError(
            f"block size: expected a power of two between 2 and {largest}, got {n!r}"
        )
    if image_shape is not None:
        height, width = (int(v) for v in image_shape)
        if n > min(height, width):
            raise InputError(
                f"block size {n} is larger than the image size {height}x{width}; "
                f"use a block size of at most {min(height, width)}"
            )
    return n


def default_stride(n: int) -> int:
    """Default stride for block size ``n``: ``n // 2``, i.e. 50 % overlap between neighbours.

    :param n: block size (validated with :func:`validate_block_size`).
    """
    return validate_block_size(n) // 2


def validate_stride(stride: int, n: int) -> int:
    """Return ``stride`` as an ``int``, or raise :class:`InputError`.

    :param stride: distance in pixels between the starts of neighbouring blocks;
        an integer with ``1 <= stride <= n`` (larger strides would leave pixels
        uncovered). Booleans and floats are rejected.
    :param n: block size (validated with :func:`validate_block_size`).
    """
    n = validate_block_size(n)
    if not is_integer(stride):
        raise InputError(
            f"stride: expected an integer between 1 and the block size {n}, "
            f"got {stride!r} ({type(stride).__name__})"
        )
    stride = int(stride)
    if not 1 <= stride <= n:
        raise InputError(
            f"stride: expected an integer between 1 and the block size {n}, got {stride!r}"
        )
    return stride


def _axis_layout(size: int, n: int, stride: int) -> tuple[int, int, int]:
    """Return ``(blocks, pad_before, pad_after)`` tiling an axis of ``size >= n`` pixels exactly."""
    blocks = -(-(size - n) // stride) + 1  # ceil((size - n) / stride) + 1
    total = n + (blocks - 1) * stride - size  # always in [0, stride)
    before = total // 2
    return blocks, before, total - before


@dataclass(frozen=True)
class BlockGrid:
    """Where the blocks of one image size lie; build it with :meth:`for_image`.

    The padded image is ``padded_height x padded_width``, the original image sits
    at rows ``pad_top : pad_top + height`` and columns ``pad_left : pad_left + width``
    of it, and ``blocks_y x blocks_x`` blocks of side ``n``, ``stride`` apart,
    cover it exactly (``padded_height == n + (blocks_y - 1) * stride``, same for
    the width).  Hand-built grids are checked for consistency.
    """

    height: int
    width: int
    n: int
    stride: int
    padded_height: int
    padded_width: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    blocks_y: int
    blocks_x: int

    def __post_init__(self) -> None:
        for name in ("height", "width", "padded_height", "padded_width", "blocks_y", "blocks_x"):
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                raise InputError(f"BlockGrid.{name}: expected a positive integer, got {value!r}")
        for name in ("pad_top", "pad_bottom", "pad_left", "pad_right"):
            value = getattr(self, name)
            if not is_integer(value) or value < 0:
                raise InputError(f"BlockGrid.{name}: expected a non-negative integer, got {value!r}")
        validate_block_size(self.n)
        validate_stride(self.stride, self.n)
        for axis, size, padded, before, after, blocks in (
            ("height", self.height, self.padded_height, self.pad_top, self.pad_bottom, self.blocks_y),
            ("width", self.width, self.padded_width, self.pad_left, self.pad_right, self.blocks_x),
        ):
            if padded != size + before + after or padded != self.n + (blocks - 1) * self.stride:
                raise InputError(
                    f"BlockGrid: inconsistent {axis}: {size} + padding {before}+{after} = "
                    f"{size + before + after}, padded {padded}, {blocks} blocks of {self.n} "
                    f"every {self.stride} span {self.n + (blocks - 1) * self.stride}"
                )

    @classmethod
    def for_image(cls, height: int, width: int, n: int, stride: int | None = None) -> "BlockGrid":
        """Grid of ``n x n`` blocks, ``stride`` apart, covering a ``height x width`` image.

        Pads each axis by the fewest pixels (``< stride``) that make the blocks
        fit exactly, split evenly between the two sides.

        :param height: image height in pixels (``>= n``).
        :param width: image width in pixels (``>= n``).
        :param n: block size, a power of two (see :func:`validate_block_size`).
        :param stride: block step, ``1 <= stride <= n``; ``None`` means :func:`default_stride`.
        """
        for name, value in (("image height", height), ("image width", width)):
            if not is_integer(value) or value < 1:
                raise InputError(f"{name}: expected a positive integer, got {value!r}")
        height, width = int(height), int(width)
        n = validate_block_size(n, (height, width))
        stride = default_stride(n) if stride is None else validate_stride(stride, n)
        blocks_y, top, bottom = _axis_layout(height, n, stride)
        blocks_x, left, right = _axis_layout(width, n, stride)
        return cls(
            height=height,
            width=width,
            n=n,
            stride=stride,
            padded_height=height + top + bottom,
            padded_width=width + left + right,
            pad_top=top,
            pad_bottom=bottom,
            pad_left=left,
            pad_right=right,
            blocks_y=blocks_y,
            blocks_x=blocks_x,
        )

    @property
    def num_blocks(self) -> int:
        """Blocks per image, ``L = blocks_y * blocks_x``."""
        return self.blocks_y * self.blocks_x

    @property
    def padding_modes(self) -> tuple[str, str]:
        """Padding mode of the height and the width axis: ``"reflect"`` or ``"replicate"``.

        Reflection needs each side's padding to be smaller than the axis.
        """
        vertical = "reflect" if max(self.pad_top, self.pad_bottom) < self.height else "replicate"
        horizontal = "reflect" if max(self.pad_left, self.pad_right) < self.width else "replicate"
        return vertical, horizontal


def _check_images(images: object, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise InputError(
            f"{name}: expected a (batch, channels, height, width) tensor, got shape {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise InputError(f"{name}: expected a floating-point tensor, got dtype {images.dtype}")
    if min(images.shape) == 0:
        raise InputError(f"{name}: the tensor is empty (shape {tuple(images.shape)})")
    return images


def _pad(images: torch.Tensor, grid: BlockGrid) -> torch.Tensor:
    """Pad ``images`` to the grid's padded size (returns the input itself when no padding is needed)."""
    vertical, horizontal = grid.padding_modes
    rows = (0, 0, grid.pad_top, grid.pad_bottom)
    cols = (grid.pad_left, grid.pad_right, 0, 0)
    if vertical == horizontal:
        if any(rows) or any(cols):
            images = F.pad(images, (*cols[:2], *rows[2:]), mode=vertical)
        return images
    # Modes differ per axis: pad one axis at a time (both copies are image-sized, not block-sized).
    if any(rows):
        images = F.pad(images, rows, mode=vertical)
    if any(cols):
        images = F.pad(images, cols, mode=horizontal)
    return images


def extract_blocks(images: torch.Tensor, grid: BlockGrid) -> torch.Tensor:
    """Cut images into the overlapping blocks of ``grid``.

    The result never shares memory with ``images``, so a model may modify it in place.

    :param images: ``(B, C, H, W)`` floating tensor, ``(H, W) == (grid.height, grid.width)``;
        the ``C`` channels are the co-registered sources.  Any device.
    :param grid: the block geometry, from :meth:`BlockGrid.for_image`.
    :returns: ``(B * L, C, n, n)`` tensor, same dtype and device, ``L = grid.num_blocks``;
        block ``b * L + by * grid.blocks_x + bx`` is the block of image ``b`` whose top-left
        corner is at row ``by * stride``, column ``bx * stride`` of the padded image.
    """
    images = _check_images(images)
    batch, channels, height, width = images.shape
    if (height, width) != (grid.height, grid.width):
        raise InputError(
            f"images: size {height}x{width} does not match the block grid size "
            f"{grid.height}x{grid.width}"
        )
    padded = _pad(images, grid)
    n, s = grid.n, grid.stride
    # Strided view (B, C, Ly, Lx, n, n): no copy yet.
    view = padded.unfold(2, n, s).unfold(3, n, s)
    # One copy straight into the block layout.  clone() (not reshape) guarantees a copy
    # even when the permuted view happens to be contiguous (e.g. one block, no padding),
    # so the blocks never alias the caller's images.
    blocks = view.permute(0, 2, 3, 1, 4, 5).clone(memory_format=torch.contiguous_format)
    return blocks.view(batch * grid.num_blocks, channels, n, n)


def block_window(
    n: int,
    weights: str = "uniform",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """1D overlap weight of each position along a block side; the 2D weight is its outer product.

    :param n: block size.
    :param weights: ``"uniform"`` (all ones) or ``"hann"``
        (``HANN_FLOOR + (1 - HANN_FLOOR) * sin^2(pi * (t + 0.5) / n)``, ``t = 0 .. n-1``:
        symmetric, peak near 1 in the centre, ``>= HANN_FLOOR`` at the edges, and with
        stride ``n // 2`` the shifted windows sum to a constant).
    :param dtype: floating dtype of the result.
    :param device: device of the result.
    :returns: ``(n,)`` tensor of positive weights.
    """
    n = validate_block_size(n)
    if weights == "uniform":
        return torch.ones(n, dtype=dtype, device=device)
    if weights == "hann":
        # Computed in float64 then cast, so float32 and float64 windows agree to rounding.
        t = torch.arange(n, dtype=torch.float64, device=device)
        window = HANN_FLOOR + (1.0 - HANN_FLOOR) * torch.sin(math.pi * (t + 0.5) / n) ** 2
        return window.to(dtype)
    raise InputError(f"weights: expected one of {', '.join(map(repr, WEIGHT_KINDS))}, got {weights!r}")


def _axis_weight_sum(window: torch.Tensor, blocks: int, stride: int, size: int) -> torch.Tensor:
    """Sum over the blocks along one axis of the window covering each padded pixel, ``(size,)``."""
    n = window.shape[0]
    starts = torch.arange(blocks, device=window.device) * stride
    positions = (starts[:, None] + torch.arange(n, device=window.device)[None, :]).reshape(-1)
    total = torch.zeros(size, dtype=window.dtype, device=window.device)
    return total.index_add_(0, positions, window.repeat(blocks))


def _max_overlap(grid: BlockGrid) -> int:
    """Most blocks covering any one pixel: per axis ``min(ceil(n / stride), blocks)``."""
    per_row = min(-(-grid.n // grid.stride), grid.blocks_y)
    per_col = min(-(-grid.n // grid.stride), grid.blocks_x)
    return per_row * per_col


def _accumulation_dtype(blocks: torch.Tensor, grid: BlockGrid) -> torch.dtype:
    """Dtype in which :func:`reconstruct` sums the overlapping blocks.

    ``fold`` adds the ``k`` blocks covering a pixel one after another, so the
    rounding error grows like ``k * eps``: for float32 and heavy overlap (e.g.
    n = 64, stride 1, k up to 4096) an identity model would be off by ~5e-5.
    Above ``_MAX_LOW_PRECISION_OVERLAP`` blocks per pixel, lower-precision
    blocks are therefore summed in float64 (the fold buffer then costs twice
    as much) and the result cast back.  Devices without float64 (Apple MPS)
    keep the input dtype.
    """
    if (
        blocks.dtype != torch.float64
        and _max_overlap(grid) > _MAX_LOW_PRECISION_OVERLAP
        and blocks.device.type != "mps"
    ):
        return torch.float64
    return blocks.dtype


def reconstruct(blocks: torch.Tensor, grid: BlockGrid, weights: str = "uniform") -> torch.Tensor:
    """Reassemble images from (fused) blocks by weighted averaging of the overlaps.

    :param blocks: ``(B * L, C', n, n)`` floating tensor in the layout of
        :func:`extract_blocks` (``L = grid.num_blocks``); ``C'`` is usually 1 (fused).
    :param grid: the geometry the blocks were cut with.
    :param weights: ``"uniform"`` (default: plain average of the overlapping blocks) or
        ``"hann"`` (raised-cosine window favouring block centres, to soften seams); see
        :func:`block_window`.
    :returns: ``(B, C', H, W)`` tensor, same dtype and device as ``blocks``, padding cropped.
    """
    if not isinstance(blocks, torch.Tensor):
        raise InputError(f"blocks: expected a torch.Tensor, got {type(blocks).__name__}")
    n, s, count = grid.n, grid.stride, grid.num_blocks
    if blocks.ndim != 4 or tuple(blocks.shape[-2:]) != (n, n) or blocks.shape[1] == 0:
        raise InputError(
            f"blocks: expected a (batch * {count}, channels, {n}, {n}) tensor, got shape {tuple(blocks.shape)}"
        )
    if not blocks.is_floating_point():
        raise InputError(f"blocks: expected a floating-point tensor, got dtype {blocks.dtype}")
    if blocks.shape[0] == 0 or blocks.shape[0] % count:
        raise InputError(
            f"blocks: {blocks.shape[0]} blocks is not a positive multiple of the {count} blocks per image"
        )
    batch, channels = blocks.shape[0] // count, blocks.shape[1]
    acc_dtype = _accumulation_dtype(blocks, grid)
    window = block_window(n, weights, dtype=acc_dtype, device=blocks.device)

    # fold wants (B, C' * n * n, L); the transposed view is strided, so build the
    # fold input with exactly one block-sized copy (weighting fused into it).
    columns = blocks.reshape(batch, count, channels * n * n).transpose(1, 2)
    folded_input = torch.empty(
        (batch, channels * n * n, count), dtype=acc_dtype, device=blocks.device
    )
    if weights == "uniform":
        folded_input.copy_(columns)
    else:
        weight2d = (window[:, None] * window[None, :]).reshape(1, n * n)
        weight_cols = weight2d.expand(channels, n * n).reshape(1, channels * n * n, 1)
        torch.mul(columns, weight_cols, out=folded_input)
    summed = F.fold(
        folded_input,
        output_size=(grid.padded_height, grid.padded_width),
        kernel_size=n,
        stride=s,
    )
    del folded_input
    # The 2D weight and the grid are separable, so the per-pixel weight sum is the
    # outer product of two 1D sums: no second block-sized fold needed.
    norm_y = _axis_weight_sum(window, grid.blocks_y, s, grid.padded_height)
    norm_x = _axis_weight_sum(window, grid.blocks_x, s, grid.padded_width)
    top, left = grid.pad_top, grid.pad_left
    summed = summed[:, :, top : top + grid.height, left : left + grid.width]
    norm = norm_y[top : top + grid.height, None] * norm_x[None, left : left + grid.width]
    # Division allocates the (contiguous) result, so the cropped view is not returned.
    return (summed / norm).to(blocks.dtype)


def fuse_blockwise(
    images: torch.Tensor,
    block_fn: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    stride: int | None = None,
    batch_blocks: int | None = None,
    weights: str = "uniform",
) -> torch.Tensor:
    """Cut ``images`` into blocks, fuse each block with ``block_fn`` and reassemble.

    ``block_fn`` runs under the caller's autograd mode: wrap the call in
    :func:`torch.no_grad` for inference.  ``images`` is never modified.

    Memory: the blocks (``~(n / stride)**2`` times ``images``) and the fused blocks
    are held whole; ``batch_blocks`` bounds only what ``block_fn`` sees at once,
    which is what dominates for a neural network.  The result does not depend on
    ``batch_blocks`` as long as ``block_fn`` treats blocks independently.

    :param images: ``(B, C, H, W)`` floating tensor, the ``C`` co-registered sources as channels.
    :param block_fn: maps ``(N, C, n, n)`` blocks to ``(N, C', n, n)`` fused blocks
        (``C'`` normally 1), same ``N`` and ``n``.
    :param n: block size, a power of two ``<= min(H, W)``.
    :param stride: block step, ``1 <= stride <= n``; ``None`` means ``n // 2``.
    :param batch_blocks: most blocks passed to ``block_fn`` per call; ``None`` means all at once.
    :param weights: overlap weighting, ``"uniform"`` (default) or ``"hann"``; see :func:`reconstruct`.
    :returns: ``(B, C', H, W)`` fused images, dtype and device of ``block_fn``'s output.
    """
    images = _check_images(images)
    if not callable(block_fn):
        raise InputError(f"block_fn: expected a callable, got {type(block_fn).__name__}")
    if weights not in WEIGHT_KINDS:
        raise InputError(f"weights: expected one of {', '.join(map(repr, WEIGHT_KINDS))}, got {weights!r}")
    if batch_blocks is not None and (not is_integer(batch_blocks) or batch_blocks < 1):
        raise InputError(f"batch_blocks: expected a positive integer or None, got {batch_blocks!r}")
    grid = BlockGrid.for_image(images.shape[-2], images.shape[-1], n, stride)
    blocks = extract_blocks(images, grid)
    total = blocks.shape[0]
    chunk = total if batch_blocks is None else min(int(batch_blocks), total)

    fused: torch.Tensor | None = None
    for start in range(0, total, chunk):  # loop over chunks, not blocks
        stop = min(start + chunk, total)
        out = block_fn(blocks[start:stop])
        if (
            not isinstance(out, torch.Tensor)
            or out.ndim != 4
            or out.shape[0] != stop - start
            or tuple(out.shape[-2:]) != (grid.n, grid.n)
        ):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(
                f"block_fn: expected a ({stop - start}, channels, {grid.n}, {grid.n}) tensor "
                f"for {stop - start} input blocks, got {shape}"
            )
        if fused is None:
            if out.shape[0] == total:
                fused = out  # single chunk: no need to copy into a second buffer
                break
            # Preallocate once rather than torch.cat-ing a list (which would hold two copies).
            fused = out.new_empty((total, *out.shape[1:]))
        elif out.shape[1:] != fused.shape[1:] or out.dtype != fused.dtype:
            raise InputError(
                f"block_fn: chunk output shape {tuple(out.shape[1:])} / dtype {out.dtype} differs "
                f"from the first chunk's {tuple(fused.shape[1:])} / {fused.dtype}"
            )
        fused[start:stop] = out
    del blocks
    assert fused is not None  # total >= 1 because n <= min(H, W)
    return reconstruct(fused, grid, weights)
