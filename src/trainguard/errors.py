"""Every exception trainguard raises, and the exit codes the command line maps them to.

Each one subclasses the standard error it refines (so ``except ValueError`` still works for callers that do
not know trainguard), carries its data as attributes, and renders a one-line message that names the
parameter, the value and the rule. ``exit_code`` is what the CLI exits with when the error reaches it (see
:class:`ExitCode`). Messages speak of the library's parameters; what to type at a shell is added by the
CLI (``trainguard.cli``), never here.

Expected outcomes - a budget ran out, a commit was refused by the registry, a gate failed - are values with
a reason (``Stop``, ``CommitVerdict``, ``Verdict``); these are the errors.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar


class ExitCode(IntEnum):
    """The command line's exit statuses (``trainguard run`` passes its child's status through otherwise)."""

    OK = 0
    PROBLEM = 1  # a check found a problem: a corrupt checkpoint, a failed gate, a rogue writer
    USAGE = 2  # bad usage, config or input: an unknown run, a wrong state, a bad value
    REFUSED = 3  # refused by a guard rule: the lease, the budget, a fence


class TrainguardError(Exception):
    """Base of every trainguard error; ``exit_code`` is the CLI's exit status for it."""

    exit_code: ClassVar[ExitCode] = ExitCode.PROBLEM

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


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


# The value of a required key that was not given (shown as "(missing)", not as None).
MISSING: Any = _Missing()


# -- bad input (exit 2) ----------------------------------------------------------------------------------


class InvalidArgument(TrainguardError, ValueError):
    """A value given to the library that breaks a rule: ``parameter``, ``value`` and ``rule`` say which."""

    exit_code = ExitCode.USAGE

    def __init__(self, parameter: str, value: Any, rule: str) -> None:
        self.parameter = parameter
        self.value = value
        self.rule = rule
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.parameter} = {self.value!r}: {self.rule}"


class ConfigError(InvalidArgument):
    """A configuration value that breaks a rule; ``key`` is the dotted path of the offending key and
    ``source`` the file it came from."""

    def __init__(self, key: str, value: Any, rule: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(key, value, rule)

    @property
    def key(self) -> str:
        return self.parameter

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{super().__str__()}"


class LimitRaised(ConfigError):
    """A restart asked for a higher limit than the run was given: only an audited extension raises one."""

    def __init__(self, run: str, key: str, value: Any, recorded: float) -> None:
        self.run = run
        self.limit_key = key  # "max_episodes"
        self.recorded = recorded
        super().__init__(
            f"limits.{key}",
            value,
            f"run {run!r} was given {recorded:g} (recorded in the registry); a restart cannot raise a "
            "limit, only an audited budget extension can",
        )


class InvalidName(InvalidArgument):
    """A run or checkpoint name that could escape its directory or cannot be stored."""

    def __init__(self, what: str, value: str, rule: str) -> None:
        self.what = what
        super().__init__(what, value, rule)

    def __str__(self) -> str:
        return f"invalid {self.what} name {self.value!r}: {self.rule}"


class RunNotFound(TrainguardError, LookupError):
    """No run of that name in the registry."""

    exit_code = ExitCode.USAGE

    def __init__(self, run: str, registry: str) -> None:
        self.run = run
        self.registry = registry
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"run {self.run!r} is not in the registry {self.registry}"


class CheckpointNotFound(TrainguardError, LookupError):
    """No checkpoint of that name in the run."""

    exit_code = ExitCode.USAGE

    def __init__(self, run: str, name: str, detail: str = "no such checkpoint in the registry") -> None:
        self.run = run
        self.name = name
        self.detail = detail
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"checkpoint {self.name!r} of run {self.run!r}: {self.detail}"


class StateConflict(TrainguardError, RuntimeError):
    """Something exists but is in a state the operation does not allow (a quarantined checkpoint asked to
    load, a pinned one to be evicted, a Guard used outside its ``with`` block)."""

    exit_code = ExitCode.USAGE

    def __init__(self, subject: str, state: str, rule: str) -> None:
        self.subject = subject
        self.state = state
        self.rule = rule
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.subject} is {self.state}: {self.rule}"


class FingerprintMismatch(TrainguardError, ValueError):
    """Resuming (or promoting, or serving) a checkpoint made with other input features."""

    exit_code = ExitCode.USAGE

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


class NotSupported(TrainguardError, RuntimeError):
    """A feature this platform does not have (the launcher and watchdog need Linux)."""

    exit_code = ExitCode.USAGE

    def __init__(self, feature: str, platform: str, alternative: str) -> None:
        self.feature = feature
        self.platform = platform
        self.alternative = alternative
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.feature} is not supported on {self.platform}: {self.alternative}"


class MissingDependency(TrainguardError, ImportError):
    """An optional dependency that a feature needs is not installed."""

    exit_code = ExitCode.USAGE

    def __init__(self, package: str, extra: str, feature: str) -> None:
        self.package = package
        self.extra = extra
        self.feature = feature
        super().__init__(str(self), name=package)

    def __str__(self) -> str:
        install = f"pip install 'trainguard[{self.extra}]'"
        return f"{self.feature} needs {self.package}, which is not installed: {install}"


# -- refused by a guard rule (exit 3) ------------------------------------------------------------------


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


# -- a check found a problem, or the machine failed us (exit 1) -----------------------------------------


class CorruptCheckpoint(TrainguardError, ValueError):
    """A checkpoint whose files do not match its manifest or cannot be decoded."""

    exit_code = ExitCode.PROBLEM

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

    exit_code = ExitCode.PROBLEM

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

    exit_code = ExitCode.PROBLEM

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"checkpoint {self.name!r} rejected at step 'validate': {self.reason} [nothing committed]"


class RegistryError(TrainguardError, ConnectionError):
    """The registry database could not be opened or used."""

    exit_code = ExitCode.PROBLEM

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
    "ExitCode",
    "FingerprintMismatch",
    "InvalidArgument",
    "InvalidName",
    "LeaseHeld",
    "LeaseLost",
    "LimitRaised",
    "MissingDependency",
    "NotSupported",
    "RegistryError",
    "RunNotFound",
    "StateConflict",
    "TrainguardError",
    "UnsafeCheckpoint",
]
