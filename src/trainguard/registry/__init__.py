"""The run registry: runs, leases and fencing tokens, checkpoint rows, events, live pointers."""

from __future__ import annotations

from trainguard.registry._budget import EXTENDABLE, LIMIT_KEYS, BudgetOps
from trainguard.registry._checkpoints import CheckpointOps
from trainguard.registry._clock import RegistryClock
from trainguard.registry._engine import default_registry_url
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


class Registry(CheckpointOps, BudgetOps, ProcessOps):
    """One registry for SQLite and PostgreSQL: ``Registry.open("sqlite:///...")`` or ``"postgresql://..."``."""


__all__ = [
    "DEFAULT_LEASE_TTL",
    "EXTENDABLE",
    "LIMIT_KEYS",
    "CheckpointRecord",
    "CommitVerdict",
    "EventRecord",
    "Lease",
    "LeaseInfo",
    "ProcessRecord",
    "Registry",
    "RegistryClock",
    "RunRecord",
    "WatchdogRecord",
    "default_registry_url",
]
