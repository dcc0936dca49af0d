"""Progress and cancellation: the one home of the types every long operation takes, and the CLI's bar.

A long operation (fusing a volume, training, registering, a batch, a study) takes
``progress(fraction, message)`` and a ``cancel`` flag it polls between steps; it raises the
operation's :class:`~MedFusionLib.errors.Cancelled` subclass when the flag is set.
"""

from __future__ import annotations

import sys
from typing import Callable, Protocol

#: ``progress(fraction, message)``: fraction in [0, 1], a short human-readable message.
ProgressCallback = Callable[[float, str], None]


class CancelFlag(Protocol):
    """Anything with ``is_set()``, such as :class:`threading.Event`."""

    def is_set(self) -> bool: ...


class ProgressBar:
    """A one-line progress bar on stderr (a line per 10% when stderr is not a terminal); a :data:`ProgressCallback`."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled
        self.interactive = sys.stderr.isatty()
        self._last_decile = -1

    def __call__(self, fraction: float, message: str = "") -> None:
        if not self.enabled:
            return
        fraction = min(max(float(fraction), 0.0), 1.0)
        if self.interactive:
            filled = int(30 * fraction)
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{' ' * (30 - filled)}] {fraction:4.0%} {message[:60]:60s}")
            sys.stderr.flush()
        elif int(fraction * 10) > self._last_decile:
            self._last_decile = int(fraction * 10)
            sys.stderr.write(f"{self.label} {fraction:4.0%} {message}\n")

    def close(self) -> None:
        if self.enabled and self.interactive:
            sys.stderr.write("\n")
