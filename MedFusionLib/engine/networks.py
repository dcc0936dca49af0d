"""The two network families: a CNN that predicts multi-scale fusion weights, and a DBM-initialised block network.

Both map a batch of K co-registered inputs ``(B, K, H, W)`` (intensities standardised
to [0, 1]) to one fused image ``(B, 1, H, W)``.

:class:`PyramidWeightCNN` (paper 002's CNN, in the form of Liu et al. 2017, the CNN
method paper 002 compares with): a light convolutional encoder looks at the inputs at
1/2, 1/4 and 1/8 resolution and, for every level of a Laplacian pyramid of the inputs,
predicts per-pixel weights (a softmax over the K inputs); the fused pyramid is the
weighted sum of the inputs' pyramids, collapsed back into an image. The fused image is
therefore a convex combination of the inputs at every scale: the network decides
*which input wins where*, it cannot invent structure. The collapsed image is then
clamped, pixel by pixel, to the range the inputs span there (``clamp_to_inputs``):
blending levels with different weights can overshoot near strong edges (a halo around
bright CT bone), and a fused value brighter or darker than every input at that pixel is
an invented intensity a reader should never see. Full-resolution work is a few
multiply-adds per pixel; the convolutions run on the downsampled maps.

:class:`BlockDBMNet` (paper 000's DBM): the feed-forward network unrolled from a stack of
RBMs pre-trained with contrastive divergence (:mod:`.rbm`), mapping the K flattened
n x n input blocks to per-block fusion scores of the inputs' pyramid levels (or, in
models of the first form, to the n x n fused block itself).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..contributions import combine_scales
from ..optional import optional_module
from .rbm import RBM, unroll

#: Burt & Adelson's 5-tap binomial generating kernel.
_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)
#: Its outer, inner and centre taps as float32 (what PyTorch multiplies float32 tensors by), for the
#: blur (scale 1) and the EXPAND (scale 2, which keeps a constant constant after zero insertion).
_TAPS = {scale: tuple(np.float32(t * scale / 16.0) for t in _BINOMIAL[:3]) for scale in (1.0, 2.0)}


def compiled_kernels() -> ModuleType | None:
    """The numba-compiled inference kernels (:mod:`._kernels`), or None when numba is not installed.

    Imported on first use: numba is optional (the ``fast`` extra) and its import takes a moment.
    """
    return optional_module("MedFusionLib.engine._kernels")


#: Set to False to run every step in PyTorch (the path of training and GPUs) even where kernels exist.
USE_KERNELS = True


def _kernels_for(*tensors: torch.Tensor) -> ModuleType | None:
    """The compiled kernels when they may stand in for PyTorch here: CPU float32 tensors in inference mode.

    Only in ``torch.inference_mode`` (what the fusion API runs in): training, and its validation
    under ``no_grad``, keep PyTorch's own arithmetic, so training stays bit-for-bit reproducible.
    """
    if not USE_KERNELS or not torch.is_inference_mode_enabled():
        return None
    for tensor in tensors:  # (a loop, not any(generator): this runs ~20 times per fusion)
        if tensor.dtype != torch.float32 or tensor.device.type != "cpu":
            return None
    return compiled_kernels()


def _separable_blur(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Blur every channel with the binomial kernel (times ``scale`` per axis), mirrored borders.

    Written as shifted sums rather than a depthwise convolution: for a 5-tap kernel
    on a few channels that is several times faster on CPUs (oneDNN's depthwise
    kernels are tuned for many channels), and the same on GPUs. On the CPU at
    inference, one compiled pass does the same arithmetic (:func:`._kernels.blur`).
    """
    compiled = _compiled_filter("blur", x, tuple(x.shape[-2:]), scale)
    if compiled is not None:
        return compiled
    mode = "reflect" if min(x.shape[-2:]) > 2 else "replicate"  # reflect needs 3+ pixels
    padded = F.pad(x, (2, 2, 2, 2), mode=mode)
    w0, w1, w2 = (t * scale / 16.0 for t in _BINOMIAL[:3])
    rows = w0 * (padded[..., :-4, :] + padded[..., 4:, :]) + w1 * (padded[..., 1:-3, :] + padded[..., 3:-1, :])
    rows = rows + w2 * padded[..., 2:-2, :]
    out = w0 * (rows[..., :-4] + rows[..., 4:]) + w1 * (rows[..., 1:-3] + rows[..., 3:-1])
    return out + w2 * rows[..., 2:-2]


def _compiled_filter(kernel_name: str, x: torch.Tensor, size: tuple[int, int], scale: float) -> torch.Tensor | None:
    """A compiled blur, REDUCE or EXPAND (:mod:`._kernels`) to ``size``, where :func:`_kernels_for` allows
    one, else None. The borders replicate, as in PyTorch's path, when the finer of the two grids (the
    one the blur runs on) has a side under 3 pixels."""
    kernels = _kernels_for(x)
    if kernels is None:
        return None
    replicate = min(max(a, b) for a, b in zip(x.shape[-2:], size)) <= 2
    planes = _planes(x)
    out = np.empty((planes.shape[0], *size), dtype=np.float32)
    getattr(kernels, kernel_name)(planes, out, *_TAPS[scale], replicate)
    return torch.from_numpy(out.reshape(*x.shape[:-2], *size))


def _planes(x: torch.Tensor) -> np.ndarray:
    """A CPU tensor's ``(N, H, W)`` planes as a C-contiguous NumPy array (shared memory where possible).

    The compiled path hands NumPy arrays to the kernels and makes its outputs with NumPy: each
    PyTorch call costs microseconds even on a tiny tensor, and a fusion makes dozens of them.
    """
    array = x.numpy() if x.is_contiguous() else x.contiguous().numpy()
    return array.reshape(-1, *array.shape[-2:])


def pyramid_reduce(x: torch.Tensor) -> torch.Tensor:
    """Blur and keep every second row and column (a side of n becomes ceil(n / 2))."""
    height, width = x.shape[-2:]
    compiled = _compiled_filter("reduce", x, ((height + 1) // 2, (width + 1) // 2), 1.0)
    return compiled if compiled is not None else _separable_blur(x)[..., ::2, ::2]


def pyramid_expand(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-insert up to ``size`` and blur with twice the kernel per axis (keeps a constant constant)."""
    size = (int(size[0]), int(size[1]))
    compiled = _compiled_filter("expand", x, size, 2.0)
    if compiled is not None:
        return compiled
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


def _level_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """The sides of pyramid levels 0..levels (each REDUCE takes a side of n to ceil(n / 2))."""
    sizes = [(height, width)]
    for _ in range(levels):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``[L_0, ..., L_{levels-1}, base]`` of a ``(B, C, H, W)`` tensor; collapsing it is exact."""
    kernels = _kernels_for(x) if levels else None
    if kernels is not None:  # one compiled call for the whole pyramid, the same numbers
        planes = _planes(x)
        sizes = _level_sizes(*x.shape[-2:], levels)
        details = tuple(np.empty((planes.shape[0], *size), dtype=np.float32) for size in sizes[:-1])
        coarse = tuple(np.empty((planes.shape[0], *size), dtype=np.float32) for size in sizes[1:])
        kernels.laplacian_pyramid(planes, coarse, details, _TAPS[1.0], _TAPS[2.0])
        return [torch.from_numpy(level.reshape(*x.shape[:-2], *level.shape[-2:])) for level in (*details, coarse[-1])]
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
    kernels = _kernels_for(*pyramid) if len(pyramid) > 1 else None
    if kernels is not None:  # one compiled call, the same numbers
        lead = pyramid[0].shape[:-2]
        details = tuple(_planes(level) for level in pyramid[:-1])
        images = tuple(np.empty_like(level) for level in details)
        kernels.collapse_pyramid(details, _planes(pyramid[-1]), images, _TAPS[2.0])
        return torch.from_numpy(images[0].reshape(*lead, *images[0].shape[-2:]))
    image = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        image = pyramid_expand(image, detail.shape[-2:]) + detail
    return image


def fuse_weighted_pyramid(
    x: torch.Tensor, pyramid: list[torch.Tensor], weights: list[torch.Tensor], clamp: bool, contributions: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Both families' last step: the inputs' pyramid levels weighted per level (weights summing to 1
    over the K inputs), collapsed, optionally clamped per pixel to the inputs' range, and, if asked,
    each input's share (:func:`MedFusionLib.contributions.combine_scales`, through the same EXPAND).

    :returns: the fused ``(B, 1, H, W)`` and the shares ``(B, K, H, W)`` or None.
    """
    kernels = _kernels_for(x, *pyramid, *weights) if len(pyramid) > 1 else None
    if kernels is not None:
        return _fuse_weighted_pyramid_compiled(kernels, x, pyramid, weights, clamp, contributions)
    fused_levels = [(w * level).sum(dim=1, keepdim=True) for w, level in zip(weights, pyramid)]
    fused = collapse_pyramid(fused_levels)
    if clamp:
        # (minimum/maximum rather than clamp: the shipped weights were trained with this form,
        # and the two split the gradient differently where the fused value meets a bound)
        fused = torch.minimum(torch.maximum(fused, x.amin(dim=1, keepdim=True)), x.amax(dim=1, keepdim=True))
    if not contributions:
        return fused, None
    return fused, combine_scales(list(zip(weights[:-1], fused_levels[:-1])), weights[-1], pyramid_expand)


def _fuse_weighted_pyramid_compiled(
    kernels: ModuleType, x: torch.Tensor, pyramid: list[torch.Tensor], weights: list[torch.Tensor], clamp: bool,
    contributions: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`fuse_weighted_pyramid` in three compiled passes: weighted levels, collapse, clamp."""
    batch = x.shape[0]
    arrays = tuple(np.ascontiguousarray(level.numpy()) for level in pyramid)
    fused_levels = tuple(np.empty((batch, *level.shape[-2:]), dtype=np.float32) for level in arrays)
    kernels.weighted_levels(arrays, tuple(np.ascontiguousarray(w.numpy()) for w in weights), fused_levels)
    images = tuple(np.empty_like(level) for level in fused_levels[:-1])
    kernels.collapse_pyramid(fused_levels[:-1], fused_levels[-1], images, _TAPS[2.0])
    fused = images[0]
    if clamp:
        kernels.clamp_to_inputs(fused, np.ascontiguousarray(x.numpy()))
    fused = torch.from_numpy(fused.reshape(batch, 1, *fused.shape[-2:]))
    if not contributions:
        return fused, None
    levels = [torch.from_numpy(level.reshape(batch, 1, *level.shape[-2:])) for level in fused_levels[:-1]]
    return fused, combine_scales(list(zip(weights[:-1], levels)), weights[-1], pyramid_expand)


class PyramidWeightCNN(nn.Module):
    """CNN predicting per-level, per-pixel fusion weights of a Laplacian pyramid, for any K >= 2.

    Every input goes through the same small network (shared weights), which scores
    each pyramid level of it pixel by pixel; a softmax across the K inputs turns the
    scores into weights. The scores see a mean over the inputs' features as well, so
    the rule can depend on the other inputs, yet the network is permutation-equivariant
    and one trained model fuses 2, 3 or more inputs.

    :param n_inputs: K the model was trained with (informative: any K >= 2 is accepted).
    :param levels: Laplacian pyramid depth (clipped per call to what the image allows).
    :param width: channels of the context encoder.
    :param hidden: channels of the per-level score heads (1x1 convolutions).
    :param half_resolution_finest: score the finest level at half resolution and upsample
        its weights (faster; the decision varies smoothly) instead of at full resolution.
    :param clamp_to_inputs: clamp each fused pixel to ``[min_k x_k, max_k x_k]`` of the inputs
        there (no value brighter or darker than every input at that pixel; removes pyramid
        overshoot). Model files written before this option load with it off.
    """

    family = "cnn"
    #: Hidden-layer elements per band of rows in :meth:`_scores` (256 KB of float32: fits in L2).
    band_elements = 1 << 16

    def __init__(self, n_inputs: int = 2, levels: int = 4, width: int = 8, hidden: int = 8,
                 half_resolution_finest: bool = True, clamp_to_inputs: bool = True) -> None:
        super().__init__()
        self.half_resolution_finest = bool(half_resolution_finest)
        self.clamp_to_inputs = bool(clamp_to_inputs)
        self.n_inputs = n_inputs
        self.levels = levels
        self.width = width
        self.hidden = hidden
        # Context encoder at 1/2, 1/4 and 1/8 resolution: how much structure each input has here.
        self.encode_half = nn.Conv2d(2, width, 3, padding=1)
        self.encode_quarter = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.encode_eighth = nn.Conv2d(width, width, 3, stride=2, padding=1)
        # Score heads: [own context, mean context over inputs, own local activity, own level] -> 1 score.
        # One head for the detail levels (fusion rules are scale-similar, a level code tells them
        # apart) and one for the base.
        self.detail_head = nn.Sequential(
            nn.Conv2d(2 * width + 3, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1)
        )
        self.base_head = nn.Sequential(
            nn.Conv2d(2 * width + 2, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1)
        )
        # Full-resolution correction of the finest level's upsampled scores: a learned multiple of
        # each input's local activity and detail, so decisions stay sharp at edges (cheap: one
        # value per input and pixel).
        self.finest_refinement = nn.Parameter(torch.zeros(2))

    def config(self) -> dict[str, int]:
        """Constructor arguments, stored with the weights."""
        return {"n_inputs": self.n_inputs, "levels": self.levels, "width": self.width, "hidden": self.hidden,
                "half_resolution_finest": self.half_resolution_finest, "clamp_to_inputs": self.clamp_to_inputs}

    def _contexts(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of every input at 1/2, 1/4, 1/8 resolution, ``(B*K, width, h, w)``."""
        half = pyramid_reduce(x)
        # Local contrast (absolute deviation from the local mean) tells the encoder where detail is.
        contrast = (half - _separable_blur(half)).abs()
        features = torch.cat([half, contrast], dim=1)
        f_half = F.relu(self.encode_half(features))
        f_quarter = F.relu(self.encode_quarter(f_half))
        f_eighth = F.relu(self.encode_eighth(f_quarter))
        return [f_half, f_quarter, f_eighth]

    def _scores(self, head: nn.Sequential, context: torch.Tensor | None, size: torch.Size,
                pixel_terms: list[torch.Tensor], batch: int, count: int, shared: dict | None = None) -> torch.Tensor:
        """The score head applied without materialising its concatenated input.

        The first 1x1 layer is linear, so its context part is applied at the context's
        (lower) resolution and then upsampled -- the two commute -- and its part for the
        mean over inputs equals the mean's part; the per-pixel terms are added through one
        channel contraction. Same numbers as ``head(cat(...))``, several times cheaper.
        Large maps are processed in bands of rows that stay in the CPU cache: the hidden
        layer is ``hidden`` times the size of a level, and streaming it through memory for
        every element-wise step was most of the network's time.
        """
        first, _, second = head
        weight = first.weight[:, :, 0, 0]
        kernels = _kernels_for(context) if context is not None else None
        if kernels is not None:
            if tuple(context.shape[-2:]) != tuple(size):  # resampling first is the same linear map
                context = F.interpolate(context, size=tuple(size), mode="bilinear", align_corners=False)
            return self._scores_compiled(kernels, head, context, pixel_terms, count, shared)
        hidden = weight.shape[0]
        own_w = weight[:, : self.width]
        pooled_w = weight[:, self.width : 2 * self.width]
        pixel_w = weight[:, 2 * self.width : 2 * self.width + len(pixel_terms)]
        bias = first.bias.view(1, hidden, 1, 1)
        out_w = second.weight.view(1, hidden, 1, 1)
        terms = torch.cat(pixel_terms, dim=1)

        def head_on(ctx: torch.Tensor | None, pooled: torch.Tensor | None, local: torch.Tensor) -> torch.Tensor:
            z = torch.einsum("oc,nchw->nohw", pixel_w, local) + bias
            if ctx is not None:
                low = ctx.shape[-2:]
                part = torch.einsum("oc,nchw->nohw", own_w, ctx).view(batch, count, hidden, *low)
                part = part + torch.einsum("oc,nchw->nohw", pooled_w, pooled).unsqueeze(1)
                part = part.view(batch * count, hidden, *low)
                if tuple(low) != tuple(local.shape[-2:]):
                    part = F.interpolate(part, size=local.shape[-2:], mode="bilinear", align_corners=False)
                z = z + part
            return (F.relu(z) * out_w).sum(dim=1, keepdim=True) + second.bias.view(1, 1, 1, 1)

        pooled = None
        if context is not None:
            pooled = context.view(batch, count, self.width, *context.shape[-2:]).mean(dim=1)
        rows = int(size[0])
        band = max(1, self.band_elements // max(1, batch * count * hidden * int(size[1])))
        if context is None or tuple(context.shape[-2:]) != tuple(size) or band >= rows:
            return head_on(context, pooled, terms)
        return torch.cat(
            [head_on(context[..., r : r + band, :], pooled[..., r : r + band, :], terms[..., r : r + band, :])
             for r in range(0, rows, band)],
            dim=-2,
        )

    def _scores_compiled(self, kernels: ModuleType, head: nn.Sequential, context: torch.Tensor,
                         pixel_terms: list[torch.Tensor], count: int, shared: dict | None) -> torch.Tensor:
        """:meth:`_scores` in two compiled passes (:mod:`._kernels`), with no hidden-layer tensor per level.

        The context's part of the hidden layer (bias + own and mean context) is computed once per
        context and head and kept in ``shared``: the two finest levels read the same context. So are
        the head's weights as arrays, which every detail level reads.
        """
        context = context.contiguous()
        height, columns = context.shape[-2:]
        shared = {} if shared is None else shared
        arrays_key = ("head", id(head), len(pixel_terms))  # the same for every level a head scores
        if arrays_key not in shared:
            shared[arrays_key] = self._head_arrays(head, len(pixel_terms))
        own, pooled, term_weights, bias, out_weight, out_bias = shared[arrays_key]
        key = (context.data_ptr(), tuple(context.shape), id(head))
        part = shared.get(key)
        if part is None:
            part = np.empty((context.shape[0], bias.shape[0], height, columns), dtype=np.float32)
            kernels.context_part(context.numpy(), count, own, pooled, part)
            shared[key] = part
        terms = np.concatenate([term.numpy() for term in pixel_terms], axis=1)
        out = np.empty((context.shape[0], 1, height, columns), dtype=np.float32)
        kernels.head_scores(part, terms, term_weights, bias, out_weight, out_bias, out[:, 0])
        return torch.from_numpy(out)

    def _head_arrays(self, head: nn.Sequential, n_terms: int) -> tuple:
        """A head's weights as the kernels take them: small contiguous float32 arrays (a few microseconds;
        made afresh for every forward rather than kept, so a weight changed in any way is always the one used)."""
        first, _, second = head
        weight = first.weight.detach().numpy()[:, :, 0, 0]
        width = self.width
        return (np.ascontiguousarray(weight[:, :width]), np.ascontiguousarray(weight[:, width : 2 * width]),
                np.ascontiguousarray(weight[:, 2 * width : 2 * width + n_terms]), first.bias.detach().numpy(),
                second.weight.detach().numpy().reshape(-1), np.float32(second.bias.detach().numpy()[0]))

    def fusion_weights(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The inputs' Laplacian pyramids and the per-level softmax weights, ``(B, K, h_l, w_l)`` each."""
        batch, count = x.shape[:2]
        levels = min(self.levels, max_levels(*x.shape[-2:]))
        pyramid = laplacian_pyramid(x, levels)
        flat = x.reshape(batch * count, 1, *x.shape[-2:])
        contexts = self._contexts(flat) if min(x.shape[-2:]) >= 8 else None
        weights = []
        shared: dict = {}  # the score heads' context parts and weight arrays, made once per forward (compiled path)
        for index, level in enumerate(pyramid):
            size = level.shape[-2:]
            own = level.reshape(batch * count, 1, *size)
            # The encoder scale closest to this level (level l has 1/2^l resolution).
            context = None if contexts is None else contexts[min(max(index - 1, 0), len(contexts) - 1)]
            if index < len(pyramid) - 1:
                activity = _separable_blur(own.abs())
                terms = [activity, own]
                if index == 0 and len(pyramid) > 1 and self.half_resolution_finest:
                    # The finest level is scored at half resolution and its scores upsampled
                    # (full-resolution heads would cost most of the network's time), then
                    # corrected per pixel with the full-resolution activity and detail.
                    terms = [pyramid_reduce(activity), pyramid_reduce(own)]
                depth = terms[1].new_full(terms[1].shape, index / max(self.levels, 1))
                scores = self._scores(self.detail_head, context, terms[1].shape[-2:], [*terms, depth], batch, count,
                                      shared)
                if scores.shape[-2:] != size:
                    scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
                    scores = scores + self.finest_refinement[0] * activity + self.finest_refinement[1] * own
            else:
                scores = self._scores(self.base_head, context, size, [own, _separable_blur(own)], batch, count,
                                      shared)
            weights.append(torch.softmax(scores.view(batch, count, *size), dim=1))
        return pyramid, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse_with_contributions(x, contributions=False)[0]

    def fuse_with_contributions(
        self, x: torch.Tensor, contributions: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fused image ``(B, 1, H, W)`` and, if asked, each input's share of it ``(B, K, H, W)``.

        The shares combine the per-level softmax weights as :mod:`MedFusionLib.contributions` defines
        (each level counted by the fused detail it carries; the base's weights where there
        is none), through the same EXPAND that collapses the pyramid.
        """
        pyramid, weights = self.fusion_weights(x)
        return fuse_weighted_pyramid(x, pyramid, weights, self.clamp_to_inputs, contributions)


#: What a :class:`BlockDBMNet` predicts per block.
DBM_OUTPUTS = ("weights", "values")


class BlockDBMNet(nn.Module):
    """Feed-forward block network unrolled from a pre-trained RBM stack (paper 000's DBM).

    Input ``(B, K, n, n)`` blocks are flattened to ``K n^2`` visible values and mapped
    through :func:`.rbm.unroll`'s network (standardisation, the RBMs' sigmoid layers,
    a linear head). What the head predicts (``predicts``):

    - ``"weights"`` (the shipped recipe): for every overlapping block (stride n/2), one
      fusion score per input and per level of a Laplacian pyramid. The scores of all
      blocks are interpolated to full resolution (bilinearly between block centres, so
      nothing changes at a block border) and, per level, added to ``p_l log(a_k + eps)``,
      where ``a_k`` is input k's local detail activity there and ``p_l`` a learned
      power (as in the CNN's heads, per-pixel detail decides at edges); a softmax over
      the inputs gives the weights of each input's pyramid level (level l reads the
      full-resolution scores at the pixels its REDUCE kept, every 2^l-th). The fused pyramid
      collapses into the image, clamped pixel by pixel to the inputs' range. The
      fused image is thus a convex combination of the inputs at every scale: the
      DBM decides which input wins where, block by block, and cannot paint a block
      grid or invent structure. Applied to whole images (the blocks are cut inside).
    - ``"values"`` (models saved before, the first form): an ``n^2`` correction added
      to the mean of the K blocks; the fused image is made of overlapping fused blocks
      (see :meth:`~MedFusionLib.engine.model.FusionModel.fuse_tensor`).

    :param n_inputs: K.
    :param block_size: n.
    :param layer_sizes: hidden layer sizes of the RBM stack.
    :param rbms: a pre-trained stack to unroll (default: freshly initialised RBMs, the
        shape a saved model is loaded into).
    :param predicts: ``"weights"`` or ``"values"`` (the first form; model files without this
        setting load as ``"values"``).
    :param levels: Laplacian pyramid depth (``"weights"``; clipped per call to what the image allows).
    """

    family = "dbm"
    #: Added to the detail activity before its logarithm (intensities in [0, 1]): below about one
    #: grey level of detail, the activity no longer decides.
    activity_floor = 1.0 / 255.0

    def __init__(
        self,
        n_inputs: int = 2,
        block_size: int = 8,
        layer_sizes: tuple[int, ...] | list[int] = (256, 128),
        rbms: list[RBM] | None = None,
        predicts: str = "weights",
        levels: int = 4,
    ) -> None:
        super().__init__()
        if predicts not in DBM_OUTPUTS:
            raise ValueError(f"predicts: expected one of {DBM_OUTPUTS}, got {predicts!r}")
        self.n_inputs = int(n_inputs)
        self.block_size = int(block_size)
        self.layer_sizes = tuple(int(s) for s in layer_sizes)
        self.predicts = predicts
        self.levels = int(levels)
        if rbms is None:
            sizes = [self.n_inputs * self.block_size**2, *self.layer_sizes]
            rbms = [RBM(sizes[i], sizes[i + 1], "gaussian" if i == 0 else "bernoulli") for i in range(len(sizes) - 1)]
        outputs = self.block_size**2 if predicts == "values" else (self.levels + 1) * self.n_inputs
        self.body = unroll(rbms, outputs, output_init_std=0.0)
        if predicts == "weights":
            # Start as an activity-squared rule on the details and the plain average of the bases;
            # the DBM's scores start at 0 (zero head) and fine-tuning moves both.
            self.activity_power = nn.Parameter(torch.full((self.levels,), 2.0))

    def config(self) -> dict[str, object]:
        """Constructor arguments, stored with the weights."""
        return {"n_inputs": self.n_inputs, "block_size": self.block_size, "layer_sizes": list(self.layer_sizes),
                "predicts": self.predicts, "levels": self.levels}

    @property
    def has_contributions(self) -> bool:
        """Whether the fused value is a weighting of the inputs (so a contribution map exists)."""
        return self.predicts == "weights"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.predicts == "values":
            batch = x.shape[0]
            correction = self.body(x.reshape(batch, -1))
            return x.mean(dim=1, keepdim=True) + correction.view(batch, 1, self.block_size, self.block_size)
        return self.fuse_with_contributions(x, contributions=False)[0]

    def block_scores(self, x: torch.Tensor) -> torch.Tensor:
        """The head's scores of every block, ``(B, (levels + 1) K, rows, columns)`` on the grid of block centres.

        Blocks of n x n step by s = n/2; the image is mirrored by (n - s)/2 pixels (and up to a
        multiple of s at the far sides), so block (i, j) is centred on pixel ((i + 1/2) s, (j + 1/2) s).
        """
        batch, count, height, width = x.shape
        n = self.block_size
        step = max(1, n // 2)
        margin = (n - step) // 2
        rows, columns = -(-height // step), -(-width // step)
        pad = (margin, columns * step - width + (n - step - margin), margin, rows * step - height + (n - step - margin))
        mode = "reflect" if min(height, width) > max(pad) else "replicate"
        padded = F.pad(x, pad, mode=mode)
        blocks = F.unfold(padded, n, stride=step)  # (B, K n^2, rows * columns), channel-major like reshape
        flat = blocks.transpose(1, 2).reshape(batch * rows * columns, count * n * n)
        scores = self.body(flat).view(batch, rows, columns, -1)
        return scores.permute(0, 3, 1, 2)

    def fusion_weights(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The inputs' Laplacian pyramids and the per-level softmax weights, ``(B, K, h_l, w_l)`` each."""
        batch, count, height, width = x.shape
        levels = min(self.levels, max_levels(height, width))
        pyramid = laplacian_pyramid(x, levels)
        grid = self.block_scores(x)
        step = max(1, self.block_size // 2)
        # Between block centres, bilinearly, at full resolution (the padded extent, then cropped); level l
        # takes every 2^l-th row and column, the samples its REDUCE kept, so each level's scores sit
        # where its pixels do.
        full = F.interpolate(grid, size=(grid.shape[-2] * step, grid.shape[-1] * step), mode="bilinear",
                             align_corners=False)[..., :height, :width]
        weights = []
        for index, level in enumerate(pyramid):
            head = self.levels if index == len(pyramid) - 1 else index  # the base has its own scores
            scores = full[:, head * count : (head + 1) * count, :: 2**index, :: 2**index]
            if index < len(pyramid) - 1:
                activity = _separable_blur(level.abs())
                scores = scores + self.activity_power[index] * torch.log(activity + self.activity_floor)
            weights.append(torch.softmax(scores, dim=1))
        return pyramid, weights

    def fuse_with_contributions(
        self, x: torch.Tensor, contributions: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fused image ``(B, 1, H, W)`` and, if asked, each input's share ``(B, K, H, W)`` ("weights" only)."""
        if self.predicts != "weights":
            raise ValueError("a DBM that predicts values has no fusion weights")
        pyramid, weights = self.fusion_weights(x)
        return fuse_weighted_pyramid(x, pyramid, weights, True, contributions)


NETWORKS: dict[str, type[nn.Module]] = {"cnn": PyramidWeightCNN, "dbm": BlockDBMNet}
