"""Recovery at open: bring the directories in line with what the registry decided.

The registry is the truth; the filesystem follows. Rules (docs/design.md, "Recovery"):
- a staging directory whose checkpoint the registry committed (manifest hash equal) is rolled forward,
  by whoever finds it;
- a staging directory whose writer is alive (same host: pid and start time; other host: younger than the
  grace period) is left alone;
- any other staging directory was never visible and is removed;
- a final-place directory without a registry row can only come from outside trainguard (a legacy or rogue
  writer): it is quarantined with reason "unregistered", never loaded, never deleted;
- interrupted quarantines, releases and evictions are finished in the direction the registry recorded;
- a step that fails (a full disk, a permission) is reported and left for the next open - recovery never
  makes a store impossible to open.

Only writers recover. Readers find a decided checkpoint wherever an interrupted move left it
(:func:`find_staged`) and change nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from trainguard._os.hashing import hash_file
from trainguard._os.identity import host_key
from trainguard.checkpoints._context import StoreContext
from trainguard.checkpoints._durable import StepFailed, directory_fd, entry_exists, move_dir, remove_tree
from trainguard.checkpoints._quarantine import discard, empty_trash, free_entry, quarantine_path, release_path
from trainguard.checkpoints.layout import (
    RESERVED,
    STAGING,
    StagingName,
    check_layout,
    quarantine_root,
    staging_root,
)
from trainguard.checkpoints.manifest import MANIFEST_FILE
from trainguard.registry import CheckpointRecord, CheckpointState, EventKind


@dataclass
class RecoveryReport:
    rolled_forward: list[str] = field(default_factory=list)
    removed_staging: list[str] = field(default_factory=list)
    left_for_live_writer: list[str] = field(default_factory=list)
    quarantined_unregistered: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # steps that failed; the next open tries again


def recover(store: StoreContext, *, foreign_grace: float) -> RecoveryReport:
    check_layout(store.root)
    report = RecoveryReport()
    # Directory listing *before* reading the rows: a checkpoint renamed into place in between already has
    # its row (commit precedes rename), so it can never look unregistered. Symlinks count as entries (they
    # are moved aside as the links they are), never as the directories they point to.
    with os.scandir(store.root) as entries:
        finals = [
            store.root / e.name
            for e in entries
            if (e.is_symlink() or e.is_dir(follow_symlinks=False))
            and e.name not in RESERVED
            and not e.name.startswith(".")
        ]
    stagings = [staging_root(store.root) / name for name in _staging_names(store.root)]
    rows = {r.name: r for r in store.registry.checkpoints(store.run, states=None)}
    _recover_staging(store, stagings, rows, report, foreign_grace)
    for path in finals:
        row = rows.get(path.name)
        try:
            if row is None:
                _quarantine_unregistered(store, path, report)
            elif row.state is CheckpointState.EVICTED:
                discard(store.root, path)
                report.finished.append(f"evicted {path.name}")
            elif row.state is CheckpointState.QUARANTINED and not entry_exists(
                quarantine_root(store.root) / path.name, root=store.root
            ):
                quarantine_path(
                    store.root, path, quarantine_root(store.root) / path.name, _reason_record(store, row)
                )
                report.finished.append(f"quarantined {path.name}")
        except StepFailed as failed:
            report.failed.append(f"{path.name}: {failed}")
    for row in rows.values():
        final, parked = store.root / row.name, quarantine_root(store.root) / row.name
        if (
            row.state is CheckpointState.COMMITTED
            and not entry_exists(final, root=store.root)
            and entry_exists(parked, root=store.root)
        ):
            try:
                release_path(store.root, parked, final)
            except StepFailed as failed:
                report.failed.append(f"{row.name}: {failed}")
                continue
            report.finished.append(f"released {row.name}")
    if empty_trash(store.root):
        report.finished.append("emptied .trash")
    return report


def _staging_names(root: Path) -> list[str]:
    try:
        with directory_fd(root, PurePath(STAGING)) as fd:
            return sorted(os.listdir(fd))
    except OSError:
        return []


def find_staged(root: Path, row: CheckpointRecord) -> Path | None:
    """A staging copy of a decided checkpoint (its writer's token, its manifest hash): where a crash
    between commit and rename, or a lost commit reply, left it. Read-only; recovery moves it into place."""
    for name in _staging_names(root):
        parsed = StagingName.parse(name)
        path = staging_root(root) / name
        if parsed and parsed.name == row.name and parsed.token == row.token and _manifest_matches(path, row):
            return path
    return None


def _recover_staging(
    store: StoreContext,
    stagings: list[Path],
    rows: dict[str, CheckpointRecord],
    report: RecoveryReport,
    foreign_grace: float,
) -> None:
    local = host_key()
    for path in stagings:
        parsed = StagingName.parse(path.name)
        row = rows.get(parsed.name) if parsed else None
        if (
            parsed is not None
            and row is not None
            and row.token == parsed.token
            and _manifest_matches(path, row)
            and _roll_forward(store, path, row, report)
        ):
            continue
        alive = parsed.writer_alive(local) if parsed else None
        if alive or (alive is None and time.time() - _mtime(path) < foreign_grace):
            report.left_for_live_writer.append(path.name)
            continue
        remove_tree(path, root=store.root)
        report.removed_staging.append(path.name)


def _roll_forward(store: StoreContext, path: Path, row: CheckpointRecord, report: RecoveryReport) -> bool:
    """Finish a decided checkpoint; False when there is nothing to finish (its directory is already in
    place, so this staging copy is a leftover for the ordinary rules)."""
    final = store.root / row.name
    try:
        if row.state is CheckpointState.COMMITTED and not entry_exists(final, root=store.root):
            move_dir(path, final, root=store.root, step="roll-forward")
        elif row.state is CheckpointState.QUARANTINED:
            quarantine_path(store.root, path, free_entry(store.root, row.name), _reason_record(store, row))
        elif row.state is CheckpointState.EVICTED:
            discard(store.root, path)
        else:
            return False
    except StepFailed as failed:
        # Lost a race with another recovering process or the writer (its result stands), or a real failure
        # (the next open tries again); either way this staging copy is not ours to judge any further now.
        report.failed.append(f"{row.name}: {failed}")
        return True
    report.rolled_forward.append(row.name)
    store.registry.add_event(
        store.run,
        EventKind.CHECKPOINT_ROLLED_FORWARD,
        token=row.token,
        checkpoint=row.name,
        detail={"staging": path.name, "state": row.state.value},
    )
    return True


def _reason_record(store: StoreContext, row: CheckpointRecord) -> dict[str, str]:
    """What a quarantine the registry decided (and recovery finishes) records next to the directory."""
    return {
        "reason": row.state_reason or CheckpointState.QUARANTINED.value,
        "run": store.run,
        "checkpoint": row.name,
    }


def _manifest_matches(path: Path, row: CheckpointRecord) -> bool:
    try:
        return hash_file(path / MANIFEST_FILE)[1] == row.manifest_hash
    except OSError:
        return False


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def _quarantine_unregistered(store: StoreContext, path: Path, report: RecoveryReport) -> None:
    try:
        target = quarantine_path(
            store.root,
            path,
            free_entry(store.root, f"{path.name}.unregistered"),
            {
                "reason": "unregistered",
                "run": store.run,
                "detail": "a directory in the store without a committed registry row",
            },
        )
    except StepFailed as failed:
        report.failed.append(f"{path.name}: {failed}")
        return
    report.quarantined_unregistered.append(path.name)
    store.registry.add_event(
        store.run,
        EventKind.CHECKPOINT_QUARANTINED,
        checkpoint=path.name,
        reason="unregistered",
        detail={"path": str(target), "committed": False},
    )


__all__ = ["RecoveryReport", "find_staged", "recover"]
