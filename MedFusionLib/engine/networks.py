"""The two network families: a CNN that predicts multi-scale fusion weights, and a DBM-initialised block network.

Both map a batch of K co-registered inputs ``(B, K, H, W)`` (intensities standardised
to [0, 1]) to one fused image ``(B, 1, H, W)``.

:class:`PyramidWeightCNN` (paper 002's CNN, in the form of Liu et al. 2017, the CNN
method paper 002 compares with): a light convolutional encoder looks at the inputs at
1/2, 1/4 and 1/8 resolution and, for every level of a Laplacian pyramid of the inputs,
predicts per-pixel weights (a softmax over the K inputs); the fused pyramid is the
weighted sum of the inputs' pyramids, collapsed back into an image. The fused image is
therefore a convex combination of the inputs at every scale: the network decides
*which input wins where*, it cannot invent structure. Full-resolution work is a few
multiply-adds per pixel; the convolutions run on the downsampled maps.

:class:`BlockDBMNet` (paper 000's DBM): the feed-forward network unrolled from a stack of
RBMs pre-trained with contrastive divergence (:mod:`.rbm`), mapping the K flattened
n x n input blocks to the n x n fused block (a correction added to the blocks' mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rbm import RBM, unroll

#: Burt & Adelson's 5-tap binomial generating kernel.
_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


def _separable_blur(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Blur every channel with the binomial kernel (times ``scale`` per axis), mirrored borders."""
    channels = x.shape[1]
    kernel = torch.tensor(_BINOMIAL, dtype=x.dtype, device=x.device) * (scale / 16.0)
    mode = "reflect" if min(x.shape[-2:]) > 2 else "replicate"  # reflect needs 3+ pixels
    x = F.pad(x, (2, 2, 2, 2), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, 5).expand(channels, 1, 1, 5), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, 5, 1).expand(channels, 1, 5, 1), groups=channels)


def pyramid_reduce(x: torch.Tensor) -> torch.Tensor:
    """Blur and keep every second row and column (a side of n becomes ceil(n / 2))."""
    return _separable_blur(x)[..., ::2, ::2]


def pyramid_expand(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-insert up to ``size`` and blur with twice the kernel per axis (keeps a constant constant)."""
    up = x.new_zeros((*x.shape[:-2], *size))
    up[..., ::2, ::2] = x
    return _separable_blur(up, scale=2.0)


def max_levels(height: int, width: int, coarsest: int = 4) -> int:
    """Pyramid levels that keep the coarsest level at least ``coarsest`` pixels on its shorter side."""
    levels = 0
    side = min(height, width)
    while side >= 2 * coarsest:
        side = (side + 1) // 2
        levels += 1
    return levels


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``[L_0, ..., L_{levels-1}, base]`` of a ``(B, C, H, W)`` tensor; collapsing it is exact."""
    pyramid = []
    current = x
    for _ in range(levels):
        coarse = pyramid_reduce(current)
        pyramid.append(current - pyramid_expand(coarse, current.shape[-2:]))
        current = coarse
    pyramid.append(current)
    return pyramid


def collapse_pyramid(pyramid: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`laplacian_pyramid`."""
    image = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        image = pyramid_expand(image, detail.shape[-2:]) + detail
    return image


class PyramidWeightCNN(nn.Module):
    """CNN predicting per-level, per-pixel fusion weights of a Laplacian pyramid.

    :param n_inputs: K, the number of co-registered inputs.
    :param levels: Laplacian pyramid depth (clipped per call to what the image allows).
    :param width: channels of the context encoder.
    :param hidden: channels of the per-level weight heads (1x1 convolutions).
    """

    family = "cnn"

    def __init__(self, n_inputs: int = 2, levels: int = 4, width: int = 16, hidden: int = 16) -> None:
        super().__init__()
        self.n_inputs = n_inputs
        self.levels = levels
        self.width = width
        self.hidden = hidden
        k = n_inputs
        # Context encoder at 1/2, 1/4 and 1/8 resolution: which input carries structure here.
        self.encode_half = nn.Conv2d(2 * k, width, 3, padding=1)
        self.encode_quarter = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.encode_eighth = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.context_eighth = nn.Conv2d(width, width, 3, padding=1)
        # Per-level heads: [context, local activity of each input, the inputs themselves] -> K logits.
        # One head for the detail levels (shared: fusion rules are scale-similar) plus a
        # level embedding, and one for the base.
        self.detail_head = nn.Sequential(
            nn.Conv2d(width + 2 * k + 1, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, k, 1)
        )
        self.base_head = nn.Sequential(
            nn.Conv2d(width + 2 * k, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, k, 1)
        )

    def config(self) -> dict[str, int]:
        """Constructor arguments, stored with the weights."""
        return {"n_inputs": self.n_inputs, "levels": self.levels, "width": self.width, "hidden": self.hidden}

    def _context(self, x: torch.Tensor) -> list[torch.Tensor]:
        half = pyramid_reduce(x)
        # Local contrast (absolute deviation from the local mean) tells the encoder where detail is.
        contrast = (half - _separable_blur(half)).abs()
        f_half = F.relu(self.encode_half(torch.cat([half, contrast], dim=1)))
        f_quarter = F.relu(self.encode_quarter(f_half))
        f_eighth = F.relu(self.context_eighth(F.relu(self.encode_eighth(f_quarter))))
        return [f_half, f_quarter, f_eighth]

    def fusion_weights(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The inputs' Laplacian pyramids and the per-level softmax weights, ``(B, K, h_l, w_l)`` each."""
        levels = min(self.levels, max_levels(*x.shape[-2:]))
        pyramid = laplacian_pyramid(x, levels)
        contexts = self._context(x) if min(x.shape[-2:]) >= 8 else None
        weights = []
        for index, level in enumerate(pyramid):
            size = level.shape[-2:]
            if contexts is None:
                context = level.new_zeros((level.shape[0], self.width, *size))
            else:
                # The encoder scale closest to this level (level l has 1/2^l resolution).
                source = contexts[min(max(index - 1, 0), len(contexts) - 1)]
                context = F.interpolate(source, size=size, mode="bilinear", align_corners=False)
            if index < len(pyramid) - 1:
                activity = _separable_blur(level.abs())
                depth = level.new_full((level.shape[0], 1, *size), index / max(self.levels, 1))
                logits = self.detail_head(torch.cat([context, activity, level, depth], dim=1))
            else:
                logits = self.base_head(torch.cat([context, level, _separable_blur(level)], dim=1))
            weights.append(torch.softmax(logits, dim=1))
        return pyramid, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid, weights = self.fusion_weights(x)
        fused = [(w * level).sum(dim=1, keepdim=True) for w, level in zip(weights, pyramid)]
        return collapse_pyramid(fused)


class BlockDBMNet(nn.Module):
    """Feed-forward block network unrolled from a pre-trained RBM stack (paper 000's DBM).

    Input ``(B, K, n, n)`` blocks are flattened to ``K n^2`` visible values and mapped
    through :func:`.rbm.unroll`'s network (standardisation, the RBMs' sigmoid layers,
    a linear head) to an ``n^2`` correction added to the mean of the K blocks, so an
    untrained head starts from plain averaging.

    :param n_inputs: K.
    :param block_size: n.
    :param layer_sizes: hidden layer sizes of the RBM stack.
    :param rbms: a pre-trained stack to unroll (default: freshly initialised RBMs, the
        shape a saved model is loaded into).
    """

    family = "dbm"

    def __init__(
        self,
        n_inputs: int = 2,
        block_size: int = 8,
        layer_sizes: tuple[int, ...] | list[int] = (256, 128),
        rbms: list[RBM] | None = None,
    ) -> None:
        super().__init__()
        self.n_inputs = int(n_inputs)
        self.block_size = int(block_size)
        self.layer_sizes = tuple(int(s) for s in layer_sizes)
        if rbms is None:
            sizes = [self.n_inputs * self.block_size**2, *self.layer_sizes]
            rbms = [RBM(sizes[i], sizes[i + 1], "gaussian" if i == 0 else "bernoulli") for i in range(len(sizes) - 1)]
        self.body = unroll(rbms, self.block_size**2, output_init_std=0.0)

    def config(self) -> dict[str, object]:
        """Constructor arguments, stored with the weights."""
        return {"n_inputs": self.n_inputs, "block_size": self.block_size, "layer_sizes": list(self.layer_sizes)}

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        batch = blocks.shape[0]
        correction = self.body(blocks.reshape(batch, -1))
        return blocks.mean(dim=1, keepdim=True) + correction.view(batch, 1, self.block_size, self.block_size)


NETWORKS: dict[str, type[nn.Module]] = {"cnn": PyramidWeightCNN, "dbm": BlockDBMNet}
