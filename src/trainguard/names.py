"""Validation of run and checkpoint names, and of the file-name patterns legacy checkpoints are found by.

Names become directory names under the store and keys in the registry, so anything that could climb out of
the store (``/``, ``..``), hide (a leading dot collides with ``.staging`` and ``.quarantine``), or be cut
short by C APIs (NUL) is refused before it reaches the filesystem.
"""

from __future__ import annotations

import re

from trainguard.errors import InvalidArgument, InvalidName

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
MAX_NAME_LENGTH = 128


def validate_name(value: object, what: str = "run") -> str:
    """Return ``value`` if it is a safe run/checkpoint name, else raise :class:`InvalidName`."""
    if not isinstance(value, str):
        raise InvalidName(what, repr(value), "must be a string")
    if not value:
        raise InvalidName(what, value, "must not be empty")
    if "\x00" in value:
        raise InvalidName(what, value, "must not contain NUL")
    if "/" in value or "\\" in value:
        raise InvalidName(what, value, "must not contain '/' or '\\' (it names one directory)")
    if ".." in value:
        raise InvalidName(what, value, "must not contain '..'")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidName(what, value, f"must be at most {MAX_NAME_LENGTH} characters")
    if not _NAME.fullmatch(value):
        raise InvalidName(
            what, value, "allowed: letters, digits, '-', '_', '.'; must not start with '.' or '-'"
        )
    return value


def episode_pattern(parameter: str, pattern: str) -> re.Pattern[str]:
    """A regular expression that finds legacy checkpoint files (``checkpoint_ep(?P<episode>\\d+)\\.pth``) and
    names their episode; :class:`InvalidArgument` naming ``parameter`` otherwise."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise InvalidArgument(parameter, pattern, f"is not a regular expression: {error}") from None
    if "episode" not in compiled.groupindex:
        raise InvalidArgument(parameter, pattern, "needs a named group (?P<episode>\\d+)")
    return compiled


__all__ = ["MAX_NAME_LENGTH", "episode_pattern", "validate_name"]
