"""Restoring a run into an empty registry from what its store proves (``trainguard registry rebuild``).

The registry is the truth and the store follows - except when the registry is lost. Then the store's
*signed* manifests are the only evidence left: each names its run, checkpoint, episode and token, and the
signature proves trainguard wrote it. The caller (``trainguard.checkpoints.rebuild_registry``) checks every
signature and hash; this writes the rows in one transaction, never over an existing run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select

from trainguard.errors import StateConflict
from trainguard.names import validate_name
from trainguard.registry import _schema as t
from trainguard.registry._checkpoints import checkpoint_row
from trainguard.registry._core import RegistryCore
from trainguard.registry._records import CheckpointRecord
from trainguard.registry._states import EventKind


class RestoreOps(RegistryCore):
    def restore_run(
        self,
        run: str,
        *,
        store: str,
        checkpoints: Sequence[CheckpointRecord],
        reason: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Create ``run`` with ``checkpoints`` (their states as given). Tokens continue above the highest one
        the store shows, so no token is ever handed out twice; spend restarts at the highest episode
        checkpointed (a lower bound: what the lost registry had counted beyond it is gone). Raises
        :class:`StateConflict` if the run is already in this registry."""
        validate_name(run, "run")
        now = time.time()
        with self._transaction() as conn:
            if conn.execute(select(t.runs.c.name).where(t.runs.c.name == run)).first() is not None:
                where = f"already in the registry {self.url}"
                raise StateConflict(f"run {run!r}", where, "a rebuild only fills an empty registry")
            conn.execute(
                insert(t.runs).values(
                    name=run,
                    store=store,
                    created_at=now,
                    last_token=max((c.token for c in checkpoints), default=0),
                    episodes_spent=max((c.episode for c in checkpoints), default=0),
                    steps_spent=0,
                    runtime_spent=0.0,
                )
            )
            for record in checkpoints:
                row = checkpoint_row(record, record.state, now) | {
                    "run": run,
                    "state_reason": record.state_reason,
                }
                conn.execute(insert(t.checkpoints).values(row))
            self._record_event(
                conn,
                run,
                EventKind.REGISTRY_REBUILT,
                reason=reason,
                detail={"store": store, "checkpoints": len(checkpoints), **(detail or {})},
            )


__all__ = ["RestoreOps"]
