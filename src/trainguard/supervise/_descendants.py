"""Where the launcher cannot make a cgroup, it writes down the descendants it sees (as a child subreaper every
orphan of the run is re-parented to it), so that after the launcher itself dies the watchdog can still find
a descendant that dropped its environment marker.

The record is a file in the store (``<store>/.trainguard/<run>.t<token>.descendants``, lines ``pid ticks``):
creating it needs write access to the store, not only to the registry - a registry client cannot add a
stranger's process to it - and the file's owner is the uid the launcher ran as.
"""

from __future__ import annotations

import os
from pathlib import Path

from trainguard.names import meta_directory

_MAX_BYTES = 1 << 20


def record_path(store: Path, run: str, token: int) -> Path:
    return meta_directory(store) / f"{run}.t{token}.descendants"


def record(store: Path, run: str, token: int, identities: list[tuple[int, int]]) -> None:
    """Append newly seen descendants (pid, start ticks)."""
    if not identities:
        return
    path = record_path(store, run, token)
    lines = "".join(f"{pid} {ticks}\n" for pid, ticks in identities).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        os.write(fd, lines)
    finally:
        os.close(fd)


def recorded(store: Path, run: str) -> dict[int, tuple[int, set[tuple[int, int]]]]:
    """token -> (uid owning the record, {(pid, start ticks)}) for every record of ``run`` in ``store``."""
    found: dict[int, tuple[int, set[tuple[int, int]]]] = {}
    prefix = f"{run}.t"
    try:
        entries = list(os.scandir(meta_directory(store)))
    except OSError:
        return found
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".descendants")):
            continue
        token_text = name[len(prefix) : -len(".descendants")]
        if not token_text.isdigit():
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            owner = os.fstat(fd).st_uid
            data = os.read(fd, _MAX_BYTES).decode(errors="replace")
        finally:
            os.close(fd)
        pairs = set()
        for line in data.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                pairs.add((int(parts[0]), int(parts[1])))
        found[int(token_text)] = (owner, pairs)
    return found


def forget(store: Path, run: str, token: int) -> None:
    """The launcher's clean exit: every descendant is gone, the record with it."""
    record_path(store, run, token).unlink(missing_ok=True)


__all__ = ["forget", "record", "record_path", "recorded"]
