"""The Apply button, progress bar and status label of one kind of run, polled on the GUI thread. Plain Python.

The widget makes one :class:`RunController` for Fuse and one for Train, handing it its Qt
widgets and a ``qt.QTimer``. Nothing here imports Qt, so the tests drive the same class with
plain objects from a host that holds the GIL between 100 ms ticks, as Slicer's event loop does.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

try:
    from slicer.i18n import tr as _
except ImportError:  # slicer-core (tests, batch Python) has no translations
    def _(text: str) -> str:
        return text

#: Milliseconds between two polls of a run (the GUI stays responsive: a poll never blocks).
POLL_INTERVAL_MS = 100


class RunController:
    """Turns a button into Cancel while a run lasts, shows its progress, and hands over its end.

    ``start(run)`` polls the run every 100 ms; once it has ended, calls ``run.finish()`` (which
    writes the results, on this thread) and hands ``(result, None)`` or ``(None, exception)`` to
    ``onEnded``. ``cancel()`` asks the run to stop; ``close()`` abandons it. ``onIdle`` follows
    any end (the widget then re-checks what can start).

    :param button: has ``text``, ``toolTip`` and ``enabled``.
    :param progressBar: has ``value`` and ``setVisible(bool)``.
    :param statusLabel: has ``text``.
    :param applyText: the button's text when no run is going on ("Fuse", "Train").
    :param onEnded: ``onEnded(result, error)``, once per run that was not closed.
    :param onIdle: called whenever the controller becomes idle.
    :param timer: a ``qt.QTimer`` (or anything with ``setInterval``, ``connect("timeout()", f)``, ``start``, ``stop``).
    :param showError: shows a failure to the user (the widget passes ``slicer.util.errorDisplay``).
    """

    def __init__(self, button: Any, progressBar: Any, statusLabel: Any, applyText: str,
                 onEnded: Callable[[Any, Optional[Exception]], None], onIdle: Callable[[], None],
                 timer: Any, showError: Callable[[str], None]) -> None:
        self.button, self.progressBar, self.statusLabel = button, progressBar, statusLabel
        self.applyText, self.onEnded, self.onIdle, self.showError = applyText, onEnded, onIdle, showError
        self.run: Any = None
        self.timer = timer
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self._poll)
        self.progressBar.setVisible(False)

    @property
    def running(self) -> bool:
        return self.run is not None

    def start(self, run: Any, message: str, cancelToolTip: str) -> None:
        """Follow a started run: the button becomes Cancel, the progress bar appears."""
        self.run = run
        self.button.text, self.button.toolTip, self.button.enabled = _("Cancel"), cancelToolTip, True
        self.progressBar.value = 0
        self.progressBar.setVisible(True)
        self.statusLabel.text = message
        self.timer.start()

    def cancel(self) -> None:
        """Ask the run to stop (returns at once); its ``finish()`` then raises ``Cancelled``."""
        if self.run is not None:
            self.run.cancel()
            self.button.enabled = False
            self.statusLabel.text = _("Cancelling...")

    def close(self) -> None:
        """Abandon the run (scene closing, module cleanup): its worker is stopped at once, nothing is written."""
        run = self.run
        self._stop()
        if run is not None:
            run.close()

    def _stop(self) -> None:
        self.timer.stop()
        self.run = None
        self.button.text = self.applyText
        self.progressBar.setVisible(False)
        self.onIdle()

    def _poll(self) -> None:
        run = self.run
        if run is None:
            return self.timer.stop()
        fraction, message = run.progress
        self.progressBar.value = int(round(100 * fraction))
        if run.isRunning():
            if not run.cancelRequested:
                self.statusLabel.text = message
            return
        self._stop()
        try:
            result = run.finish()
        except Exception as error:
            return self.onEnded(None, error)
        self.onEnded(result, None)

    def reportError(self, error: Optional[Exception], cancelledText: str, failedText: str) -> bool:
        """Show a cancel (status label) or a failure (status label and ``showError``); False when ``error`` is None."""
        if error is None:
            return False
        from MedFusionLib.errors import Cancelled

        self.statusLabel.text = cancelledText if isinstance(error, Cancelled) else failedText
        if not isinstance(error, Cancelled):
            logging.error("MedFusion: %s", failedText, exc_info=error)
            self.showError(f"{failedText}\n\n{error}")
        return True
