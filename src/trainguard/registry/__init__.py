"""The run registry: runs, leases and fencing tokens, checkpoint rows, events, live pointers, heartbeats and
registered processes, on SQLite or PostgreSQL (see docs/design.md, "The registry")."""

from __future__ import annotations

from trainguard._os.identity import ProcessIdentity
from trainguard.registry._budget import BudgetOps
from trainguard.registry._checkpoints import CheckpointOps
from trainguard.registry._clock import ClockReading, RegistryClock
from trainguard.registry._engine import OpenMode, default_registry_url
from trainguard.registry._leases import DEFAULT_LEASE_TTL, Lease
from trainguard.registry._processes import ProcessOps
from trainguard.registry._records import (
    CheckpointRecord,
    CommitVerdict,
    EventRecord,
    LeaseInfo,
    ProcessRecord,
    RunRecord,
    WatchdogRecord,
)
from trainguard.registry._restore import RestoreOps
from trainguard.registry._states import CheckpointState, EventKind, LeaseState, ProcessRole
from trainguard.registry._watched import COUNTS, WatchedFile, WatchedFileOps


class Registry(CheckpointOps, BudgetOps, ProcessOps, RestoreOps, WatchedFileOps):
    """One registry for SQLite and PostgreSQL: ``Registry.open("sqlite:///...")`` or ``"postgresql://..."``."""


__all__ = [
    "COUNTS",
    "DEFAULT_LEASE_TTL",
    "CheckpointRecord",
    "CheckpointState",
    "ClockReading",
    "CommitVerdict",
    "EventKind",
    "EventRecord",
    "Lease",
    "LeaseInfo",
    "LeaseState",
    "OpenMode",
    "ProcessIdentity",
    "ProcessRecord",
    "ProcessRole",
    "Registry",
    "RegistryClock",
    "RunRecord",
    "WatchdogRecord",
    "WatchedFile",
    "default_registry_url",
]
