"""Fusion engine: block cutting/reconstruction (:mod:`.blocks`) and, later, models and training."""

from .blocks import (
    BlockGrid,
    block_window,
    default_stride,
    extract_blocks,
    fuse_blockwise,
    reconstruct,
    validate_block_size,
    validate_stride,
)

__all__ = [
    "BlockGrid",
    "block_window",
    "default_stride",
    "extract_blocks",
    "fuse_blockwise",
    "reconstruct",
    "validate_block_size",
    "validate_stride",
]
