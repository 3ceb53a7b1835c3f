"""What the Guard's monitor thread does: every beat, keep the lease alive (or learn it is lost), charge the
runtime ahead, tell the registry and the heartbeat file how the loop is doing; every sample, measure the
process tree's memory and the store's bytes. What it finds reaches the loop as a stop request.

Events that arise in signal handlers or on other threads are queued here and written by the monitor (or at
exit): a signal handler must never touch the database, the main thread may be inside a transaction.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainguard._os.resources import tree_usage
from trainguard.budget import Budget, CpuWindow, EffectiveLimits, LevelWarnings, over_ceiling, warn_log
from trainguard.errors import RegistryError
from trainguard.guard._account import BudgetAccount
from trainguard.guard._runfiles import RunFiles
from trainguard.guard._stop import BUDGET_REASONS, Stop, StopReason
from trainguard.notify import Notifier
from trainguard.registry import EventKind, Lease, Registry

log = logging.getLogger("trainguard")


@dataclass(frozen=True)
class LoopProgress:
    """The training loop's state as the monitor thread reports it (read from the loop's attributes without
    a lock: a heartbeat may be one tick behind, never torn)."""

    episode: int | None
    steps: int
    stop: Stop | None
    last_progress_age: float | None
    saving: bool
    fenced: bool


class Heartbeat:
    def __init__(
        self,
        registry: Registry,
        lease: Lease,
        account: BudgetAccount,
        files: RunFiles,
        stored_bytes: Callable[[], int],
        *,
        progress: Callable[[], LoopProgress],
        request_stop: Callable[[Stop], None],
        lease_lost: Callable[[str], None],
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.run = account.run
        self.lease = lease
        self.account = account
        self.files = files
        self.stored_bytes = stored_bytes  # the store's size: a directory walked, a bucket prefix listed
        self.progress = progress
        self.request_stop = request_stop
        self.lease_lost = lease_lost
        self.rss = 0
        self.disk = 0
        self.unreachable = False  # the last beat could not reach the registry
        self.pending_events: collections.deque[tuple[EventKind, dict[str, Any]]] = collections.deque()
        self.notifier = notifier
        self.clock = clock
        self.cpu = CpuWindow.from_limits(account.limits)
        self.levels = LevelWarnings.from_limits(account.limits)

    # -- every beat -------------------------------------------------------------------------------

    def beat(self) -> None:
        """One beat. The lease's renewal decides whether an unreachable registry ends the run (after the
        lease's ttl, see ``Lease.keep_alive``); every other registry step of a beat is tried once and, if the
        registry cannot be reached, again at the next beat - nothing is lost meanwhile (the runtime charge is
        counted only once paid, events stay queued) and the local heartbeat file is written regardless."""
        progress = self.progress()
        if not progress.fenced and (gone := self.registry.replaced()) is not None:
            self.lease_lost(gone)  # nothing this process commits from now on would be in the run's lineage
            progress = self.progress()
        if not progress.fenced and (lost := self.lease.keep_alive()) is not None:
            self.lease_lost(lost)
        self.check_level("runtime", self.account.runtime.spent)
        try:
            if not progress.fenced and progress.stop is None:
                self.account.prefetch(progress.steps)
            self.account.charge_runtime()
            self.registry.record_heartbeat(self.run, self.lease.token, self.body(progress))
            self.flush_events()
            self.unreachable = False
        except RegistryError as error:
            if not self.unreachable:  # once per outage (the lease logs when it is back)
                log.warning(
                    "trainguard: heartbeat of run %r not recorded (retried each beat): %s", self.run, error
                )
            self.unreachable = True
        self.write_file(progress)

    def body(self, progress: LoopProgress) -> dict[str, Any]:
        """The heartbeat row's detail (what the watchdog judges staleness and stalls by)."""
        return {
            "pid": os.getpid(),
            "episode": progress.episode,
            "step": progress.steps,
            "rss": self.rss,
            "disk": self.disk,
            "spent": self.account.spent(),
            "stop": str(progress.stop) if progress.stop else None,
            "last_progress_age": progress.last_progress_age,
            "saving": progress.saving,
        }

    def write_file(self, progress: LoopProgress | None = None) -> None:
        progress = progress or self.progress()
        self.files.write_heartbeat(
            {
                "run": self.run,
                "last_heartbeat": time.time(),
                "runtime_hours": self.account.runtime.spent / 3600,
                **self.body(progress),
            }
        )

    # -- every sample -----------------------------------------------------------------------------

    def sample(self) -> None:
        limits = EffectiveLimits.from_mapping(self.account.limits)
        usage = tree_usage()
        self.rss = usage.rss
        if overrun := over_ceiling(Budget.MEMORY, self.rss, limits.memory):
            self.request_stop(Stop(StopReason.MEMORY, str(overrun)))
        self.check_level("memory", self.rss)
        if self.cpu is not None and (busy := self.cpu.observe(self.clock(), usage.cpu_seconds)):
            self.request_stop(Stop(StopReason.CPU, str(busy)))
        if limits.disk:
            self.disk = self.stored_bytes()
            if overrun := over_ceiling(Budget.DISK, self.disk, limits.disk):
                self.request_stop(Stop(StopReason.DISK, str(overrun)))

    # -- events -----------------------------------------------------------------------------------

    def warn(self, name: str, spent: float, limit: float) -> None:
        """A budget crossed ``warn_at``: a log line now, an event at the next beat."""
        warn_log(name, spent, limit)
        self.pending_events.append(
            (EventKind.BUDGET_WARNING, {"budget": name, "spent": spent, "limit": limit})
        )
        if self.notifier is not None:
            self.notifier.send(
                "warning", self.run, f"{name} budget at {100 * spent / limit:.0f}% ({spent:g} of {limit:g})"
            )

    def check_level(self, name: str, reading: float) -> None:
        """An absolute warning level (warn_memory, warn_runtime, warn_episodes) reached: once per process."""
        if (reached := self.levels.check(name, reading)) is None:
            return
        log.warning("trainguard: run %r: %s %g reached its warning level %g", self.run, *reached)
        self.pending_events.append(
            (EventKind.BUDGET_WARNING, {"budget": name, "spent": reading, "level": reached[2]})
        )
        if self.notifier is not None:
            self.notifier.send(
                "warning", self.run, f"{name} {reading:g} reached its warning level {reached[2]:g}"
            )

    def record_stop(self, stop: Stop) -> None:
        # Called from signal handlers and other threads: queue only (see the module's docstring); the
        # notifier only queues too (its own thread posts).
        kind = EventKind.BUDGET_EXHAUSTED if stop.reason in BUDGET_REASONS else EventKind.GUARD_STOP_REQUESTED
        self.pending_events.append((kind, {"reason": stop.reason.value, "detail": stop.detail}))
        if self.notifier is not None and stop.reason is not StopReason.SIGNAL:
            kind_of = "fence" if stop.reason is StopReason.LEASE_LOST else "stop"
            self.notifier.send(kind_of, self.run, f"stopping: {stop}", reason=stop.reason.value)

    def flush_events(self) -> None:
        while self.pending_events:
            kind, detail = self.pending_events[0]
            self.registry.add_event(
                self.run, kind, token=self.lease.token, reason=detail.get("detail"), detail=detail
            )
            self.pending_events.popleft()  # only once written: a registry outage keeps it queued


__all__ = ["Heartbeat", "LoopProgress"]
