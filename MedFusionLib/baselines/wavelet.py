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

import numpy as np
import pywt

from ..errors import InputError
from .pixel import FusionBaseline, check_non_negative_int, select_max_abs


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

    def _fuse_stack(self, stack: np.ndarray) -> np.ndarray:
        height, width = stack.shape[1:]
        levels = min(self.levels, pywt.dwt_max_level(min(height, width), self.wavelet.dec_len))
        if levels == 0:
            return stack.mean(axis=0)
        # One transform of the whole (K, H, W) stack over its image axes.
        coefficients = pywt.wavedec2(stack, self.wavelet, mode=self.mode, level=levels, axes=(-2, -1))
        fused: list[object] = [coefficients[0].mean(axis=0)]
        for details in coefficients[1:]:
            fused.append(tuple(select_max_abs(band) for band in details))
        image = pywt.waverec2(fused, self.wavelet, mode=self.mode)
        # waverec2 returns a new array; crop its possible extra row/column.
        return np.ascontiguousarray(image[:height, :width])
