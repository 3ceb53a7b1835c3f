"""How a library error reads at a shell: its own one-line message, plus - where there is one - the command
that gets the user past it. The library speaks of parameters (``takeover=True``, ``extend_budget``); only
the CLI knows its commands and flags, so that wording lives here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainguard.budget import EXTENDABLE
from trainguard.errors import (
    MISSING,
    BudgetExhausted,
    ConfigError,
    LeaseHeld,
    LimitRaised,
    RegistryMismatch,
    TrainguardError,
)


def _extend(run: str, budget: str) -> str:
    unit = "DURATION" if budget == "runtime" else "N"
    return f"trainguard budget extend {run} --{budget} {unit} --reason TEXT"


def _limit_raised(error: LimitRaised) -> str | None:
    key = error.parameter.split(".")[-1]
    budget = next((name for name, limit_key in EXTENDABLE.items() if limit_key == key), None)
    return _extend(error.run, budget) if budget is not None else None


# Most specific first (LimitRaised is a ConfigError).
_HINTS: tuple[tuple[type[TrainguardError], Callable[[Any], str | None]], ...] = (
    (LimitRaised, _limit_raised),
    (BudgetExhausted, lambda e: _extend(e.run, e.budget) if e.budget in EXTENDABLE else None),
    (RegistryMismatch, lambda e: f"trainguard registry rebuild --store {e.store} --public-key K --reason R"),
    (LeaseHeld, lambda e: f"`trainguard stop {e.run} --reason TEXT` stops it, `run --takeover` replaces it"),
    (ConfigError, lambda e: "give --run NAME" if e.key == "run" and e.value is MISSING else None),
)  # fmt: skip


def hint(error: TrainguardError) -> str | None:
    """The command that resolves ``error``, if there is one."""
    for kind, make in _HINTS:
        if isinstance(error, kind):
            return make(error)
    return None


def describe(error: TrainguardError) -> str:
    """One line: the error, then its hint."""
    extra = hint(error)
    return f"{error}; {extra}" if extra else str(error)


__all__ = ["describe", "hint"]
