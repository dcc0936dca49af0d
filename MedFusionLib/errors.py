"""Exceptions raised by MedFusionLib.

Every error caused by what a user passed in is an :class:`InputError`, a
``ValueError`` subclass, whose message names the offending input and the
problem, so the CLI and the Slicer module can show it as one clear line.
"""


class MedFusionError(Exception):
    """Base class of every MedFusionLib error."""


class InputError(MedFusionError, ValueError):
    """An input image, file, parameter or model is unusable; the message says which and why."""


class Cancelled(MedFusionError):
    """A long operation stopped because its cancel flag was set; nothing partial was kept."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (libraries raise multi-line ones), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
