"""A Guard's account of the run's budgets: episodes and steps reserved ahead in the registry, runtime
prepaid by heartbeats, warnings at ``warn_at`` - and, at a clean exit, the refund of what was reserved but
not used (docs/design.md, "Budgets").

Its decisions are values: ``begin_episode`` and ``reserve_steps`` return the :class:`Stop` the loop must
take (or None), and the Guard requests it. Nothing here knows about the Guard.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from trainguard.budget import (
    BudgetWarnings,
    EffectiveLimits,
    Remaining,
    ReservedCounter,
    Runtime,
    remaining,
)
from trainguard.errors import LeaseLost
from trainguard.guard._stop import Stop, StopReason
from trainguard.registry import Lease, Registry, RunRecord


class BudgetAccount:
    def __init__(
        self,
        registry: Registry,
        run: RunRecord,
        limits: dict[str, Any],
        *,
        lease: Lease,
        beat: float,
        warn: Callable[[str, float, float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        name = run.name
        self.registry = registry
        self.run = name
        self.beat = beat  # the heartbeat period: runtime is prepaid by PREPAY_HEARTBEATS of it
        self.limits = limits
        self.episodes = ReservedCounter(
            "episodes",
            limits.get("max_episodes"),
            run.episodes_spent,
            # On the loop's path: a registry outage shorter than the lease is a pause, not a crash.
            reserve=lambda n: lease.while_held(lambda: registry.charge(name, episodes=n), what="episodes"),
            # A block lasts about a beat, so the monitor's prefetch each beat keeps the loop ahead; a crash
            # forfeits at most about that much budget.
            target_interval=max(1.0, beat),
        )
        self.steps = ReservedCounter(
            "steps",
            limits.get("max_steps"),
            run.steps_spent,
            reserve=lambda n: lease.while_held(lambda: registry.charge(name, steps=n), what="steps"),
            target_interval=max(1.0, beat),
        )
        self.runtime = Runtime(limits.get("max_runtime"), run.runtime_spent, clock=clock)
        self.warnings = BudgetWarnings(float(limits.get("warn_at", 0.9)), emit=warn)
        # warn_episodes: judged as each episode begins (the heartbeat's check_level, once the session starts)
        self.level_reached: Callable[[str, float], None] = lambda _name, _reading: None

    # -- episodes and steps (the loop's thread) ---------------------------------------------------

    def begin_episode(self, episode: int) -> Stop | None:
        """Reserve ``episode`` before the loop may run it; a stop when the budget does not allow it."""
        limit = self.episodes.limit
        if not self.episodes.allows(1):
            return Stop(StopReason.EPISODES, f"{self.episodes.spent} of {limit} episodes spent")
        if limit is not None and episode > limit:
            return Stop(StopReason.EPISODES, f"episode {episode} is beyond the budget of {limit}")
        try:
            self.episodes.ensure_reserved(1)
        except LeaseLost as lost:  # the registry was unreachable for longer than the lease
            return Stop(StopReason.LEASE_LOST, lost.reason)
        self.warnings.check("episodes", self.episodes.spent + 1, limit)
        self.level_reached("episodes", self.episodes.spent + 1)
        return None

    def end_episode(self) -> None:
        self.episodes.spent += 1

    def episodes_exhausted(self) -> Stop | None:
        """After counting an episode: the stop when no further one may start."""
        if self.episodes.allows(1):
            return None
        return Stop(StopReason.EPISODES, f"{self.episodes.spent} of {self.episodes.limit} episodes spent")

    def reserve_steps(self, total: int) -> Stop | None:
        """The loop has taken ``total`` steps over the whole run: reserve the next block, or stop."""
        self.steps.spent = total
        limit = self.steps.limit
        if limit is not None and total >= limit:
            # tick(n) can cross the last reservation and the limit at once: the steps taken are charged
            # all the same (they were run), only the next one is refused.
            try:
                self.steps.ensure_reserved(0)
            except LeaseLost as lost:
                return Stop(StopReason.LEASE_LOST, lost.reason)
            return Stop(StopReason.STEPS, f"{total} of {limit} steps spent")
        try:
            self.steps.ensure_reserved(1)
        except LeaseLost as lost:
            return Stop(StopReason.LEASE_LOST, lost.reason)
        self.warnings.check("steps", total, limit)
        return None

    def prefetch(self, steps_now: int) -> None:
        """The monitor thread, every beat: reserve the next block of episodes and steps before the loop needs
        it, so the training thread is not the one that waits on the registry."""
        self.episodes.prefetch()
        self.steps.prefetch(steps_now)

    def step_gate(self) -> int:
        """The step count up to which ``tick`` needs no slow path: the reservation, capped by the limit."""
        limit = self.steps.limit
        return self.steps.reserved if limit is None else min(self.steps.reserved, limit)

    # -- runtime and limits (the monitor's thread) --------------------------------------------------

    def charge_runtime(self) -> None:
        """Keep the registry's runtime ahead of the time spent; pick up limits changed meanwhile (``budget
        extend``) from the row the charge returns, without a second query."""
        self.refresh(
            self.runtime.charge_ahead(self.beat, lambda due: self.registry.charge(self.run, runtime=due))
        )
        self.warnings.check("runtime", self.runtime.spent, self.runtime.limit)

    def refresh(self, info: RunRecord) -> None:
        if info.limits == self.limits:
            return
        self.limits = info.limits
        self.episodes.limit = info.limits.get("max_episodes")
        self.steps.limit = info.limits.get("max_steps")
        self.runtime.limit = info.limits.get("max_runtime")

    def runtime_spent_already(self) -> Stop | None:
        """At start: the stop when earlier processes have spent the whole runtime budget."""
        if not self.runtime.exhausted:
            return None
        return Stop(StopReason.RUNTIME, f"runtime budget of {self.runtime.limit:g}s already spent")

    def runtime_reached(self) -> Stop:
        """At the runtime deadline (the monitor wakes for it)."""
        return Stop(StopReason.RUNTIME, f"runtime budget of {self.runtime.limit:g}s reached")

    # -- reading and settling ---------------------------------------------------------------------

    def spent(self) -> dict[str, Any]:
        return {
            "episodes": self.episodes.spent,
            "steps": self.steps.spent,
            "runtime": round(self.runtime.spent, 3),
        }

    def effective(self) -> EffectiveLimits:
        return EffectiveLimits.from_mapping(self.limits)

    def remaining(self, *, steps: int, rss: int, disk: int) -> Remaining:
        """What is left of each budget, with the loop's ``steps`` so far and the last ``rss``/``disk``
        samples."""
        limits = self.effective()
        left = {
            "steps": remaining(limits.steps, steps),
            "runtime": remaining(limits.runtime, self.runtime.spent),
            "memory": remaining(limits.memory, rss),
            "disk": remaining(limits.disk, disk),
        }
        return Remaining(
            episodes=self.episodes.remaining,
            steps=None if left["steps"] is None else int(left["steps"]),
            runtime=left["runtime"],
            memory=None if left["memory"] is None else int(left["memory"]),
            disk=None if left["disk"] is None else int(left["disk"]),
        )

    def settle(self, steps_total: int) -> None:
        """At a clean exit: refund what was reserved but not used, charge the runtime actually spent."""
        self.steps.spent = steps_total
        self.runtime.settle(
            lambda correction: self.registry.charge(
                self.run,
                episodes=-self.episodes.unused(),
                steps=-self.steps.unused(),  # steps taken past the reservation (after a stop) too
                runtime=correction,
            )
        )


__all__ = ["BudgetAccount"]
