"""Turn a registry URL into a configured SQLAlchemy engine.

SQLite is tuned for correctness first: WAL so readers never block the writer, ``synchronous=FULL`` because
a token bump that is lost on power failure would be handed out twice, and ``BEGIN IMMEDIATE`` so every
transaction takes the write lock up front - a deferred transaction that reads the lease and later tries to
write can fail with SQLITE_BUSY mid-decision, or worse decide on a stale read.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from trainguard._os.optional import require
from trainguard.errors import RegistryError
from trainguard.names import default_registry_url

SQLITE_BUSY_TIMEOUT_S = 60.0


def normalise_url(url: str) -> str:
    """Accept ``postgresql://``/``postgres://`` (driver psycopg 3), ``sqlite:///path`` or a bare path."""
    if "://" not in url:
        return f"sqlite:///{Path(url).resolve()}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def redact(url: str) -> str:
    """The URL for messages: never print a password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def create_registry_engine(url: str, *, relaxed: bool = False) -> Engine:
    """``relaxed`` gives connections whose commits do not wait for the disk (SQLite ``synchronous=NORMAL``,
    PostgreSQL ``synchronous_commit=off``): still atomic and consistent, but the newest transactions may be
    lost on power failure. Only lease renewals use it - see ``RegistryCore.transaction``."""
    target = normalise_url(url)
    try:
        parsed = make_url(target)
    except ArgumentError as error:
        raise RegistryError(
            redact(url), f"not a registry URL ({error}); use sqlite:///PATH or postgresql://..."
        ) from error
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(target, parsed.database, "NORMAL" if relaxed else "FULL")
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            raise RegistryError(
                redact(url), "PostgreSQL registries use the psycopg (3) driver: postgresql://..."
            )
        require("psycopg", "a PostgreSQL registry")
        # No pool_pre_ping: it costs a round trip per transaction (a third of a renewal). A connection that
        # died with the server fails its statement, is discarded by the pool, and the caller's next attempt
        # (the next heartbeat) gets a fresh one.
        connect_args = {"options": "-c synchronous_commit=off"} if relaxed else {}
        return create_engine(target, pool_size=2, max_overflow=4, connect_args=connect_args)
    raise RegistryError(redact(url), f"unsupported backend {backend!r}; use sqlite or postgresql")


def _sqlite_engine(url: str, database: str | None, synchronous: str) -> Engine:
    if not database or database == ":memory:":
        raise RegistryError(
            url, "an in-memory SQLite registry cannot be shared between processes; give a file"
        )
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "isolation_level": None})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


__all__ = ["create_registry_engine", "default_registry_url", "normalise_url", "redact"]
