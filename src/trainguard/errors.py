"""Every exception trainguard raises.

Each one subclasses the standard error it refines (so ``except ValueError`` still works for callers that do
not know trainguard), carries its data as attributes, and renders a one-line message that names the
parameter, the value and the rule. ``exit_code`` is what the CLI exits with when the error reaches it:
1 a check found a problem, 2 bad usage or config, 3 refused by a guard rule (lease, budget, fence).
"""

from __future__ import annotations

from typing import Any


class TrainguardError(Exception):
    """Base of every trainguard error; ``exit_code`` is the CLI's exit status for it."""

    exit_code = 1

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take keyword-only data; rebuild from the stored fields so errors survive pickling
        # (multiprocessing, concurrent.futures) with their attributes intact.
        return (_rebuild, (type(self), self._fields()))

    def _fields(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def _rebuild(cls: type[TrainguardError], fields: dict[str, Any]) -> TrainguardError:
    error = cls.__new__(cls)
    error.__dict__.update(fields)
    Exception.__init__(error, str(error))
    return error


class InvalidName(TrainguardError, ValueError):
    """A run or checkpoint name that could escape its directory or cannot be stored."""

    exit_code = 2

    def __init__(self, what: str, value: str, rule: str) -> None:
        self.what = what
        self.value = value
        self.rule = rule
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"invalid {self.what} name {self.value!r}: {self.rule}"


class ConfigError(TrainguardError, ValueError):
    """A configuration value that breaks a rule; ``key`` is the dotted path of the offending key."""

    exit_code = 2

    def __init__(self, key: str, value: Any, rule: str, *, source: str | None = None) -> None:
        self.key = key
        self.value = value
        self.rule = rule
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        shown = "(missing)" if self.value is _MISSING else repr(self.value)
        return f"{where}{self.key} = {shown}: {self.rule}"


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


_MISSING: Any = _Missing()
MISSING = _MISSING


class LeaseHeld(TrainguardError, RuntimeError):
    """Acquiring a run's lease while a live holder still has it (and no takeover was asked for)."""

    exit_code = 3

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
            f"since {since} (token {self.token}); pass takeover=True (CLI: --takeover) to revoke it"
        )


class LeaseLost(TrainguardError, RuntimeError):
    """The caller's lease is no longer current: expired, released, revoked or taken over."""

    exit_code = 3

    def __init__(self, run: str, token: int, reason: str) -> None:
        self.run = run
        self.token = token
        self.reason = reason
        # Not super(): CommitFenced inherits from both LeaseLost and CommitRefused.
        RuntimeError.__init__(self, str(self))

    def __str__(self) -> str:
        return f"lease of run {self.run!r} with token {self.token} is no longer held: {self.reason}"


class CommitRefused(TrainguardError, RuntimeError):
    """The registry refused to commit a checkpoint (budget, duplicate name, or a fence)."""

    exit_code = 3

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


class CheckpointNotFound(TrainguardError, LookupError):
    """No committed checkpoint of that name in the run."""

    exit_code = 2

    def __init__(self, run: str, name: str, detail: str = "no such checkpoint in the registry") -> None:
        self.run = run
        self.name = name
        self.detail = detail
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"checkpoint {self.name!r} of run {self.run!r}: {self.detail}"


class CorruptCheckpoint(TrainguardError, ValueError):
    """A checkpoint whose files do not match its manifest or cannot be decoded."""

    exit_code = 1

    def __init__(self, name: str, file: str, reason: str) -> None:
        self.name = name
        self.file = file
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"checkpoint {self.name!r}: {self.file}: {self.reason}"


class UnsafeCheckpoint(CorruptCheckpoint):
    """A file that would execute code when loaded (a pickle with globals); it is never loaded."""


class CheckpointWriteError(TrainguardError, OSError):
    """A step of the commit protocol failed; ``step`` names it, ``committed`` says whether the registry had
    already decided (then the checkpoint is rolled forward by the next open, never lost)."""

    exit_code = 1

    def __init__(self, step: str, path: str, cause: BaseException, *, committed: bool = False) -> None:
        self.step = step
        self.path = path
        self.cause_text = f"{type(cause).__name__}: {cause}"
        self.committed = committed
        errno = getattr(cause, "errno", None)
        super().__init__(errno, str(self))

    def __str__(self) -> str:
        state = "committed, will be rolled forward at next open" if self.committed else "nothing committed"
        return f"checkpoint save failed at step {self.step!r} ({self.path}): {self.cause_text} [{state}]"


class CheckpointRejected(TrainguardError, ValueError):
    """The state cannot become a checkpoint: a validator refused it (NaN values, a type that would need
    pickle, a user hook). Nothing was committed."""

    exit_code = 1

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"checkpoint {self.name!r} rejected at step 'validate': {self.reason} [nothing committed]"


class FingerprintMismatch(TrainguardError, ValueError):
    """Resuming (or promoting, or serving) a checkpoint made with other input features."""

    exit_code = 2

    def __init__(self, name: str, differences: list[str], what: str = "resume") -> None:
        self.name = name
        self.differences = differences
        self.what = what
        super().__init__(str(self))

    def __str__(self) -> str:
        shown = "; ".join(self.differences[:5]) + (
            f"; and {len(self.differences) - 5} more" if len(self.differences) > 5 else ""
        )
        return (
            f"refusing to {self.what} from checkpoint {self.name!r}: it was made with different features "
            f"({shown}); fix the feature files, or start a new run"
        )


class RegistryError(TrainguardError, ConnectionError):
    """The registry database could not be opened or used."""

    exit_code = 1

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"registry {self.url}: {self.reason}"


__all__ = [
    "MISSING",
    "CheckpointNotFound",
    "CheckpointRejected",
    "CheckpointWriteError",
    "CommitFenced",
    "CommitRefused",
    "ConfigError",
    "CorruptCheckpoint",
    "FingerprintMismatch",
    "InvalidName",
    "LeaseHeld",
    "LeaseLost",
    "RegistryError",
    "TrainguardError",
    "UnsafeCheckpoint",
]
