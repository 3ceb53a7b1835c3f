"""Checkpoint rows: the commit decision, state changes (quarantine, release, evict), pins, live pointers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, insert, select, update

from trainguard.errors import CheckpointNotFound, StateConflict
from trainguard.registry import _schema as t
from trainguard.registry._leases import LeaseOps
from trainguard.registry._records import CheckpointRecord, CommitVerdict
from trainguard.registry._states import STATE_EVENTS, CheckpointState, EventKind


def checkpoint_row(record: CheckpointRecord, state: CheckpointState, now: float) -> dict[str, Any]:
    """The tg_checkpoints row for ``record`` in ``state`` (a commit, or a rebuild restoring one), unpinned."""
    return {
        "run": record.run,
        "name": record.name,
        "episode": record.episode,
        "token": record.token,
        "parent": record.parent,
        "fingerprint": record.fingerprint,
        "manifest_hash": record.manifest_hash,
        "state": state.value,
        "pinned": False,
        "metrics_json": json.dumps(record.metrics, sort_keys=True, default=float),
        "bytes": record.bytes,
        "created_at": record.created_at or now,
        "state_changed_at": now,
    }


class CheckpointOps(LeaseOps):
    def commit_checkpoint(self, record: CheckpointRecord, *, writer: dict[str, object]) -> CommitVerdict:
        """The single point at which a checkpoint becomes committed (docs/design.md, "The commit protocol",
        step 6).

        In one transaction, with the run row locked: the token must be the run's live lease, the episode
        must be within the run's episode budget, the name must be new. A refusal is recorded as an event
        naming the token and the writer, and returned (not raised): refusals are expected outcomes.
        """
        with self._transaction() as conn:
            run = self._lock_run(conn, record.run)
            live, why = self._lease_check(conn, record.run, record.token)
            verdict = CommitVerdict(accepted=True)
            max_episodes = run.limits.get("max_episodes")
            if not live:
                verdict = CommitVerdict(False, f"stale fencing token {record.token}: {why}", fenced=True)
            elif max_episodes is not None and record.episode > int(max_episodes):
                verdict = CommitVerdict(
                    False, f"episode {record.episode} is beyond the run's budget of {max_episodes} episodes"
                )
            elif self._row(conn, record.run, record.name) is not None:
                verdict = CommitVerdict(False, f"a checkpoint named {record.name!r} already exists")
            if verdict.accepted:
                now = time.time()
                conn.execute(
                    insert(t.checkpoints).values(checkpoint_row(record, CheckpointState.COMMITTED, now))
                )
                self._record_event(
                    conn,
                    record.run,
                    EventKind.CHECKPOINT_COMMITTED,
                    token=record.token,
                    checkpoint=record.name,
                    detail={"episode": record.episode},
                )
            else:
                self._record_event(
                    conn,
                    record.run,
                    EventKind.COMMIT_REFUSED,
                    token=record.token,
                    checkpoint=record.name,
                    reason=verdict.reason,
                    detail={"episode": record.episode, "writer": writer, "fenced": verdict.fenced},
                )
        return verdict

    @staticmethod
    def _row(conn: Connection, run: str, name: str) -> CheckpointRecord | None:
        row = conn.execute(
            select(t.checkpoints).where(t.checkpoints.c.run == run, t.checkpoints.c.name == name)
        ).first()
        return CheckpointRecord.from_row(row) if row else None

    def checkpoint(self, run: str, name: str) -> CheckpointRecord:
        with self._reading() as conn:
            found = self._row(conn, run, name)
        if found is None:
            raise CheckpointNotFound(run, name)
        return found

    def find_checkpoint(self, run: str, name: str) -> CheckpointRecord | None:
        with self._reading() as conn:
            return self._row(conn, run, name)

    def checkpoints(
        self, run: str, *, states: Iterable[CheckpointState] | None = (CheckpointState.COMMITTED,)
    ) -> list[CheckpointRecord]:
        """Checkpoints of ``run`` ordered by (episode, commit order); ``states=None`` returns every state."""
        query = select(t.checkpoints).where(t.checkpoints.c.run == run)
        if states is not None:
            query = query.where(t.checkpoints.c.state.in_([CheckpointState(s).value for s in states]))
        query = query.order_by(t.checkpoints.c.episode, t.checkpoints.c.id)
        with self._reading() as conn:
            return [CheckpointRecord.from_row(r) for r in conn.execute(query).all()]

    def checkpoint_states(self) -> dict[str, dict[str, CheckpointState]]:
        """Every run's checkpoints (name -> state) in one query."""
        states: dict[str, dict[str, CheckpointState]] = {}
        with self._reading() as conn:
            query = select(t.checkpoints.c.run, t.checkpoints.c.name, t.checkpoints.c.state)
            for run, name, state in conn.execute(query).all():
                states.setdefault(run, {})[name] = CheckpointState(state)
        return states

    def set_checkpoint_state(
        self,
        run: str,
        name: str,
        state: CheckpointState,
        *,
        reason: str,
        expect: Iterable[CheckpointState] | None = None,
        detail: dict[str, object] | None = None,
    ) -> CheckpointRecord:
        """Move a checkpoint row to ``state`` (recorded as an event). ``expect`` guards against races: a row
        found in another state raises :class:`StateConflict`, as does evicting a pinned or live one."""
        state = CheckpointState(state)
        with self._transaction() as conn:
            self._lock_run(conn, run)
            current = self._row(conn, run, name)
            if current is None:
                raise CheckpointNotFound(run, name)
            subject = f"checkpoint {name!r} of run {run!r}"
            if expect is not None and current.state not in set(expect):
                wanted = " or ".join(CheckpointState(e).value for e in expect)
                raise StateConflict(subject, current.state.value, f"expected {wanted}")
            if state is CheckpointState.EVICTED:
                # Checked under the run lock: a pin or promotion that raced the retention pass wins.
                live = conn.execute(
                    select(t.live_pointers.c.checkpoint).where(t.live_pointers.c.run == run)
                ).scalar()
                if current.pinned or live == name:
                    raise StateConflict(subject, "pinned or live", "it cannot be evicted")
            conn.execute(
                update(t.checkpoints)
                .where(t.checkpoints.c.run == run, t.checkpoints.c.name == name)
                .values(state=state.value, state_reason=reason, state_changed_at=time.time())
            )
            self._record_event(
                conn,
                run,
                STATE_EVENTS[state],
                token=current.token,
                checkpoint=name,
                reason=reason,
                detail={"from": current.state.value, **(detail or {})},
            )
        return self.checkpoint(run, name)

    def set_pinned(self, run: str, name: str, pinned: bool, *, reason: str | None = None) -> CheckpointRecord:
        with self._transaction() as conn:
            self._lock_run(conn, run)
            current = self._row(conn, run, name)
            if current is None:
                raise CheckpointNotFound(run, name)
            if current.state is CheckpointState.EVICTED and pinned:
                raise StateConflict(
                    f"checkpoint {name!r} of run {run!r}",
                    CheckpointState.EVICTED.value,
                    "its files are gone; it cannot be pinned",
                )
            conn.execute(
                update(t.checkpoints)
                .where(t.checkpoints.c.run == run, t.checkpoints.c.name == name)
                .values(pinned=pinned)
            )
            self._record_event(
                conn,
                run,
                EventKind.CHECKPOINT_PINNED if pinned else EventKind.CHECKPOINT_UNPINNED,
                checkpoint=name,
                reason=reason,
            )
        return self.checkpoint(run, name)

    # -- live pointers ----------------------------------------------------------------------------

    def live_pointers(self) -> dict[str, str]:
        with self._reading() as conn:
            rows = conn.execute(select(t.live_pointers.c.run, t.live_pointers.c.checkpoint)).all()
        return {str(run): str(checkpoint) for run, checkpoint in rows}

    def live_pointer(self, run: str) -> str | None:
        with self._reading() as conn:
            row = conn.execute(
                select(t.live_pointers.c.checkpoint).where(t.live_pointers.c.run == run)
            ).first()
        return row[0] if row else None

    def set_live_pointer(
        self, run: str, name: str, *, reason: str, detail: dict[str, object] | None = None
    ) -> None:
        """Move the live pointer (callers run the promotion gates first)."""
        with self._transaction() as conn:
            self._lock_run(conn, run)
            target = self._row(conn, run, name)
            if target is None:
                raise CheckpointNotFound(run, name)
            if target.state is not CheckpointState.COMMITTED:
                raise StateConflict(
                    f"checkpoint {name!r} of run {run!r}",
                    target.state.value,
                    "only a committed checkpoint can be live",
                )
            previous = conn.execute(
                select(t.live_pointers.c.checkpoint).where(t.live_pointers.c.run == run)
            ).scalar()
            values = {"run": run, "checkpoint": name, "moved_at": time.time(), "reason": reason}
            conn.execute(self._upsert(t.live_pointers, "run", values))
            self._record_event(
                conn,
                run,
                EventKind.LIVE_MOVED,
                checkpoint=name,
                reason=reason,
                detail={"from": previous, **(detail or {})},
            )


__all__ = ["CheckpointOps"]
