"""Discrete-wavelet-transform (DWT) fusion with PyWavelets.

Each input is decomposed with a 2D multilevel DWT (``pywt.wavedec2``); the
approximation coefficients are averaged, each detail coefficient (horizontal,
vertical, diagonal, every level) is taken from the input where its magnitude is
largest, and the fused coefficients are inverted with ``pywt.waverec2``.  The
inverse of an odd-sized decomposition is one sample longer, so the result is
cropped back to the input shape.

References:

- H. Li, B. S. Manjunath and S. K. Mitra, "Multisensor image fusion using the
  wavelet transform", *Graphical Models and Image Processing* 57(3):235-245, 1995.
- G. Pajares and J. M. de la Cruz, "A wavelet-based image fusion tutorial",
  *Pattern Recognition* 37(9):1855-1872, 2004.
- G. R. Lee et al., "PyWavelets: A Python package for wavelet analysis",
  *Journal of Open Source Software* 4(36):1237, 2019.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pywt
from scipy.ndimage import zoom

from ..errors import InputError
from ..contributions import combine_scales, intensity_floor
from .pixel import FusionBaseline, check_non_negative_int, one_hot, select_max_abs


class WaveletFusion(FusionBaseline):
    """DWT fusion: averaged approximation, max-abs selected details.

    :param wavelet: a discrete PyWavelets wavelet name (default ``"db2"``).
    :param levels: decomposition levels (default 3); clipped per call to
        ``pywt.dwt_max_level(min(H, W), filter length)``, so small images get
        fewer levels and images too small for one level are averaged.
    :param mode: PyWavelets signal-extension mode (default ``"symmetric"``).
    """

    name = "wavelet"

    def __init__(self, wavelet: str = "db2", levels: int = 3, mode: str = "symmetric") -> None:
        if not isinstance(wavelet, str):
            raise InputError(f"wavelet: expected a wavelet name such as 'db2', got {wavelet!r}")
        try:
            self.wavelet = pywt.Wavelet(wavelet)
        except ValueError as exc:
            raise InputError(
                f"wavelet: {wavelet!r} is not a discrete wavelet known to PyWavelets "
                f"(e.g. 'haar', 'db2', 'sym4', 'bior2.2'): {exc}"
            ) from None
        self.levels = check_non_negative_int(levels, "levels")
        if not isinstance(mode, str) or mode not in pywt.Modes.modes:
            raise InputError(f"mode: expected one of {', '.join(pywt.Modes.modes)}, got {mode!r}")
        self.mode = mode

    def _params(self) -> dict[str, object]:
        return {"wavelet": self.wavelet.name, "levels": self.levels, "mode": self.mode}

    def _fuse_stack(self, stack: np.ndarray, contributions: bool = False) -> Any:
        height, width = stack.shape[1:]
        count = stack.shape[0]
        levels = min(self.levels, pywt.dwt_max_level(min(height, width), self.wavelet.dec_len))
        if levels == 0:
            fused = stack.mean(axis=0)
            return (fused, np.full(stack.shape, 1.0 / count)) if contributions else fused
        # One transform of the whole (K, H, W) stack over its image axes.
        coefficients = pywt.wavedec2(stack, self.wavelet, mode=self.mode, level=levels, axes=(-2, -1))
        fused: list[object] = [coefficients[0].mean(axis=0)]
        scales: list[tuple[np.ndarray, np.ndarray]] = []  # coarsest first, as wavedec2 lists them
        for details in coefficients[1:]:
            selected = [select_max_abs(band, return_index=True) for band in details]
            fused.append(tuple(best for best, _ in selected))
            if contributions:
                # The three orientations of a scale count by the detail each carries.
                energy = sum(np.abs(best) for best, _ in selected)
                weighted = sum(np.abs(best) * one_hot(winner, count) for best, winner in selected)
                weights = np.divide(weighted, energy, out=np.full(weighted.shape, 1.0 / count), where=energy > 0)
                scales.append((weights, energy[None]))
        image = pywt.waverec2(fused, self.wavelet, mode=self.mode)
        # waverec2 returns a new array; crop its possible extra row/column.
        image = np.ascontiguousarray(image[:height, :width])
        if not contributions:
            return image
        base_weights = np.full(coefficients[0].shape, 1.0 / count)
        shares = combine_scales(scales[::-1], base_weights, resize_linear, floor=intensity_floor(stack),
                                size=(height, width))
        return image, shares


def resize_linear(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of the last two axes to ``size`` (a wavelet scale's grid onto the next finer one).

    :param array: ``(..., h, w)``.
    :param size: ``(H, W)``.
    """
    factors = (1.0,) * (array.ndim - 2) + (size[0] / array.shape[-2], size[1] / array.shape[-1])
    resized = zoom(array, factors, order=1, mode="nearest", grid_mode=True)
    return resized[..., : size[0], : size[1]]
