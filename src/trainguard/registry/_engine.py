"""Turn a registry URL into a configured SQLAlchemy engine.

SQLite is tuned for correctness first: WAL so readers never block the writer, ``synchronous=FULL`` because
a token bump that is lost on power failure would be handed out twice, and ``BEGIN IMMEDIATE`` so every
transaction takes the write lock up front - a deferred transaction that reads the lease and later tries to
write can fail with SQLITE_BUSY mid-decision, or worse decide on a stale read.

Three ways to open (``OpenMode``): ``create`` (a writer's first open makes the file and schema), ``existing``
(operator commands: it must exist) and ``read`` (commands that only look: it must exist, and the connection
cannot write - SQLite ``mode=ro``, or ``immutable=1`` on a read-only filesystem where nobody can change it;
PostgreSQL ``default_transaction_read_only``). A reader never creates a file, so a typo'd path is an error,
not an empty registry that reports "nothing found".
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from trainguard._os.optional import require
from trainguard.errors import InvalidArgument, RegistryError, RegistryNotFound
from trainguard.names import default_registry_url, registry_url

SQLITE_BUSY_TIMEOUT_S = 60.0
OpenMode = Literal["create", "existing", "read"]
OPEN_MODES: tuple[OpenMode, ...] = ("create", "existing", "read")


def normalise_url(url: str) -> str:
    """Accept ``postgresql://``/``postgres://`` (driver psycopg 3), ``sqlite:///path`` or a bare path;
    :class:`InvalidArgument` for anything else (``trainguard.names.registry_url``)."""
    return registry_url(url)


def redact(url: str) -> str:
    """The URL for messages: never print a password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


# libpq connection parameters (seconds; tcp_user_timeout in ms: how long sent data may stay unacknowledged).
_NETWORK_BOUNDS: dict[str, int] = {
    "connect_timeout": 2,  # libpq's smallest
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 2000,
}


def create_registry_engine(
    url: str, *, relaxed: bool = False, mode: OpenMode = "create", lock_wait: float | None = None
) -> Engine:
    """``mode``: see the module's doc. ``relaxed`` gives connections whose commits do not wait for the disk
    (SQLite ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``): still atomic and consistent, but
    the newest transactions may be lost on power failure. Only lease renewals use it - see
    ``RegistryCore.transaction``."""
    target = normalise_url(url)
    parsed = make_url(target)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        wait = SQLITE_BUSY_TIMEOUT_S if lock_wait is None else lock_wait
        return _sqlite_engine(target, parsed.database, "NORMAL" if relaxed else "FULL", mode, wait)
    if backend == "postgresql":  # the driver is psycopg (checked by registry_url)
        require("psycopg", "a PostgreSQL registry")
        # No pool_pre_ping: it costs a round trip per transaction (a third of a renewal). A connection that
        # died with the server fails its statement, is discarded by the pool, and the caller's next attempt
        # (the next heartbeat) gets a fresh one.
        options = ["-c synchronous_commit=off"] if relaxed else []
        if mode == "read":
            options.append("-c default_transaction_read_only=on")
        connect_args: dict[str, Any] = {"options": " ".join(options)} if options else {}
        # What the URL does not set itself: bounds on a network that drops packets (a partition sends no
        # RST). Unbounded, a renewal on a dead connection waits out the kernel's retransmissions (~15 min)
        # and a connect its SYN retries (~2 min) - longer than any lease, so its holder could not fence
        # itself in time. Bounded, each attempt fails within seconds and is retried at the next beat.
        connect_args |= {key: value for key, value in _NETWORK_BOUNDS.items() if key not in parsed.query}
        return create_engine(target, pool_size=2, max_overflow=4, connect_args=connect_args)
    rule = f"backend {backend!r} is not supported; use sqlite or postgresql"
    raise InvalidArgument("registry", redact(url), rule)


def _sqlite_engine(url: str, database: str | None, synchronous: str, mode: OpenMode, wait: float) -> Engine:
    if not database or database == ":memory:":
        raise RegistryError(
            url, "an in-memory SQLite registry cannot be shared between processes; give a file"
        )
    path = Path(database)
    if mode == "create":
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a store path that is a file (`--store /dev/null`), or not ours to write
            raise InvalidArgument(
                "registry", redact(url), f"its directory cannot be created: {error.strerror or error}"
            ) from None
    elif not path.is_file():
        raise RegistryNotFound(
            redact(url), "no such registry file (only a writer creates one; check the path or --store)"
        )
    if mode == "read":
        engine = create_engine("sqlite://", creator=lambda: _read_only_connection(path, wait))
    else:
        engine = create_engine(url, connect_args={"timeout": wait, "isolation_level": None})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if mode != "read":  # a read-only connection can set neither; the file's WAL mode persists anyway
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # A reader's transaction is deferred: it takes no write lock (it could not on a read-only file).
        connection.exec_driver_sql("BEGIN" if mode == "read" else "BEGIN IMMEDIATE")

    return engine


def _read_only_connection(path: Path, wait: float) -> sqlite3.Connection:
    """``mode=ro``; on a read-only filesystem also ``immutable=1``, because a WAL database otherwise needs
    to create its ``-shm`` file to be read, and nobody can change the file there anyway."""
    immutable = "&immutable=1" if os.statvfs(path).f_flag & os.ST_RDONLY else ""
    uri = f"file:{quote(str(path.resolve()))}?mode=ro{immutable}"
    return sqlite3.connect(uri, uri=True, timeout=wait, isolation_level=None, check_same_thread=False)


__all__ = [
    "OPEN_MODES",
    "OpenMode",
    "create_registry_engine",
    "default_registry_url",
    "normalise_url",
    "redact",
]
