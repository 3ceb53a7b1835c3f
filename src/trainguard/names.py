"""Names: validation of run and checkpoint names, the file-name patterns legacy checkpoints are found by,
and where trainguard keeps its own files inside a store.

Names become directory names under the store and keys in the registry, so anything that could climb out of
the store (``/``, ``..``), hide (a leading dot collides with ``.staging`` and ``.quarantine``), or be cut
short by C APIs (NUL) is refused before it reaches the filesystem.
"""

from __future__ import annotations

import re
from pathlib import Path

from trainguard.errors import InvalidArgument, InvalidName

# <store>/.trainguard/: trainguard's own files inside a store - the default registry, the run files, the
# launcher's effective config. Never a checkpoint (a leading dot is refused in names).
META_DIRECTORY = ".trainguard"
DEFAULT_REGISTRY_FILE = "registry.db"
# <store>/.trainguard/store.json: which registry this store belongs to (its id), written when a writer first
# opens the store; the watchdog trusts files under a store only when the store is bound to its registry.
BINDING_FILE = "store.json"

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


def meta_directory(store: str | Path) -> Path:
    return Path(store) / META_DIRECTORY


def registry_files(store: str | Path) -> list[Path]:
    """The default SQLite registry's files: every trainguard command holds them open, so holding them proves
    nothing about a process."""
    base = meta_directory(store) / DEFAULT_REGISTRY_FILE
    return [base, *(base.with_name(base.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]


def default_registry_url(store: str | Path) -> str:
    """The SQLite registry a store has when no other is configured: ``<store>/.trainguard/registry.db``."""
    return f"sqlite:///{meta_directory(Path(store).resolve()) / DEFAULT_REGISTRY_FILE}"


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


__all__ = [
    "BINDING_FILE",
    "DEFAULT_REGISTRY_FILE",
    "MAX_NAME_LENGTH",
    "META_DIRECTORY",
    "default_registry_url",
    "episode_pattern",
    "meta_directory",
    "registry_files",
    "validate_name",
]
