"""Moving things aside without deleting them: quarantine with a reason record, and back."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from trainguard.checkpoints._durable import fsync_dir, move_dir, write_small_file
from trainguard.checkpoints.layout import quarantine_root, reason_file, trash_root


def free_entry(root: Path, entry_name: str) -> Path:
    """A quarantine path for ``entry_name`` that does not exist yet (earlier quarantines are kept)."""
    base = quarantine_root(root) / entry_name
    target, n = base, 1
    while target.exists() or reason_file(target).exists():
        target = base.with_name(f"{base.name}.{n}")
        n += 1
    return target


def quarantine_path(source: Path, target: Path, record: dict[str, Any]) -> Path:
    """Move ``source`` (a directory) to ``target`` under ``.quarantine`` and write its reason record."""
    target.parent.mkdir(exist_ok=True)
    move_dir(source, target, step="quarantine", fsync_step="quarantine-fsync")
    body = {"quarantined_at": time.time(), "original": str(source), **record}
    write_small_file(
        reason_file(target),
        json.dumps(body, indent=2, sort_keys=True, default=str).encode(),
        step="quarantine-record",
    )
    fsync_dir(target.parent, step="quarantine-fsync")
    return target


def read_reason(entry: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(reason_file(entry).read_text()))
    except (OSError, ValueError):
        return {}


def release_path(entry: Path, target: Path) -> None:
    """Move a quarantined directory back; its reason record goes (the registry's events keep the history)."""
    move_dir(entry, target, step="release", fsync_step="release-fsync")
    reason_file(entry).unlink(missing_ok=True)


def discard(root: Path, path: Path) -> None:
    """Remove a directory that was never visible or has been evicted: rename into .trash first so a half-
    deleted directory can never be mistaken for a checkpoint, then delete; the next open finishes it."""
    trash = trash_root(root)
    trash.mkdir(exist_ok=True)
    target = trash / f"{path.name}.{time.time_ns()}"
    move_dir(path, target, step="discard", fsync_step="discard-fsync")
    shutil.rmtree(target, ignore_errors=True)


def empty_trash(root: Path) -> int:
    trash = trash_root(root)
    if not trash.is_dir():
        return 0
    count = 0
    for entry in trash.iterdir():
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        count += 1
    return count


__all__ = ["discard", "empty_trash", "free_entry", "quarantine_path", "read_reason", "release_path"]
