"""The base of every trainguard error and the exit codes the command line maps them to."""

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


__all__ = [
    "MISSING",
    "ExitCode",
    "TrainguardError",
]
