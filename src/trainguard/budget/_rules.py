"""How spend is judged against limits - the same way by the Guard, the launcher, the watchdog, the incident
scan, the CLI and the metrics.

Runtime is charged *ahead*: a process keeps the registry ``PREPAY_HEARTBEATS`` heartbeats ahead of the time
it has actually spent, so a crash can only cost budget, never hand it back. The price is that the recorded
runtime may run ahead of the truth by that much; only beyond it is a runtime budget *certainly* overrun.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from trainguard.budget._limits import EXTENSIONS, Budget

PREPAY_HEARTBEATS = 2
DEFAULT_HEARTBEAT = 5.0  # seconds; the config's default, for runs recorded without one


class Spend(Protocol):
    """What a run has spent and was given (a registry ``RunRecord`` is one)."""

    @property
    def limits(self) -> Mapping[str, Any]: ...
    @property
    def episodes_spent(self) -> int: ...
    @property
    def steps_spent(self) -> int: ...
    @property
    def runtime_spent(self) -> float: ...


def spent(run: Spend, budget: Budget) -> float | None:
    """What ``run`` has spent of a cumulative budget (None for memory and disk: levels, not spend)."""
    return {
        Budget.EPISODES: run.episodes_spent,
        Budget.STEPS: run.steps_spent,
        Budget.RUNTIME: run.runtime_spent,
    }.get(budget)


def remaining(limit: float | None, used: float) -> float | None:
    """What is left of a limit (never negative); None without a limit."""
    return None if limit is None else max(0, limit - used)


def heartbeat_interval(limits: Mapping[str, Any]) -> float:
    value = limits.get("heartbeat_interval")
    return float(value) if isinstance(value, int | float) else DEFAULT_HEARTBEAT


def prepay(beat: float) -> float:
    """Runtime charged ahead of the time spent, for a process that beats every ``beat`` seconds."""
    return PREPAY_HEARTBEATS * beat


@dataclass(frozen=True)
class BudgetLine:
    """One budget of a run: what ``trainguard budget show`` prints and the metrics export."""

    budget: Budget
    spent: float | None
    limit: float | None
    remaining: float | None
    extended_by: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget.value,
            "spent": self.spent,
            "limit": self.limit,
            "remaining": self.remaining,
            "extended_by": self.extended_by,
        }


def budget_lines(run: Spend) -> list[BudgetLine]:
    """Every budget of ``run``, cumulative ones first."""
    extensions = run.limits.get(EXTENSIONS, {})
    lines = []
    for budget in Budget:
        limit = run.limits.get(budget.limit_key)
        used = spent(run, budget)
        lines.append(
            BudgetLine(
                budget,
                used,
                limit,
                remaining(limit, used) if used is not None else None,
                extensions.get(budget.limit_key, 0),
            )
        )
    return lines


@dataclass(frozen=True)
class Overrun:
    """A budget that is certainly overrun - spent past its limit, or a level over its ceiling: an expected
    outcome, so a value with a reason."""

    budget: Budget
    spent: float
    limit: float

    def __str__(self) -> str:
        if self.budget is Budget.RUNTIME:
            return f"runtime {self.spent:.1f}s is past the budget of {self.limit:g}s"
        if self.budget is Budget.MEMORY:
            return f"process tree RSS {self.spent:.0f} bytes is over max_memory {self.limit:.0f}"
        if self.budget is Budget.DISK:
            return f"{self.spent:.0f} bytes under the store is over max_disk {self.limit:.0f}"
        return f"{self.spent:.0f} {self.budget.value} spent of {self.limit:.0f}"


def over_ceiling(budget: Budget, level: float, limit: float | None) -> Overrun | None:
    """Memory and disk are ceilings: over the limit is an overrun, wherever it was measured (in the Guard's
    process, by the launcher for its child's tree, by the watchdog)."""
    if limit is None or level <= limit:
        return None
    return Overrun(budget, level, limit)


def overruns(run: Spend) -> list[Overrun]:
    """The budgets ``run`` has certainly overrun, runtime first.

    Runtime counts only beyond its prepay (see the module's docstring). Episodes are reserved one episode
    ahead and capped at the limit, so any excess is real (a legacy script counted from its files). Steps
    are not judged from outside: a single ``tick(n)`` may overshoot by its own ``n``, and the Guard stops
    the loop on the spot.
    """
    found = []
    limit = run.limits.get(Budget.RUNTIME.limit_key)
    if limit is not None and run.runtime_spent > limit + prepay(heartbeat_interval(run.limits)):
        found.append(Overrun(Budget.RUNTIME, run.runtime_spent, limit))
    limit = run.limits.get(Budget.EPISODES.limit_key)
    if limit is not None and run.episodes_spent > limit:
        found.append(Overrun(Budget.EPISODES, run.episodes_spent, limit))
    return found


def exhausted(run: Spend) -> Overrun | None:
    """The first cumulative budget (episodes, steps, runtime) whose spend has reached its limit: a new start
    of the run is refused (nothing is left for it to spend)."""
    for budget in (Budget.EPISODES, Budget.STEPS, Budget.RUNTIME):
        limit, used = run.limits.get(budget.limit_key), spent(run, budget)
        if limit is not None and used is not None and used >= limit:
            return Overrun(budget, used, limit)
    return None


__all__ = [
    "DEFAULT_HEARTBEAT",
    "PREPAY_HEARTBEATS",
    "BudgetLine",
    "Overrun",
    "Spend",
    "budget_lines",
    "exhausted",
    "heartbeat_interval",
    "over_ceiling",
    "overruns",
    "prepay",
    "remaining",
    "spent",
]
