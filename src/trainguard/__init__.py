"""trainguard: keeps long-running training under control.

Budgets that survive restarts, leases with fencing tokens, atomic hashed checkpoints that a stale writer
cannot commit, and a live pointer that only moves through gates.
"""

from __future__ import annotations

from trainguard import live
from trainguard._stop import Stop, StopReason
from trainguard.checkpoints import CheckpointStore, LoadedCheckpoint, VerifyReport, retention
from trainguard.errors import (
    CheckpointNotFound,
    CheckpointRejected,
    CheckpointWriteError,
    CommitFenced,
    CommitRefused,
    ConfigError,
    CorruptCheckpoint,
    FingerprintMismatch,
    InvalidName,
    LeaseHeld,
    LeaseLost,
    RegistryError,
    TrainguardError,
    UnsafeCheckpoint,
)
from trainguard.guard import Guard
from trainguard.registry import CheckpointRecord, Lease, Registry

__version__ = "0.1.0"

__all__ = [
    "CheckpointNotFound",
    "CheckpointRecord",
    "CheckpointRejected",
    "CheckpointStore",
    "CheckpointWriteError",
    "CommitFenced",
    "CommitRefused",
    "ConfigError",
    "CorruptCheckpoint",
    "FingerprintMismatch",
    "Guard",
    "InvalidName",
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "LoadedCheckpoint",
    "Registry",
    "RegistryError",
    "Stop",
    "StopReason",
    "TrainguardError",
    "UnsafeCheckpoint",
    "VerifyReport",
    "__version__",
    "live",
    "retention",
]
