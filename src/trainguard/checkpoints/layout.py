"""Where things live under a store root, and how a staging directory names its writer.

<store>/<name>/                 committed checkpoints (only with a committed registry row)
<store>/.staging/<name>.<tag>/  being written; <tag> names host, pid, start ticks, token, randomness
<store>/.quarantine/<entry>/    moved aside with <entry>.reason.json next to it - never deleted
<store>/.trash/                 evicted checkpoints on their way out (finished by the next open)
<store>/.trainguard/            the default SQLite registry
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from trainguard._os.identity import ProcessIdentity, is_same_process_alive
from trainguard.errors import UnsafeStore
from trainguard.names import META_DIRECTORY

STAGING = ".staging"
QUARANTINE = ".quarantine"
TRASH = ".trash"
RESERVED = frozenset({STAGING, QUARANTINE, TRASH, META_DIRECTORY})

_TAG = re.compile(
    r"^(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-t(?P<token>\d+)-[0-9a-f]{6}$"
)


def host_digest(host_key: str) -> str:
    return hashlib.sha256(host_key.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class StagingName:
    """Everything recovery needs to judge a staging directory is in its name, created atomically by mkdir
    (a writer killed before writing a single file still left a name that says who it was)."""

    name: str
    host: str
    pid: int
    start_ticks: int  # since boot (see trainguard._os.identity)
    token: int

    @classmethod
    def new(cls, name: str, writer: ProcessIdentity, token: int) -> str:
        return (
            f"{name}.{host_digest(writer.host_key)}-{writer.pid}-{writer.start_ticks}"
            f"-t{token}-{secrets.token_hex(3)}"
        )

    @classmethod
    def parse(cls, dirname: str) -> StagingName | None:
        match = _TAG.match(dirname)
        if not match:
            return None
        return cls(match["name"], match["host"], int(match["pid"]), int(match["start"]), int(match["token"]))

    def writer_alive(self, local_host_key: str) -> bool | None:
        """True/False for a writer on this host; None when it ran elsewhere (then only age can tell)."""
        if self.host != host_digest(local_host_key):
            return None
        return is_same_process_alive(self.pid, self.start_ticks)


def check_layout(root: Path) -> None:
    """Refuse a store whose reserved entries are not plain directories. trainguard deletes under ``.trash``
    and ``.staging`` and moves into ``.quarantine``: through a symlink those would be somebody else's files.
    Raises :class:`UnsafeStore`; a missing entry is fine (it is created when first needed)."""
    for entry in sorted(RESERVED):
        try:
            mode = os.lstat(root / entry).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            raise UnsafeStore(str(root), entry, "is a symbolic link (trainguard never follows one there)")
        if not stat.S_ISDIR(mode):
            raise UnsafeStore(str(root), entry, "is not a directory")


def staging_root(root: Path) -> Path:
    return root / STAGING


def quarantine_root(root: Path) -> Path:
    return root / QUARANTINE


def trash_root(root: Path) -> Path:
    return root / TRASH


def reason_file(entry: Path) -> Path:
    return entry.with_name(entry.name + ".reason.json")


__all__ = [
    "QUARANTINE",
    "RESERVED",
    "STAGING",
    "TRASH",
    "StagingName",
    "check_layout",
    "host_digest",
    "quarantine_root",
    "reason_file",
    "staging_root",
    "trash_root",
]
