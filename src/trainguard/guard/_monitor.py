"""The guard's background thread: lease renewal, heartbeats, runtime deadline, memory and disk sampling.

Everything that is not a counter comparison happens here, off the training loop's hot path; what it finds
reaches the loop as a stop request (one attribute write).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("trainguard")


@dataclass
class Cadence:
    beat: float  # heartbeat / renewal period: Lease.renewal_interval
    resources: float  # memory and disk sampling


class Monitor:
    """Calls ``beat`` every ``cadence.beat`` seconds, ``sample`` every ``cadence.resources`` seconds, and
    ``deadline_reached`` at the monotonic time ``deadline()`` returns (the runtime budget)."""

    def __init__(
        self,
        cadence: Cadence,
        beat: Callable[[], None],
        sample: Callable[[], None],
        deadline: Callable[[], float | None],
        deadline_reached: Callable[[], None],
    ) -> None:
        self.cadence = cadence
        self._beat = beat
        self._sample = sample
        self._deadline = deadline
        self._deadline_reached = deadline_reached
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainguard-monitor", daemon=True)
        self.busy_seconds = 0.0  # wall time spent in beats and samples (the demo reports its share)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        now = time.monotonic()
        next_beat, next_sample = now + self.cadence.beat, now
        deadline_done = False
        while True:
            now = time.monotonic()
            deadline = self._deadline()
            wake = min(next_beat, next_sample)
            if deadline is not None and not deadline_done:
                wake = min(wake, deadline)
            if self._stop.wait(max(0.0, wake - now)):
                return
            now = time.monotonic()
            if deadline is not None and not deadline_done and now >= deadline:
                deadline_done = True
                self._guarded(self._deadline_reached)
            if now >= next_sample:
                next_sample = now + self.cadence.resources
                self._guarded(self._sample)
            if now >= next_beat:
                next_beat = now + self.cadence.beat
                self._guarded(self._beat)

    def _guarded(self, action: Callable[[], None]) -> None:
        # The thread must outlive any one failure (a registry hiccup): self-fencing depends on it running.
        started = time.perf_counter()
        try:
            action()
        except Exception:
            log.exception("trainguard: monitor step %s failed", getattr(action, "__name__", action))
        finally:
            self.busy_seconds += time.perf_counter() - started


__all__ = ["Cadence", "Monitor"]
