"""Why a guarded loop (or a launched command) ended: an expected outcome, so a value with a reason, not an
exception. The launcher and the Guard share these reasons."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class StopReason(StrEnum):
    EPISODES = "episodes"  # the run's episode budget is spent
    STEPS = "steps"
    RUNTIME = "runtime"
    MEMORY = "memory"  # RSS of the process tree over max_memory
    DISK = "disk"  # bytes under the store over max_disk
    CPU = "cpu"  # the process tree's CPU over max_cpu_percent, sustained over cpu_window
    NO_IMPROVEMENT = "no_improvement"  # the metric stalled for max_episodes_without_improvement
    LEASE_LOST = "lease_lost"  # revoked, taken over, expired: this process no longer owns the run
    SIGNAL = "signal"  # SIGINT/SIGTERM asked for a graceful stop
    ERROR = "error"  # the loop raised


# Graceful stops let the current episode finish and take a final checkpoint; the others end the loop at
# the next tick (memory and disk because continuing makes them worse, a lost lease because nothing this
# process writes can be committed any more).
GRACEFUL = frozenset(
    {StopReason.EPISODES, StopReason.RUNTIME, StopReason.SIGNAL, StopReason.CPU, StopReason.NO_IMPROVEMENT}
)
# The cumulative budgets: a stop for one of these is recorded as "budget_exhausted".
BUDGET_REASONS = frozenset({StopReason.EPISODES, StopReason.STEPS, StopReason.RUNTIME})
# Stops a guard rule decided (not the user, not a crash): `trainguard run` exits with ExitCode.REFUSED.
REFUSALS = frozenset(
    {
        *BUDGET_REASONS,
        StopReason.MEMORY,
        StopReason.DISK,
        StopReason.CPU,
        StopReason.NO_IMPROVEMENT,
        StopReason.LEASE_LOST,
    }
)
# A final checkpoint is worth writing only where the store can still accept it and it does not add to the
# problem.
FINAL_CHECKPOINT = frozenset(
    {
        StopReason.EPISODES,
        StopReason.STEPS,
        StopReason.RUNTIME,
        StopReason.SIGNAL,
        StopReason.CPU,
        StopReason.NO_IMPROVEMENT,
    }
)


@dataclass(frozen=True)
class Stop:
    reason: StopReason
    detail: str

    @property
    def graceful(self) -> bool:
        return self.reason in GRACEFUL

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


__all__ = ["BUDGET_REASONS", "FINAL_CHECKPOINT", "GRACEFUL", "REFUSALS", "Stop", "StopReason"]
