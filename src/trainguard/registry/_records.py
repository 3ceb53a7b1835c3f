"""Plain values the registry hands out; rows never leave the registry as SQLAlchemy objects."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row


def _json(text: str | None) -> dict[str, Any]:
    return dict(json.loads(text)) if text else {}


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
        m = row._mapping
        return cls(
            name=m["name"],
            store=m["store"],
            created_at=m["created_at"],
            last_token=m["last_token"],
            limits=_json(m["limits_json"]),
            resumed_from=m["resumed_from"],
            episodes_spent=m["episodes_spent"],
            steps_spent=m["steps_spent"],
            runtime_spent=m["runtime_spent"],
        )


@dataclass(frozen=True)
class LeaseInfo:
    run: str
    token: int
    state: str
    holder_host: str
    holder_host_key: str
    holder_pid: int
    holder_start_time: float
    ttl: float
    acquired_at: float
    renewed_at: float
    renewals: int
    expires_wall: float
    ended_at: float | None
    end_reason: str | None
    live: bool  # judged by the registry clock when this record was read

    @classmethod
    def from_row(cls, row: Row[Any], live: bool) -> LeaseInfo:
        m = row._mapping
        return cls(
            run=m["run"],
            token=m["token"],
            state=m["state"],
            holder_host=m["holder_host"],
            holder_host_key=m["holder_host_key"],
            holder_pid=m["holder_pid"],
            holder_start_time=m["holder_start_time"],
            ttl=m["ttl"],
            acquired_at=m["acquired_at"],
            renewed_at=m["renewed_at"],
            renewals=m["renewals"],
            expires_wall=m["expires_wall"],
            ended_at=m["ended_at"],
            end_reason=m["end_reason"],
            live=live,
        )


@dataclass(frozen=True)
class CheckpointRecord:
    run: str
    name: str
    episode: int
    token: int
    manifest_hash: str
    state: str = "committed"
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
        m = row._mapping
        return cls(
            id=m["id"],
            run=m["run"],
            name=m["name"],
            episode=m["episode"],
            token=m["token"],
            parent=m["parent"],
            fingerprint=m["fingerprint"],
            manifest_hash=m["manifest_hash"],
            state=m["state"],
            pinned=bool(m["pinned"]),
            metrics=_json(m["metrics_json"]),
            bytes=m["bytes"],
            created_at=m["created_at"],
            state_reason=m["state_reason"],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "name": self.name,
            "episode": self.episode,
            "token": self.token,
            "state": self.state,
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
        m = row._mapping
        return cls(
            id=m["id"],
            run=m["run"],
            at=m["at"],
            kind=m["kind"],
            token=m["token"],
            checkpoint=m["checkpoint"],
            actor_host=m["actor_host"],
            actor_pid=m["actor_pid"],
            reason=m["reason"],
            detail=_json(m["detail_json"]),
        )


@dataclass(frozen=True)
class CommitVerdict:
    """The registry's decision on a commit: an expected outcome, so a value with a reason."""

    accepted: bool
    reason: str = ""
    fenced: bool = False  # refused because the token is not the current live lease


__all__ = ["CheckpointRecord", "CommitVerdict", "EventRecord", "LeaseInfo", "RunRecord"]
