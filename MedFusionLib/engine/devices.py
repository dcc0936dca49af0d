"""Device choice and the inference context shared by every fusion call."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..errors import InputError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; otherwise the named device, checked.

    :param device: ``None``, ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or a ``torch.device``.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InputError(f"device: {device!r} is not a device name ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device: {device!r} was asked for but no CUDA GPU is available; use 'cpu' or 'auto'")
    return resolved


@contextlib.contextmanager
def inference_context() -> Iterator[None]:
    """No autograd, and denormal floats flushed to zero while inside.

    Softmax weights and small pyramid details produce denormal floats, which make
    x86 CPUs up to 10x slower on convolutions; flushing them changes results only
    below 1e-38. Torch offers no way to read the flag, so it is switched off again on
    exit (torch's default).
    """
    flushed = torch.set_flush_denormal(True)
    try:
        with torch.inference_mode():
            yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)
