"""Cumulative budgets that a restart cannot reset: the counters a process keeps against the registry.

Spend lives in the registry, and it is charged *ahead*: before the loop may run episode ``n`` the registry
already counts it (episodes and steps are reserved in blocks that grow while the loop is fast, runtime is
prepaid by ``PREPAY_HEARTBEATS`` heartbeats). A clean exit refunds what was reserved but not used; a crash
keeps it charged. So a killed process can only ever cost budget, never hand budget back - the failure this
project exists for. Between reservations the hot path only compares integers.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from trainguard.budget._rules import prepay, remaining

log = logging.getLogger("trainguard")
T = TypeVar("T")


@dataclass
class ReservedCounter:
    """One cumulative counter (episodes or steps) with its registry reservation.

    The reservation block adapts so the registry is charged about once per ``target_interval``: a fast
    loop would otherwise write to the registry thousands of times a second and starve the heartbeat's
    lease renewal of the database lock (seen: a lease expiring under a tight episode loop), while a slow
    loop keeps small blocks, so a crash forfeits at most about one interval's worth of budget.
    """

    name: str
    limit: int | None
    spent: int  # cumulative over every process of the run, this one included
    reserve: Callable[[int], object]  # charges the registry; raises if it cannot
    target_interval: float = 1.0
    clock: Callable[[], float] = time.monotonic
    reserved: int = field(init=False)
    block: int = field(init=False, default=1)
    _last: float | None = field(init=False, default=None)
    # The training thread (ensure_reserved) and the monitor thread (prefetch) both reserve.
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.reserved = self.spent

    @property
    def remaining(self) -> int | None:
        left = remaining(self.limit, self.spent)
        return None if left is None else int(left)

    def allows(self, amount: int = 1) -> bool:
        return self.limit is None or self.spent + amount <= self.limit

    def ensure_reserved(self, amount: int) -> int:
        """Make sure the registry already counts ``amount`` more; returns the reserved ceiling. (The
        training thread; usually the monitor thread's ``prefetch`` has reserved it already.)"""
        if self.spent + amount - self.reserved > 0:
            with self._lock:
                needed = self.spent + amount - self.reserved
                if needed > 0:
                    grow = max(self.block, needed)
                    if self.limit is not None:
                        grow = min(grow, max(needed, self.limit - self.reserved))
                    self._charge(grow)
        return self.reserved

    def prefetch(self, current: int | None = None) -> int:
        """Reserve the next block before the loop needs it, when less than a block is left (the
        monitor thread, every beat; ``current``: the loop's own count, when ``spent`` is updated only at
        reservations): the training thread then waits on the registry only when it outruns the beat.
        Returns what was reserved (0: nothing needed, or the limit is reached)."""
        with self._lock:
            used = self.spent if current is None else max(self.spent, current)
            if self.reserved - used >= self.block:  # a block (about a beat of work) is still ahead
                return 0
            grow = self.block
            if self.limit is not None:
                grow = min(grow, self.limit - self.reserved)
            if grow <= 0:
                return 0
            self._charge(grow)
            return grow

    def _charge(self, grow: int) -> None:
        self.reserve(grow)
        self.reserved += grow
        now = self.clock()
        if self._last is not None and now - self._last < self.target_interval:
            # Sized from the rate just seen (at most 16x at once): a fast loop reaches blocks of about one
            # interval in a step or two, instead of a registry write per doubling.
            elapsed = max(now - self._last, 1e-3)
            self.block = min(
                self.block * 16, max(self.block * 2, math.ceil(self.block * self.target_interval / elapsed))
            )
        elif self._last is not None and now - self._last > 4 * self.target_interval:
            self.block = max(1, self.block // 2)
        self._last = now

    def unused(self) -> int:
        return self.reserved - self.spent


@dataclass
class Runtime:
    """Runtime spent by the run: the registry's total before this process plus a monotonic clock, and what
    this process has charged the registry for it so far."""

    limit: float | None
    spent_before: float
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    started_wall: float = field(init=False)
    charged: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.started_wall = time.time()

    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def spent(self) -> float:
        return self.spent_before + self.elapsed()

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.spent >= self.limit

    def deadline(self) -> float | None:
        """The monotonic time at which the limit is reached, or None without a limit."""
        if self.limit is None:
            return None
        return self.started + (self.limit - self.spent_before)

    def charge_ahead(self, beat: float, pay: Callable[[float], T]) -> T:
        """Charge the registry (``pay``) so it stays ``prepay(beat)`` ahead of the time actually spent (never
        beyond the limit before the limit is reached). Counted as charged only once ``pay`` returned: a
        charge that failed (a registry outage) is charged again, in full, by the next one."""
        target = self.elapsed() + prepay(beat)
        if self.limit is not None:
            target = min(target, max(self.limit - self.spent_before, self.elapsed()))
        due = target - self.charged
        paid = pay(due)
        self.charged += due
        return paid

    def settle(self, pay: Callable[[float], T], until_wall: float | None = None) -> T:
        """Pay the correction that makes the registry count exactly the time spent (until ``until_wall``, a
        wall-clock time, or now) - usually a refund of the prepay; counted once ``pay`` returned."""
        spent = self.elapsed() if until_wall is None else max(0.0, until_wall - self.started_wall)
        paid = pay(spent - self.charged)
        self.charged = spent
        return paid


@dataclass
class BudgetWarnings:
    """Each budget warns once per process when its spend crosses ``warn_at`` of its limit."""

    warn_at: float
    emit: Callable[[str, float, float], None]
    warned: set[str] = field(default_factory=set)

    def check(self, name: str, spent: float, limit: float | None) -> None:
        if limit is None or name in self.warned or spent < self.warn_at * limit:
            return
        self.warned.add(name)
        self.emit(name, spent, limit)


def warn_log(name: str, spent: float, limit: float) -> None:
    log.warning("trainguard: %s budget at %.0f%% (%g of %g)", name, 100 * spent / limit, spent, limit)


__all__ = ["BudgetWarnings", "ReservedCounter", "Runtime", "warn_log"]
