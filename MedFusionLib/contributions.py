"""Contribution maps: for every output pixel, the share of the fused value each input supplied.

Every multi-scale method in MedFusion (the learned CNN, the Laplacian pyramid, the
wavelet and guided-filter baselines) fuses an image as a sum of scales, and at every
scale ``l`` and pixel it combines the inputs with weights ``W_{l,k}`` that sum to 1 over
the K inputs (a softmax, a max-abs selection, normalised guided-filter weights). One
map per input summarises those weights for a reader:

.. math::

    c_k(p) = \\frac{\\sum_l E_l(p)\\,W_{l,k}(p)}{\\sum_l E_l(p)},
    \\qquad E_l = |F_l| \\text{ for a detail scale}, \\qquad E_{base} = \\varepsilon

where ``F_l`` is the *fused* detail at scale ``l`` and the sums run over the scales
brought to full resolution by the method's own (linear, non-negative) upsampling. A
scale counts in proportion to how much detail it put into the fused image there, so

- where the fused image has detail, ``c_k`` is "input k supplied this share of the
  detail here" (e.g. 0.8: four fifths of the edge contrast came from input k);
- where it has none (flat tissue, background), the base scale's weights govern:
  ``c_k`` is input k's share of the local intensity.

``ε`` is one grey level (1/255 of the inputs' intensity range): a detail weaker than
that is noise-level and lets the base decide. ``c_k`` lies in [0, 1] and sums to 1 over
the inputs at every pixel (numerators and denominator go through the same linear
operator, and the weights of every scale sum to 1). For pixel rules the map is the rule
itself: the average gives ``1/K`` everywhere, the maximum 1 for the winning input.

The map describes the blend before any final clipping to the inputs' range.
The functions here take NumPy arrays or torch tensors alike (the learned model
computes its map on its own device).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

#: ε of the module docstring, as a fraction of the inputs' intensity range: one grey level of 256.
BASE_FLOOR = 1.0 / 255.0

Array = Any  # numpy.ndarray or torch.Tensor: only +, *, / and slicing are used


def combine_scales(
    details: Sequence[tuple[Array, Array]],
    base_weights: Array,
    expand: Callable[[Array, tuple[int, int]], Array],
    floor: float = BASE_FLOOR,
    size: tuple[int, int] | None = None,
) -> Array:
    """The contribution map ``c_k`` (module docstring) from a method's per-scale weights.

    :param details: ``(weights, fused_detail)`` per detail scale, finest first: weights
        ``(..., K, h_l, w_l)`` summing to 1 over K, the fused detail ``(..., 1, h_l, w_l)``.
    :param base_weights: the base scale's weights ``(..., K, h_L, w_L)``.
    :param expand: the method's upsampling ``expand(x, (h, w))``, linear with non-negative
        weights (a pyramid EXPAND, a bilinear resize); called only between different sizes.
    :param floor: ``ε`` in the inputs' intensity units.
    :param size: the image size, when the finest scale is smaller than the image (a wavelet's);
        default: the finest scale's size.
    :returns: ``(..., K, H, W)`` in [0, 1], summing to 1 over K.
    """
    numerator = base_weights * floor
    denominator = base_weights[..., :1, :, :] * 0 + floor
    for weights, fused in reversed(details):
        level_size = tuple(weights.shape[-2:])
        if tuple(numerator.shape[-2:]) != level_size:
            numerator, denominator = expand(numerator, level_size), expand(denominator, level_size)
        energy = abs(fused)
        numerator = numerator + weights * energy
        denominator = denominator + energy
    if size is not None and tuple(numerator.shape[-2:]) != tuple(size):
        numerator, denominator = expand(numerator, size), expand(denominator, size)
    return numerator / denominator



def intensity_floor(stack: Any) -> float:
    """``ε`` for inputs in their own units: one grey level of 256 of the range the inputs span together.

    :param stack: the ``(K, H, W)`` inputs (NumPy).
    """
    span = float(stack.max() - stack.min())
    return (span if span > 0 else 1.0) * BASE_FLOOR
