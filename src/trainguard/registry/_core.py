"""Connection, schema, transactions, runs and the event log: what every registry operation stands on."""

from __future__ import annotations

import functools
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Self

from sqlalchemy import Connection, Engine, Table, insert, inspect, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.sql.dml import Insert

from trainguard._os.identity import ProcessIdentity
from trainguard.errors import InvalidArgument, RegistryError, RegistryNotFound, RunNotFound
from trainguard.names import validate_name
from trainguard.registry import _schema as t
from trainguard.registry._clock import ClockReading, RegistryClock
from trainguard.registry._engine import OPEN_MODES, OpenMode, create_registry_engine, normalise_url, redact
from trainguard.registry._records import EventRecord, RunRecord
from trainguard.registry._states import EventKind

REGISTRY_ID = "registry_id"
# Built once: constructing Core statements costs more than executing them on SQLite.
_INSERT_EVENT = insert(t.events)


class RegistryCore:
    """The connection and what every operation stands on. Connection-level methods (transactions, event
    rows inside them) are private: outside the registry a decision is only ever one public method, taken
    in one transaction."""

    def __init__(
        self,
        engine: Engine,
        url: str,
        clock: RegistryClock | None = None,
        *,
        mode: OpenMode = "create",
        lock_wait: float | None = None,
    ) -> None:
        self.engine = engine
        self.url = redact(url)
        self.mode = mode
        self.dialect = engine.dialect.name
        self._relaxed_engine = create_registry_engine(url, relaxed=True, mode=mode, lock_wait=lock_wait)
        self.clock = clock or RegistryClock.for_dialect(self.dialect)
        self._identity: ProcessIdentity | None = None
        try:
            self._install_schema()
        except BaseException:
            self._relaxed_engine.dispose()
            raise
        self._file = _file_identity(url) if self.dialect == "sqlite" else None

    @classmethod
    def open(
        cls,
        url: str,
        *,
        clock: RegistryClock | None = None,
        mode: OpenMode = "create",
        lock_wait: float | None = None,
    ) -> Self:
        """Open the registry at ``url`` (``sqlite:///PATH`` or ``postgresql://...``). ``mode``: ``create``
        (the file and schema if needed), ``existing`` (it must exist: :class:`RegistryNotFound` otherwise) or
        ``read`` (it must exist, and this connection never writes). ``lock_wait`` (SQLite): how long a
        transaction waits for another's lock before it fails (default a minute; the watchdog waits less,
        since the holder may be the frozen process it is there to kill)."""
        if mode not in OPEN_MODES:
            raise InvalidArgument("mode", mode, f"must be one of {', '.join(OPEN_MODES)}")
        engine = create_registry_engine(url, mode=mode, lock_wait=lock_wait)
        try:
            return cls(engine, url, clock, mode=mode, lock_wait=lock_wait)
        except BaseException:
            engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()
        self._relaxed_engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @functools.cached_property
    def registry_id(self) -> str:
        """This registry's own id, made when its schema was installed: a store records the id of the registry
        it belongs to, so neither can be swapped under the other unnoticed."""
        with self._reading() as conn:
            value = conn.execute(select(t.meta.c.value).where(t.meta.c.key == REGISTRY_ID)).scalar()
        if value is None:
            raise RegistryError(self.url, "has no registry id (tg_meta); was it created by another tool?")
        return str(value)

    def replaced(self) -> str | None:
        """Why this is no longer the registry this process opened - its file deleted or replaced (an open
        SQLite connection would go on committing into the unlinked file), or a database that now holds
        another registry; None while it is the same. Checked at every heartbeat and before every commit."""
        if self._file is not None:
            path, opened = self._file
            try:
                found = os.stat(path)
            except FileNotFoundError:
                return f"registry file {path} was deleted under this process"
            except OSError:
                return None
            if (found.st_dev, found.st_ino) != opened:
                return f"registry file {path} was replaced under this process"
            return None
        mine = self.registry_id
        try:
            with self._reading() as conn:
                now = conn.execute(select(t.meta.c.value).where(t.meta.c.key == REGISTRY_ID)).scalar()
        except RegistryError:
            return None  # unreachable: the lease decides how long that may last
        return None if now == mine else f"the database now holds registry {now}, not {mine}"

    @property
    def identity(self) -> ProcessIdentity:
        # Re-read after fork: a child must never record its parent's pid as the actor.
        if self._identity is None or self._identity.pid != os.getpid():
            self._identity = ProcessIdentity.current()
        return self._identity

    # -- schema -----------------------------------------------------------------------------------

    def _install_schema(self) -> None:
        if self.mode != "create":
            self._check_schema()
            if self.mode == "read":
                return
        try:
            with self.engine.begin() as conn:
                t.metadata.create_all(conn)
                found = conn.execute(select(t.schema_version.c.version)).scalars().all()
                if not found:
                    conn.execute(
                        insert(t.schema_version).values(version=t.SCHEMA_VERSION, installed_at=time.time())
                    )
                    conn.execute(insert(t.meta).values(key=REGISTRY_ID, value=uuid.uuid4().hex))
                elif max(found) > t.SCHEMA_VERSION:
                    raise RegistryError(
                        self.url,
                        f"schema version {max(found)} is newer than this trainguard supports "
                        f"({t.SCHEMA_VERSION}); upgrade trainguard",
                    )
                elif max(found) < t.SCHEMA_VERSION:
                    # Migrations only add: tables (create_all just did) and nullable columns (below).
                    _add_missing_columns(conn)
                    conn.execute(
                        insert(t.schema_version).values(version=t.SCHEMA_VERSION, installed_at=time.time())
                    )
                    if conn.execute(select(t.meta.c.key).where(t.meta.c.key == REGISTRY_ID)).first() is None:
                        conn.execute(insert(t.meta).values(key=REGISTRY_ID, value=uuid.uuid4().hex))
        except IntegrityError:
            # Two processes created the schema at once; the other one inserted the version row.
            pass
        except (OperationalError, DBAPIError) as error:
            raise RegistryError(self.url, f"cannot open: {error.orig or error}") from error

    def _check_schema(self) -> None:
        """A registry that must exist: its schema is there, and a reader can use it without migrating."""
        try:
            with self.engine.connect() as conn:
                if not inspect(conn).has_table(t.schema_version.name):
                    raise RegistryNotFound(
                        self.url, "holds no trainguard registry (no schema; only a writer creates one)"
                    )
                found = max(conn.execute(select(t.schema_version.c.version)).scalars().all(), default=0)
        except (OperationalError, DBAPIError) as error:
            raise RegistryError(self.url, f"cannot open: {error.orig or error}") from error
        if self.mode == "read" and found != t.SCHEMA_VERSION:
            raise RegistryError(
                self.url,
                f"schema version {found}, this trainguard reads {t.SCHEMA_VERSION}; "
                + (
                    "upgrade trainguard"
                    if found > t.SCHEMA_VERSION
                    else "open it once with a writer to migrate"
                ),
            )

    # -- transactions -----------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[Connection]:
        """A write transaction. ``durable=False`` may lose the transaction on power failure (never on a
        process crash). Only lease renewals use it: a lost renewal makes the lease look *older* than it is,
        so it expires sooner - the safe direction - and the next durable transaction (a commit that relied on
        the renewal) flushes it along with itself. It roughly doubles renewals per second on both backends."""
        engine = self.engine if durable else self._relaxed_engine
        try:
            with engine.begin() as conn:
                yield conn
        except (OperationalError, DBAPIError) as error:
            if isinstance(error, IntegrityError):
                raise
            raise RegistryError(self.url, f"database error: {error.orig or error}") from error

    @contextmanager
    def _relaxed_autocommit(self) -> Iterator[Connection]:
        """A connection whose every statement commits on its own without waiting for the disk."""
        try:
            with self._relaxed_engine.connect() as conn:
                yield conn.execution_options(isolation_level="AUTOCOMMIT")
        except (OperationalError, DBAPIError) as error:
            raise RegistryError(self.url, f"database error: {error.orig or error}") from error

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except (OperationalError, DBAPIError) as error:
            raise RegistryError(self.url, f"database error: {error.orig or error}") from error

    def _upsert(self, table: Table, key: str, values: dict[str, Any]) -> Insert:
        """INSERT ... ON CONFLICT (key) DO UPDATE: one row per key, overwritten (both dialects have it, with
        their own constructs)."""
        insert_into = pg_insert if self.dialect == "postgresql" else sqlite_insert
        statement = insert_into(table).values(**values)
        return statement.on_conflict_do_update(index_elements=[key], set_=values)

    def _lock_run(self, conn: Connection, run: str) -> RunRecord:
        """Lock the run's row for the rest of the transaction.

        Every decision about a run (acquire, renew-by-takeover, revoke, commit) locks this one row first, so
        those decisions are totally ordered on PostgreSQL too - a revoke that returned cannot be overtaken
        by a commit that read the lease before it. (SQLite's BEGIN IMMEDIATE already orders everything.)
        """
        row = conn.execute(select(t.runs).where(t.runs.c.name == run).with_for_update()).first()
        if row is None:
            raise RunNotFound(run, self.url)
        return RunRecord.from_row(row)

    # -- runs -------------------------------------------------------------------------------------

    def ensure_run(self, run: str, *, store: str | os.PathLike[str] | None = None) -> RunRecord:
        """Create the run if it does not exist; record its store directory."""
        validate_name(run, "run")
        store_text = os.fspath(store) if store is not None else None
        existing = self.run_info(run)
        if existing is None:
            try:
                with self._transaction() as conn:
                    conn.execute(
                        insert(t.runs).values(
                            name=run,
                            store=store_text,
                            created_at=time.time(),
                            last_token=0,
                            episodes_spent=0,
                            steps_spent=0,
                            runtime_spent=0.0,
                        )
                    )
                    self._record_event(conn, run, EventKind.RUN_CREATED, detail={"store": store_text})
            except IntegrityError:
                pass  # created concurrently by another process: fine, it is the same run
        elif store_text is not None and existing.store != store_text:
            with self._transaction() as conn:
                conn.execute(update(t.runs).where(t.runs.c.name == run).values(store=store_text))
                self._record_event(
                    conn, run, EventKind.STORE_MOVED, detail={"from": existing.store, "to": store_text}
                )
        return self.run(run)

    def clock_reading(self) -> ClockReading:
        """The registry clock now (the database's on PostgreSQL, this host's boot clock on SQLite): what
        heartbeat ages are judged by, immune to wall-clock steps."""
        if self.clock.database_side:
            with self._reading() as conn:
                value = conn.execute(select(self.clock.now())).scalar_one()
        else:
            value = self.clock.params()["tg_clock_now"]
        return ClockReading(self.clock.domain, float(value))

    def run(self, run: str) -> RunRecord:
        """The run's record; raises :class:`RunNotFound` (``run_info`` returns None instead)."""
        info = self.run_info(run)
        if info is None:
            raise RunNotFound(run, self.url)
        return info

    def run_info(self, run: str) -> RunRecord | None:
        with self._reading() as conn:
            row = conn.execute(select(t.runs).where(t.runs.c.name == run)).first()
        return RunRecord.from_row(row) if row else None

    def runs(self) -> list[RunRecord]:
        with self._reading() as conn:
            rows = conn.execute(select(t.runs).order_by(t.runs.c.name)).all()
        return [RunRecord.from_row(r) for r in rows]

    def set_limits(self, run: str, limits: dict[str, Any], *, reason: str = "effective limits") -> None:
        """Record the limits a run was given, so the store, watchdog and status judge by the same numbers."""
        with self._transaction() as conn:
            self._lock_run(conn, run)
            conn.execute(update(t.runs).where(t.runs.c.name == run).values(limits_json=json.dumps(limits)))
            self._record_event(conn, run, EventKind.LIMITS_SET, reason=reason, detail={"limits": limits})

    def set_resumed_from(self, run: str, checkpoint: str | None) -> None:
        with self._transaction() as conn:
            conn.execute(update(t.runs).where(t.runs.c.name == run).values(resumed_from=checkpoint))
            self._record_event(conn, run, EventKind.RESUMED, checkpoint=checkpoint)

    # -- events -----------------------------------------------------------------------------------

    def _record_event(
        self,
        conn: Connection,
        run: str | None,
        kind: EventKind,
        *,
        token: int | None = None,
        checkpoint: str | None = None,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        me = self.identity
        conn.execute(
            _INSERT_EVENT,
            {
                "run": run,
                "at": time.time(),
                "kind": kind.value,
                "token": token,
                "checkpoint": checkpoint,
                "actor_host": me.host,
                "actor_pid": me.pid,
                "reason": reason,
                "detail_json": json.dumps(detail or {}, default=str, sort_keys=True),
            },
        )

    def add_event(self, run: str | None, kind: EventKind, **fields: Any) -> None:
        """Record one event in its own transaction."""
        with self._transaction() as conn:
            self._record_event(conn, run, kind, **fields)

    def events(
        self,
        run: str | None = None,
        *,
        kinds: Iterable[EventKind] | None = None,
        after_id: int = 0,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[EventRecord]:
        query = select(t.events).where(t.events.c.id > after_id).order_by(t.events.c.id)
        if since is not None:
            query = query.where(t.events.c.at >= since)
        if run is not None:
            query = query.where(t.events.c.run == run)
        if kinds is not None:
            query = query.where(t.events.c.kind.in_(list(kinds)))
        if limit is not None:
            query = query.limit(limit)
        with self._reading() as conn:
            return [EventRecord.from_row(r) for r in conn.execute(query).all()]


def _file_identity(url: str) -> tuple[str, tuple[int, int]] | None:
    """A SQLite registry's file and its (device, inode) as opened."""
    database = make_url(normalise_url(url)).database
    if not database:
        return None
    try:
        found = os.stat(database)
    except OSError:
        return None
    return database, (found.st_dev, found.st_ino)


def _add_missing_columns(conn: Connection) -> None:
    existing = {table: {c["name"] for c in inspect(conn).get_columns(table)} for table in t.ADDED_COLUMNS}
    for table, columns in t.ADDED_COLUMNS.items():
        for name in columns:
            if name not in existing[table]:
                column = t.metadata.tables[table].c[name]
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))


__all__ = ["RegistryCore"]
