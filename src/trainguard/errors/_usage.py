"""Bad usage, config or input (exit 2): the caller can fix it and try again."""

from __future__ import annotations

from typing import Any

from trainguard.errors._base import ExitCode, TrainguardError


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


class RegistryNotFound(TrainguardError, FileNotFoundError):
    """A registry that must exist does not (a read-only command never creates one: an empty registry made by
    a typo would report "nothing found")."""

    exit_code = ExitCode.USAGE

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"registry {self.url}: {self.reason}"


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


class RegistryMismatch(StateConflict):
    """A store opened with a registry that is not the one it was written with - another registry, or an
    empty one where the store holds committed checkpoints (a deleted ``registry.db`` recreated): refused,
    because it would silently start a new lineage (tokens from 1, budgets from 0). The way back is the
    registry the store was written with, or one rebuilt from the store's signed manifests
    (``trainguard.checkpoints.rebuild_registry``)."""

    def __init__(self, store: str, registry: str, state: str) -> None:
        self.store = store
        self.registry = registry
        super().__init__(
            f"store {store}",
            state,
            f"{registry} is not the registry it was written with; open it with that one, or rebuild a "
            "registry from the store's signed manifests",
        )


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


__all__ = [
    "CheckpointNotFound",
    "ConfigError",
    "FingerprintMismatch",
    "InvalidArgument",
    "InvalidName",
    "LimitRaised",
    "MissingDependency",
    "NotSupported",
    "RegistryMismatch",
    "RegistryNotFound",
    "RunNotFound",
    "StateConflict",
]
