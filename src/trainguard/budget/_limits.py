"""A run's limits: which budgets there are, the one rule for how a restart may change them (tighten, never
raise), and audited extensions - the only way up. Pure functions over the limits mapping the registry
records; the registry applies them inside the transaction that locks the run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from trainguard.errors import InvalidArgument, LimitRaised


class Budget(StrEnum):
    EPISODES = "episodes"
    STEPS = "steps"
    RUNTIME = "runtime"  # seconds, cumulative over every process of the run
    MEMORY = "memory"  # bytes of resident memory of the process tree, at any moment
    DISK = "disk"  # bytes under the store, at any moment

    @property
    def limit_key(self) -> str:
        """The key of this budget's limit in configs and in the registry: ``max_episodes``..."""
        return f"max_{self.value}"

    @property
    def cumulative(self) -> bool:
        """Spent over the whole run (and charged in the registry), as opposed to a level sampled now."""
        return self in (Budget.EPISODES, Budget.STEPS, Budget.RUNTIME)


# The budgets, and the rules that are limits without being a budget (a CPU ceiling, the patience of the
# no-improvement stop): a restart may tighten them, never loosen or drop them.
LIMIT_KEYS = (*(budget.limit_key for budget in Budget), "max_cpu_percent", "max_episodes_without_improvement")
# What an extension can raise, by budget name: only what is spent cumulatively (a memory cap is not a budget
# that runs out, it is a ceiling).
EXTENDABLE = {budget.value: budget.limit_key for budget in Budget if budget.cumulative}
EXTENSIONS = "extensions"  # key of the recorded limits under which extensions granted so far are kept


@dataclass(frozen=True)
class EffectiveLimits:
    """The limits a run was given, as the registry records them (config, tightened by restarts, raised only
    by extensions). ``None``: no limit."""

    episodes: int | None = None
    steps: int | None = None
    runtime: float | None = None
    memory: int | None = None
    disk: int | None = None
    warn_at: float = 0.9

    @classmethod
    def from_mapping(cls, limits: Mapping[str, Any]) -> EffectiveLimits:
        def number(budget: Budget) -> Any:
            value = limits.get(budget.limit_key)
            return value if isinstance(value, int | float) and not isinstance(value, bool) else None

        runtime = number(Budget.RUNTIME)
        return cls(
            episodes=number(Budget.EPISODES),
            steps=number(Budget.STEPS),
            runtime=float(runtime) if runtime is not None else None,
            memory=number(Budget.MEMORY),
            disk=number(Budget.DISK),
            warn_at=float(limits.get("warn_at", 0.9)),
        )

    def of(self, budget: Budget) -> float | None:
        value: float | None = getattr(self, budget.value)
        return value


@dataclass(frozen=True)
class Remaining:
    """What is left of each budget (None: no limit). Memory and disk are ceilings, not spend: what is left
    is the headroom below the limit at the last sample."""

    episodes: int | None = None
    steps: int | None = None
    runtime: float | None = None
    memory: int | None = None
    disk: int | None = None


def merge_limits(run: str, recorded: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The limits a (re)starting process runs under: ``given`` (its config) checked against what the run
    was ``recorded`` with.

    The first start records them as given. Later starts may tighten a limit (lower it, or add one that was
    missing) but never raise or remove one: a restarted process must not buy itself more budget. Extensions
    granted so far are added on top of whatever the config says. Raises :class:`LimitRaised`.
    """
    extensions = dict(recorded.get(EXTENSIONS, {}))
    effective: dict[str, Any] = {k: v for k, v in given.items() if k not in LIMIT_KEYS}
    for key in LIMIT_KEYS:
        wanted = given.get(key)
        if wanted is not None:
            wanted = wanted + extensions.get(key, 0)
        before = recorded.get(key)
        if before is None or (wanted is not None and wanted <= before):
            effective[key] = wanted
        elif wanted is None:
            effective[key] = before  # a recorded limit cannot be dropped by leaving it out
        else:
            raise LimitRaised(run, key, given[key], before)
    effective = {k: v for k, v in effective.items() if v is not None}
    if extensions:
        effective[EXTENSIONS] = extensions
    return effective


# Supervision settings recorded with the limits, and which way is looser: a longer timing gives a runaway
# more time before anyone acts; "report" instead of "kill" lets a rogue writer keep writing.
_LONGER_IS_LOOSER = ("heartbeat_interval", "lease_ttl", "stall_timeout", "grace")
_ACTION_STRICTNESS = {"kill": 1, "report": 0}


def loosened_settings(recorded: Mapping[str, Any], effective: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The supervision settings that ``effective`` makes looser than ``recorded``: key -> [before, after].
    (Limits themselves never loosen here: :func:`merge_limits` refuses that.)"""
    changes: dict[str, list[Any]] = {}
    for key in _LONGER_IS_LOOSER:
        before, after = recorded.get(key), effective.get(key)
        if before is not None and after is not None and after > before:
            changes[key] = [before, after]
    before, after = recorded.get("rogue_action"), effective.get("rogue_action")
    if before is not None and _ACTION_STRICTNESS.get(str(after), 0) < _ACTION_STRICTNESS.get(str(before), 0):
        changes["rogue_action"] = [before, after]
    return changes


def extend_limits(
    run: str, limits: Mapping[str, Any], amounts: Mapping[str, float | None], *, reason: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """Raise limits by ``amounts`` (by budget name: episodes, steps, runtime in seconds); returns the new
    limits and the amounts granted. The extensions are remembered, so a restart with the old config keeps
    them. Raises :class:`InvalidArgument` naming the parameter."""
    if not reason or not reason.strip():
        raise InvalidArgument("reason", reason, "a budget extension needs a reason for the audit log")
    requested = {k: v for k, v in amounts.items() if v is not None}
    unknown = sorted(set(requested) - set(EXTENDABLE))
    if unknown or not requested:
        raise InvalidArgument(
            unknown[0] if unknown else "amounts",
            requested.get(unknown[0]) if unknown else None,
            f"give one or more of {', '.join(EXTENDABLE)}",
        )
    result = dict(limits)
    extensions = dict(result.get(EXTENSIONS, {}))
    for name, amount in requested.items():
        key = EXTENDABLE[name]
        if not amount or amount <= 0:
            raise InvalidArgument(name, amount, "must be a positive amount")
        if result.get(key) is None:
            raise InvalidArgument(name, amount, f"run {run!r} has no {key} limit to extend")
        result[key] = result[key] + amount
        extensions[key] = extensions.get(key, 0) + amount
    result[EXTENSIONS] = extensions
    return result, requested


__all__ = [
    "EXTENDABLE",
    "EXTENSIONS",
    "LIMIT_KEYS",
    "Budget",
    "EffectiveLimits",
    "Remaining",
    "extend_limits",
    "loosened_settings",
    "merge_limits",
]
