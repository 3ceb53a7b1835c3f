"""What the launcher judges its child by, besides the files it writes: the runtime budget, the memory and
CPU ceilings of the child's process tree, and the warning levels - with the same rules (``trainguard.budget``)
the Guard inside a process uses, so a limit means one thing wherever it is enforced. Stops and warnings also
go to the configured webhook.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from trainguard._os.resources import tree_usage
from trainguard.budget import Budget, CpuWindow, LevelWarnings, Runtime, over_ceiling
from trainguard.config import TrainguardConfig
from trainguard.guard import Stop, StopReason
from trainguard.notify import Notifier

log = logging.getLogger("trainguard")


class ChildRules:
    def __init__(self, run: str, config: TrainguardConfig) -> None:
        self.run = run
        self.settings: dict[str, Any] = {}
        self.cpu: CpuWindow | None = None
        self.levels = LevelWarnings({})
        notes = config.notifications
        self.notifier = Notifier.from_settings(
            notes.webhook, notes.events, notes.timeout, source="trainguard run"
        )

    def limits(self, settings: dict[str, Any]) -> None:
        """The run's effective limits, as the registry recorded them for this start."""
        self.settings = settings
        self.cpu = CpuWindow.from_limits(settings)
        self.levels = LevelWarnings.from_limits(settings)

    def judge(self, runtime: Runtime, child_pid: int, episodes: float | None) -> Stop | None:
        """The first rule the child has broken now (None: none), after sounding any warning level reached."""
        usage = tree_usage(child_pid)
        rss = usage.rss
        for name, reading in (("runtime", runtime.spent), ("memory", rss), ("episodes", episodes)):
            if reading is not None and (reached := self.levels.check(name, reading)) is not None:
                self.warn(f"{name} {reading:g} reached its warning level {reached[2]:g}")
        if runtime.exhausted:
            detail = f"runtime {runtime.spent:.1f}s reached the budget of {runtime.limit:g}s"
            return Stop(StopReason.RUNTIME, detail)
        memory = self.settings.get("max_memory")
        if memory is not None and (overrun := over_ceiling(Budget.MEMORY, rss, memory)):
            return Stop(StopReason.MEMORY, str(overrun))
        if self.cpu is not None and (busy := self.cpu.observe(time.monotonic(), usage.cpu_seconds)):
            return Stop(StopReason.CPU, str(busy))
        return None

    def warn(self, text: str) -> None:
        sys.stderr.write(f"trainguard run: warning: {text}\n")
        if self.notifier is not None:
            self.notifier.send("warning", self.run, text)

    def stopping(self, stop: Stop) -> None:
        log.warning("trainguard run: stopping %r: %s", self.run, stop)
        if self.notifier is not None and stop.reason is not StopReason.SIGNAL:
            kind = "fence" if stop.reason is StopReason.LEASE_LOST else "stop"
            self.notifier.send(kind, self.run, f"stopping: {stop}", reason=stop.reason.value)

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()


__all__ = ["ChildRules"]
