"""How a library error reads at a shell: its own one-line message, plus - where there is one - the command
that gets the user past it. The library speaks of parameters (``takeover=True``, ``extend_budget``); only
the CLI knows its commands and flags, so that wording lives here."""

from __future__ import annotations

from trainguard.budget import EXTENDABLE
from trainguard.errors import MISSING, ConfigError, LeaseHeld, LimitRaised, RegistryMismatch, TrainguardError


def hint(error: TrainguardError) -> str | None:
    """The command that resolves ``error``, if there is one."""
    if isinstance(error, LimitRaised):
        budget = next(
            (name for name, key in EXTENDABLE.items() if key == error.parameter.split(".")[-1]), None
        )
        if budget is not None:
            return f"trainguard budget extend {error.run} --{budget} N --reason TEXT"
        return None
    if isinstance(error, RegistryMismatch):
        return f"trainguard registry rebuild --store {error.store} --public-key KEY.pub --reason TEXT"
    if isinstance(error, LeaseHeld):
        return f"trainguard stop {error.run} --reason TEXT stops the holder"
    if isinstance(error, ConfigError) and error.key == "run" and error.value is MISSING:
        return "give --run NAME"
    return None


def describe(error: TrainguardError) -> str:
    """One line: the error, then its hint."""
    extra = hint(error)
    return f"{error}; {extra}" if extra else str(error)


__all__ = ["describe", "hint"]
