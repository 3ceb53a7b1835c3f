"""Plain values the registry hands out; rows never leave the registry as SQLAlchemy objects."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from sqlalchemy import Row

from trainguard.registry._states import CheckpointState, LeaseState, ProcessRole

R = TypeVar("R")


def _json(text: str | None) -> dict[str, Any]:
    return dict(json.loads(text)) if text else {}


def _from_row(cls: type[R], row: Row[Any], **computed: Any) -> R:
    """Build a record from the row's same-named columns; ``computed`` supplies the rest (JSON, flags)."""
    mapping = row._mapping
    values = {f.name: mapping[f.name] for f in fields(cls) if f.name not in computed}  # type: ignore[arg-type]
    return cls(**values, **computed)


@dataclass(frozen=True)
class RunRecord:
    name: str
    store: str | None
    created_at: float
    last_token: int
    limits: dict[str, Any]
    resumed_from: str | None
    episodes_spent: int
    steps_spent: int
    runtime_spent: float

    @classmethod
    def from_row(cls, row: Row[Any]) -> RunRecord:
        return _from_row(cls, row, limits=_json(row._mapping["limits_json"]))


@dataclass(frozen=True)
class LeaseInfo:
    run: str
    token: int
    state: LeaseState
    holder_host: str
    holder_host_key: str
    holder_pid: int
    holder_start_time: float  # for people
    holder_start_ticks: int | None  # the identity (None: a row from before schema 3)
    holder_uid: int | None
    ttl: float
    acquired_at: float
    renewed_at: float
    renewals: int
    clock_domain: str
    expires_at: float  # in clock_domain (see _clock)
    expires_wall: float
    ended_at: float | None
    end_reason: str | None
    live: bool  # judged by the registry clock when this record was read

    @classmethod
    def from_row(cls, row: Row[Any], live: bool) -> LeaseInfo:
        return _from_row(cls, row, live=live, state=LeaseState(row._mapping["state"]))

    @property
    def held(self) -> bool:
        """Held and not expired (judged by the registry clock when this record was read)."""
        return self.state is LeaseState.HELD and self.live


@dataclass(frozen=True)
class CheckpointRecord:
    run: str
    name: str
    episode: int
    token: int
    manifest_hash: str
    state: CheckpointState = CheckpointState.COMMITTED
    pinned: bool = False
    parent: str | None = None
    fingerprint: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    bytes: int = 0
    created_at: float = 0.0
    state_reason: str | None = None
    id: int | None = None

    @classmethod
    def from_row(cls, row: Row[Any]) -> CheckpointRecord:
        mapping = row._mapping
        return _from_row(
            cls,
            row,
            state=CheckpointState(mapping["state"]),
            pinned=bool(mapping["pinned"]),
            metrics=_json(mapping["metrics_json"]),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "name": self.name,
            "episode": self.episode,
            "token": self.token,
            "state": self.state.value,
            "pinned": self.pinned,
            "parent": self.parent,
            "fingerprint": self.fingerprint,
            "metrics": self.metrics,
            "bytes": self.bytes,
            "created_at": self.created_at,
            "manifest_hash": self.manifest_hash,
            "state_reason": self.state_reason,
        }


@dataclass(frozen=True)
class EventRecord:
    id: int
    run: str | None
    at: float
    kind: str
    token: int | None
    checkpoint: str | None
    actor_host: str
    actor_pid: int
    reason: str | None
    detail: dict[str, Any]

    @classmethod
    def from_row(cls, row: Row[Any]) -> EventRecord:
        return _from_row(cls, row, detail=_json(row._mapping["detail_json"]))


@dataclass(frozen=True)
class ProcessRecord:
    """A process registered for a run: who holds (launcher), runs (child) or guards (guard) it."""

    id: int
    run: str
    token: int
    role: ProcessRole
    host: str
    host_key: str
    pid: int
    start_time: float  # for people
    start_ticks: int | None  # the identity (None: a row from before schema 3)
    uid: int | None  # the uid the process ran as when it registered
    pgid: int | None
    registered_at: float
    ended_at: float | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> ProcessRecord:
        return _from_row(cls, row, role=ProcessRole(row._mapping["role"]))


@dataclass(frozen=True)
class WatchdogRecord:
    host_key: str
    host: str
    pid: int
    start_time: float
    start_ticks: int | None
    interval: float
    beat_at: float
    detail: dict[str, Any]

    @classmethod
    def from_row(cls, row: Row[Any]) -> WatchdogRecord:
        return _from_row(cls, row, detail=_json(row._mapping["detail_json"]))


@dataclass(frozen=True)
class CommitVerdict:
    """The registry's decision on a commit: an expected outcome, so a value with a reason."""

    accepted: bool
    reason: str = ""
    fenced: bool = False  # refused because the token is not the current live lease


__all__ = [
    "CheckpointRecord",
    "CommitVerdict",
    "EventRecord",
    "LeaseInfo",
    "ProcessRecord",
    "RunRecord",
    "WatchdogRecord",
]
