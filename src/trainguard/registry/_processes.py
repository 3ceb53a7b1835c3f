"""Which processes belong to a run (so `stop` and the watchdog only ever signal those), and the watchdogs'
own heartbeats (so `status` can say when nothing is watching)."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import insert, select, update

from trainguard._os.identity import ProcessIdentity
from trainguard.registry import _schema as t
from trainguard.registry._core import RegistryCore
from trainguard.registry._records import ProcessRecord, WatchdogRecord
from trainguard.registry._states import EventKind, ProcessRole


class ProcessOps(RegistryCore):
    def register_process(
        self, run: str, token: int, role: ProcessRole, who: ProcessIdentity, *, pgid: int | None = None
    ) -> int:
        with self._transaction() as conn:
            row_id = conn.execute(
                insert(t.processes)
                .values(
                    run=run,
                    token=token,
                    role=role.value,
                    host=who.host,
                    host_key=who.host_key,
                    pid=who.pid,
                    start_time=who.started_at,
                    start_ticks=who.start_ticks,
                    uid=who.uid,
                    pgid=pgid,
                    registered_at=time.time(),
                )
                .returning(t.processes.c.id)
            ).scalar_one()
            self._record_event(
                conn,
                run,
                EventKind.PROCESS_REGISTERED,
                token=token,
                detail={"role": role.value, **who.as_dict(), "pgid": pgid},
            )
        return int(row_id)

    def end_process(self, process_id: int) -> None:
        with self._transaction() as conn:
            conn.execute(
                update(t.processes).where(t.processes.c.id == process_id).values(ended_at=time.time())
            )

    def processes(
        self, run: str | None = None, *, token: int | None = None, include_ended: bool = False
    ) -> list[ProcessRecord]:
        query = select(t.processes).order_by(t.processes.c.id)
        if run is not None:
            query = query.where(t.processes.c.run == run)
        if token is not None:
            query = query.where(t.processes.c.token == token)
        if not include_ended:
            query = query.where(t.processes.c.ended_at.is_(None))
        with self._reading() as conn:
            return [ProcessRecord.from_row(r) for r in conn.execute(query).all()]

    def watchdog_beat(self, who: ProcessIdentity, interval: float, detail: dict[str, Any]) -> None:
        values = {
            "host_key": who.host_key,
            "host": who.host,
            "pid": who.pid,
            "start_time": who.started_at,
            "start_ticks": who.start_ticks,
            "interval": interval,
            "beat_at": time.time(),
            "detail_json": json.dumps(detail, default=str),
        }
        with self._transaction(durable=False) as conn:
            conn.execute(self._upsert(t.watchdogs, "host_key", values))

    def watchdogs(self) -> list[WatchdogRecord]:
        with self._reading() as conn:
            return [WatchdogRecord.from_row(r) for r in conn.execute(select(t.watchdogs)).all()]


__all__ = ["ProcessOps"]
