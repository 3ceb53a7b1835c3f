"""SIGINT/SIGTERM: the first asks for a graceful stop, the second stops at once."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("trainguard")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalRelay:
    """Installs handlers only in the main thread (Python delivers signals only there) and restores the
    previous ones on :meth:`restore`."""

    def __init__(self, on_first: Callable[[int], None]) -> None:
        self.on_first = on_first
        self.received: list[int] = []
        self.closing = False
        self._previous: dict[int, Any] = {}

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        return True

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        name = signal.Signals(signum).name
        if self.closing:
            log.warning("trainguard: %s received while shutting down; finishing the shutdown", name)
            return
        if len(self.received) == 1:
            log.warning(
                "trainguard: %s received: finishing the current episode, then a final checkpoint "
                "(send it again to stop at once)",
                name,
            )
            self.on_first(signum)
            return
        log.warning("trainguard: second signal (%s): stopping at once", name)
        # Raised in the main thread between two bytecodes: unwinds the loop through the Guard's __exit__,
        # which still releases the lease and removes its files. The exit status follows the shell's 128+N.
        raise SystemExit(128 + signum)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


__all__ = ["SIGNALS", "SignalRelay"]
