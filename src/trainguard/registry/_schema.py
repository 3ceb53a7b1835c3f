"""The registry's tables (SQLAlchemy Core), one schema for SQLite and PostgreSQL.

Times are floats: ``*_at`` columns are wall-clock seconds since the epoch (for people and reports);
lease expiry is judged on ``expires_at`` in the clock domain named by ``clock_domain`` (see ``_clock``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# 1: runs, leases, checkpoints, events, live pointers, heartbeats
# 2: processes (who runs a run: launcher, child, guard), watchdogs (their own heartbeats)
# 3: identities by start ticks since boot and uid (a wall-clock step no longer changes who is who);
#    heartbeats timed in the registry's clock; meta (the id that binds a registry to its store)
# 4: watched files (an unmodified trainer's checkpoint files, each charged to the budget once)
SCHEMA_VERSION = 4

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for an audit log that grows.
_AutoId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

schema_version = Table(
    "tg_schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("installed_at", Float, nullable=False),
)

runs = Table(
    "tg_runs",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("store", Text),
    Column("created_at", Float, nullable=False),
    # Highest token ever handed out for this run. Tokens come only from here, inside the transaction that
    # bumps it, so a token is never reused - not after a crash, not after a reboot.
    Column("last_token", BigInteger, nullable=False, default=0),
    Column("limits_json", Text),
    Column("resumed_from", String(128)),
    Column("episodes_spent", BigInteger, nullable=False, default=0),
    Column("steps_spent", BigInteger, nullable=False, default=0),
    Column("runtime_spent", Float, nullable=False, default=0.0),
)

leases = Table(
    "tg_leases",
    metadata,
    Column("run", String(128), ForeignKey("tg_runs.name"), primary_key=True),
    Column("token", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # held | released | revoked | expired
    Column("holder_host", Text, nullable=False),
    Column("holder_host_key", Text, nullable=False),
    Column("holder_pid", Integer, nullable=False),
    Column("holder_start_time", Float, nullable=False),  # for people; identity is by the ticks below
    Column("holder_start_ticks", BigInteger),  # since boot (NULL: written before schema 3, matches nothing)
    Column("holder_uid", Integer),
    Column("ttl", Float, nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("renewed_at", Float, nullable=False),
    Column("renewals", BigInteger, nullable=False, default=0),
    Column("clock_domain", Text, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("expires_wall", Float, nullable=False),
    Column("ended_at", Float),
    Column("end_reason", Text),
)

checkpoints = Table(
    "tg_checkpoints",
    metadata,
    Column("id", _AutoId, primary_key=True, autoincrement=True),
    Column("run", String(128), ForeignKey("tg_runs.name"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("episode", BigInteger, nullable=False),
    Column("token", BigInteger, nullable=False),
    Column("parent", String(128)),
    Column("fingerprint", Text),
    Column("manifest_hash", String(128), nullable=False),
    Column("state", String(16), nullable=False),  # committed | quarantined | evicted
    Column("pinned", Boolean, nullable=False, default=False),
    Column("metrics_json", Text, nullable=False, default="{}"),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("state_reason", Text),
    Column("state_changed_at", Float),
    UniqueConstraint("run", "name", name="uq_tg_checkpoints_run_name"),
    Index("ix_tg_checkpoints_run_episode", "run", "episode"),
)

events = Table(
    "tg_events",
    metadata,
    Column("id", _AutoId, primary_key=True, autoincrement=True),
    Column("run", String(128)),
    Column("at", Float, nullable=False),
    Column("kind", String(48), nullable=False),
    Column("token", BigInteger),
    Column("checkpoint", String(128)),
    Column("actor_host", Text, nullable=False),
    Column("actor_pid", Integer, nullable=False),
    Column("reason", Text),
    Column("detail_json", Text, nullable=False, default="{}"),
    Index("ix_tg_events_run_id", "run", "id"),
    Index("ix_tg_events_kind_at", "kind", "at"),
)

live_pointers = Table(
    "tg_live_pointers",
    metadata,
    Column("run", String(128), ForeignKey("tg_runs.name"), primary_key=True),
    Column("checkpoint", String(128), nullable=False),
    Column("moved_at", Float, nullable=False),
    Column("reason", Text),
)

heartbeats = Table(
    "tg_heartbeats",
    metadata,
    Column("run", String(128), ForeignKey("tg_runs.name"), primary_key=True),
    Column("token", BigInteger, nullable=False),
    Column("at", Float, nullable=False),  # wall clock, for people
    # The registry's clock (see _clock): a heartbeat's age is judged in it, so a wall-clock step does not
    # make every heartbeat look stale.
    Column("clock_domain", Text),
    Column("clock_at", Float),
    Column("detail_json", Text, nullable=False, default="{}"),
)

processes = Table(
    "tg_processes",
    metadata,
    Column("id", _AutoId, primary_key=True, autoincrement=True),
    Column("run", String(128), ForeignKey("tg_runs.name"), nullable=False),
    Column("token", BigInteger, nullable=False),
    Column("role", String(16), nullable=False),  # launcher | child | guard | worker
    Column("host", Text, nullable=False),
    Column("host_key", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("start_time", Float, nullable=False),  # for people
    # With pid and host_key the identity (a PID alone is never trusted); uid: who may be signalled.
    Column("start_ticks", BigInteger),
    Column("uid", Integer),
    Column("pgid", Integer),
    Column("registered_at", Float, nullable=False),
    Column("ended_at", Float),
    Index("ix_tg_processes_run_token", "run", "token"),
)

watchdogs = Table(
    "tg_watchdogs",
    metadata,
    Column("host_key", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("start_time", Float, nullable=False),
    Column("start_ticks", BigInteger),
    Column("interval", Float, nullable=False),
    Column("beat_at", Float, nullable=False),
    Column("detail_json", Text, nullable=False, default="{}"),
)

watched_files = Table(
    "tg_watched_files",
    metadata,
    Column("id", _AutoId, primary_key=True, autoincrement=True),
    Column("run", String(128), ForeignKey("tg_runs.name"), nullable=False),
    Column("path", Text, nullable=False),
    # Identity: the same name rewritten is a new file (new inode, size or content) and new work.
    Column("inode", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("digest", String(80), nullable=False),
    Column("number", BigInteger, nullable=False),  # the count in its name (episode or step)
    Column("kind", String(16), nullable=False),  # "episodes" | "steps"
    Column("charged", BigInteger, nullable=False),  # what it added to the run's spend (0: predates the run)
    Column("seen_at", Float, nullable=False),
    UniqueConstraint("run", "path", "inode", "size", "digest", name="uq_tg_watched_file"),
)

meta = Table(
    "tg_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Columns schema 3 added to tables that already existed: an older registry gets them by ALTER TABLE.
ADDED_COLUMNS = {
    "tg_leases": ("holder_start_ticks", "holder_uid"),
    "tg_processes": ("start_ticks", "uid"),
    "tg_watchdogs": ("start_ticks",),
    "tg_heartbeats": ("clock_domain", "clock_at"),
}

__all__ = [
    "ADDED_COLUMNS",
    "SCHEMA_VERSION",
    "checkpoints",
    "events",
    "heartbeats",
    "leases",
    "live_pointers",
    "meta",
    "metadata",
    "processes",
    "runs",
    "schema_version",
    "watchdogs",
    "watched_files",
]
