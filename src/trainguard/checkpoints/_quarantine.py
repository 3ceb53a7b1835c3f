"""Moving things aside without deleting them: quarantine with a reason record, and back; and the trash,
the only place anything is deleted from.

Every path here is under the store root and handled through ``_durable``'s root-relative operations, which
follow no symlink below the root: a planted link cannot turn a move or a delete into one elsewhere.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path, PurePath
from typing import Any

from trainguard.checkpoints._durable import (
    directory_fd,
    entry_exists,
    fsync_dir,
    make_dir,
    move_dir,
    remove_tree,
    write_small_file,
)
from trainguard.checkpoints.layout import TRASH, quarantine_root, reason_file, trash_root

_MAX_REASON_BYTES = 1 << 20  # a reason record is a few hundred bytes; never read an unbounded file


def free_entry(root: Path, entry_name: str) -> Path:
    """A quarantine path for ``entry_name`` that does not exist yet (earlier quarantines are kept)."""
    base = quarantine_root(root) / entry_name
    target, n = base, 1
    while entry_exists(target, root=root) or entry_exists(reason_file(target), root=root):
        target = base.with_name(f"{base.name}.{n}")
        n += 1
    return target


def quarantine_path(root: Path, source: Path, target: Path, record: dict[str, Any]) -> Path:
    """Move ``source`` (a directory) to ``target`` under ``.quarantine`` and write its reason record."""
    make_dir(target.parent, root=root, step="quarantine", exist_ok=True)
    move_dir(source, target, root=root, step="quarantine", fsync_step="quarantine-fsync")
    body = {"quarantined_at": time.time(), "original": str(source), **record}
    write_small_file(
        reason_file(target),
        json.dumps(body, indent=2, sort_keys=True, default=str).encode(),
        step="quarantine-record",
    )
    fsync_dir(target.parent, step="quarantine-fsync")
    return target


def park(root: Path, name: str, record: dict[str, Any]) -> None:
    """Move a checkpoint the registry just quarantined from its place to ``.quarantine/`` (unless an
    earlier, interrupted quarantine already did)."""
    source, target = root / name, quarantine_root(root) / name
    if entry_exists(source, root=root) and not entry_exists(target, root=root):
        quarantine_path(root, source, target, record)


def read_reason(entry: Path) -> dict[str, Any]:
    try:
        fd = os.open(reason_file(entry), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            data = os.read(fd, _MAX_REASON_BYTES)
        finally:
            os.close(fd)
        body = json.loads(data)
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def release_path(root: Path, entry: Path, target: Path) -> None:
    """Move a quarantined directory back; its reason record goes (the registry's events keep the history)."""
    move_dir(entry, target, root=root, step="release", fsync_step="release-fsync")
    remove_tree(reason_file(entry), root=root)


def discard(root: Path, path: Path) -> None:
    """Remove a directory that was never visible or has been evicted: rename into .trash first so a half-
    deleted directory can never be mistaken for a checkpoint, then delete; the next open finishes it."""
    trash = trash_root(root)
    make_dir(trash, root=root, step="discard", exist_ok=True)
    target = trash / f"{path.name}.{time.time_ns()}"
    move_dir(path, target, root=root, step="discard", fsync_step="discard-fsync")
    remove_tree(target, root=root)


def empty_trash(root: Path) -> int:
    """Delete what an interrupted discard left in ``.trash``; the number of entries deleted."""
    try:
        with directory_fd(root, PurePath(TRASH)) as fd:
            names = os.listdir(fd)
    except OSError:
        return 0  # no trash (or not a directory we may enter: the store check refuses that at open)
    for name in names:
        remove_tree(trash_root(root) / name, root=root)
    return len(names)


__all__ = ["discard", "empty_trash", "free_entry", "park", "quarantine_path", "read_reason", "release_path"]
