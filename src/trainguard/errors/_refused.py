"""Refused by a guard rule (exit 3): the lease, the budget, a fence."""

from __future__ import annotations

from trainguard.errors._base import ExitCode, TrainguardError


class LeaseHeld(TrainguardError, RuntimeError):
    """Acquiring a run's lease while a live holder still has it (and no takeover was asked for)."""

    exit_code = ExitCode.REFUSED

    def __init__(self, run: str, holder_host: str, holder_pid: int, since: float, token: int) -> None:
        self.run = run
        self.holder_host = holder_host
        self.holder_pid = holder_pid
        self.since = since
        self.token = token
        super().__init__(str(self))

    def __str__(self) -> str:
        from datetime import UTC, datetime

        since = datetime.fromtimestamp(self.since, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"lease of run {self.run!r} is held by pid {self.holder_pid} on {self.holder_host} "
            f"since {since} (token {self.token}); acquire with takeover=True to revoke it"
        )


class LeaseLost(TrainguardError, RuntimeError):
    """The caller's lease is no longer current: expired, released, revoked or taken over."""

    exit_code = ExitCode.REFUSED

    def __init__(self, run: str, token: int, reason: str) -> None:
        self.run = run
        self.token = token
        self.reason = reason
        # Not super(): CommitFenced inherits from both LeaseLost and CommitRefused.
        RuntimeError.__init__(self, str(self))

    def __str__(self) -> str:
        return f"lease of run {self.run!r} with token {self.token} is no longer held: {self.reason}"


class BudgetExhausted(TrainguardError, RuntimeError):
    """A start refused because the run has already spent a cumulative budget (episodes, steps, runtime):
    only an audited extension gives it more."""

    exit_code = ExitCode.REFUSED

    def __init__(self, run: str, budget: str, spent: float, limit: float) -> None:
        self.run = run
        self.budget = budget  # "episodes", "steps" or "runtime"
        self.spent = spent
        self.limit = limit
        super().__init__(str(self))

    def __str__(self) -> str:
        unit = "s" if self.budget == "runtime" else f" {self.budget}"
        return (
            f"run {self.run!r} has spent {self.spent:g}{unit} of its {self.limit:g}{unit} budget: "
            "not started (a restart cannot buy more budget)"
        )


class CommitRefused(TrainguardError, RuntimeError):
    """The registry refused to commit a checkpoint (budget, duplicate name, or a fence)."""

    exit_code = ExitCode.REFUSED

    def __init__(self, run: str, name: str, token: int, reason: str) -> None:
        self.run = run
        self.name = name
        self.token = token
        self.reason = reason
        RuntimeError.__init__(self, str(self))  # see LeaseLost

    def __str__(self) -> str:
        return (
            f"commit of checkpoint {self.name!r} for run {self.run!r} with token {self.token} "
            f"refused: {self.reason}"
        )


class CommitFenced(CommitRefused, LeaseLost):
    """A commit refused because the writer's token is not current: a ``CommitRefused`` and a ``LeaseLost``."""

    def __init__(self, run: str, name: str, token: int, reason: str) -> None:
        CommitRefused.__init__(self, run, name, token, reason)

    def __str__(self) -> str:
        return CommitRefused.__str__(self)


__all__ = [
    "BudgetExhausted",
    "CommitFenced",
    "CommitRefused",
    "LeaseHeld",
    "LeaseLost",
]
