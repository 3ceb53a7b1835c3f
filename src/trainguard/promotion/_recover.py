"""The incident report's "immediate actions" as one operation: fence the run, pin the last good checkpoint,
make it live, quarantine everything after it - and count what is on disk before and after, to show that
nothing was deleted."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.checkpoints import CheckpointStore
from trainguard.checkpoints.layout import STAGING, TRASH
from trainguard.errors import InvalidArgument, StateConflict
from trainguard.names import META_DIRECTORY
from trainguard.registry import CheckpointRecord, CheckpointState, EventKind

# Where no checkpoint file lives: trainguard's own files, unfinished writes, evictions on their way out.
_NOT_CHECKPOINTS = (META_DIRECTORY, STAGING, TRASH)


@dataclass(frozen=True)
class RecoveryOutcome:
    last_good: CheckpointRecord
    revoked_token: int | None  # the lease revoked first; None when none was held
    quarantined: list[CheckpointRecord]
    states_before: dict[str, int]
    states_after: dict[str, int]
    files_before: int
    files_after: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.last_good.run,
            "last_good": self.last_good.name,
            "revoked_token": self.revoked_token,
            "quarantined": [r.name for r in self.quarantined],
            "states_before": self.states_before,
            "states_after": self.states_after,
            "files_before": self.files_before,
            "files_after": self.files_after,
        }


def checkpoint_files(root: Path) -> int:
    """Checkpoint files under the store, wherever they sit (in place or in quarantine); not the registry,
    and not the reason records a quarantine adds next to what it moves."""
    count = 0
    for directory, subdirectories, files in os.walk(root):
        if Path(directory) == root:
            subdirectories[:] = [d for d in subdirectories if d not in _NOT_CHECKPOINTS]
        count += sum(1 for f in files if not f.endswith(".reason.json"))
    return count


def _stored(store: CheckpointStore) -> int:
    return checkpoint_files(store.root) if store.on_filesystem else store.stored_objects()


def _states(store: CheckpointStore) -> dict[str, int]:
    return dict(Counter(r.state.value for r in store.checkpoints(states=None)))


def recover_run(store: CheckpointStore, last_good: str, *, reason: str) -> RecoveryOutcome:
    """Revoke the run's lease (from that moment no process holding it can commit), pin ``last_good`` and
    make it live, quarantine every committed checkpoint after it. Nothing is deleted."""
    if not reason or not reason.strip():
        raise InvalidArgument("reason", reason, "a recovery needs a reason for the audit log")
    run, registry = store.run, store.registry
    good = store.record(last_good)
    subject = f"checkpoint {good.name!r} of run {run!r}"
    if good.state is not CheckpointState.COMMITTED:
        raise StateConflict(subject, good.state.value, "the last good checkpoint must be committed")
    report = store.verify(good.name)
    if not report.ok:
        raise StateConflict(
            subject, "corrupt", f"it does not verify ({report.problems[0].reason}); pick another"
        )
    states_before, files_before = _states(store), _stored(store)
    # Fence first: from this moment no process holding the old token can commit anything.
    revoked = registry.revoke(run, f"recover: {reason}")
    store.pin(good.name, reason=f"last good: {reason}")
    registry.set_live_pointer(run, good.name, reason=f"recover: {reason}", detail={"recover": True})
    store.publish_live(good.name)
    after = [r for r in store.checkpoints() if (r.episode, r.id or 0) > (good.episode, good.id or 0)]
    for record in after:
        store.quarantine(record.name, reason=f"after last good {good.name}: {reason}")
    outcome = RecoveryOutcome(
        last_good=good,
        revoked_token=revoked.token if revoked else None,
        quarantined=after,
        states_before=states_before,
        states_after=_states(store),
        files_before=files_before,
        files_after=_stored(store),
    )
    registry.add_event(
        run,
        EventKind.RECOVERED,
        checkpoint=good.name,
        reason=reason,
        detail={
            "quarantined": [r.name for r in after],
            "revoked_token": outcome.revoked_token,
            "before": states_before,
            "after": outcome.states_after,
        },
    )
    return outcome


__all__ = ["RecoveryOutcome", "checkpoint_files", "recover_run"]
