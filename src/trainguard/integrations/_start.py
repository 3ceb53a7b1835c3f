"""Whether a framework may take its first step under a Guard (shared by the integrations that must refuse
before the framework runs one: Hugging Face runs a step before it reads ``should_training_stop``, Ray would
start a worker group)."""

from __future__ import annotations

from trainguard.errors import BudgetExhausted, LeaseLost
from trainguard.guard import Guard, StopReason


def start_refusal(guard: Guard) -> Exception | None:
    """None when training may start; else what to raise: ``BudgetExhausted`` for a budget the run has
    already spent (only an audited extension gives it more), ``LeaseLost`` for a lease gone at once, a
    ``RuntimeError`` naming any other stop."""
    if guard.stop is None and guard.tick(0):
        return None
    budget = str(guard.stop_reason or StopReason.STEPS)
    limit = getattr(guard.limits, budget, None)
    if limit is not None:
        return BudgetExhausted(guard.run, budget, float(limit), float(limit))
    if guard.stop_reason is StopReason.LEASE_LOST:
        return LeaseLost(guard.run, guard.lease.token, str(guard.stop))
    return RuntimeError(f"trainguard: run {guard.run!r} cannot train: {guard.stop}")


__all__ = ["start_refusal"]
