"""Graceful stop on Ctrl-C / SIGTERM for long loops (training steps, analysed frames).

The first SIGINT or SIGTERM only sets :attr:`StopRequest.requested`: the loop finishes its unit of work
(an optimizer step, a video frame), saves what makes the job resumable and returns. A second signal
raises :class:`KeyboardInterrupt` at once. Handlers are installed only from the main thread (elsewhere
Python refuses them, and the request then never comes) and restored by :meth:`StopRequest.uninstall`.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

__all__ = ["StopRequest"]


class StopRequest:
    """A stop flag set by SIGINT/SIGTERM; a second signal aborts.

    Args:
        action: what the loop does on the first signal, shown to the user after the signal's name
            (e.g. ``"stopping after this frame"``).
    """

    def __init__(self, action: str) -> None:
        self.action = action
        self.requested = False
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        """Handle SIGINT and SIGTERM until :meth:`uninstall` (no-op outside the main thread)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def uninstall(self) -> None:
        """Restore the handlers that :meth:`install` replaced."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum, _frame) -> None:
        if self.requested:  # the second signal: give up immediately
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name} received: {self.action} (press Ctrl-C again to abort)",
              file=sys.stderr, flush=True)
