"""trainguard: keeps long-running training under control.

Budgets that survive restarts, leases with fencing tokens, atomic hashed checkpoints that a stale writer
cannot commit, and a live pointer that only moves through gates (see docs/design.md).
"""

from __future__ import annotations

from trainguard.checkpoints import CheckpointStore, LoadedCheckpoint, VerifyReport, retention
from trainguard.errors import (
    BudgetExhausted,
    CheckpointNotFound,
    CheckpointRejected,
    CheckpointWriteError,
    CommitFenced,
    CommitOutcomeUnknown,
    CommitRefused,
    ConfigError,
    CorruptCheckpoint,
    ExitCode,
    FingerprintMismatch,
    InvalidArgument,
    InvalidName,
    LeaseHeld,
    LeaseLost,
    LimitRaised,
    MissingDependency,
    NotSupported,
    RegistryError,
    RegistryMismatch,
    RegistryNotFound,
    RunNotFound,
    SignatureRejected,
    StateConflict,
    TrainguardError,
    UnsafeCheckpoint,
    UnsafeStore,
)
from trainguard.guard import Guard, SaveResult, Stop, StopReason
from trainguard.promotion import live
from trainguard.registry import CheckpointRecord, CheckpointState, Lease, Registry

__version__ = "0.1.0"

__all__ = [
    "BudgetExhausted",
    "CheckpointNotFound",
    "CheckpointRecord",
    "CheckpointRejected",
    "CheckpointState",
    "CheckpointStore",
    "CheckpointWriteError",
    "CommitFenced",
    "CommitOutcomeUnknown",
    "CommitRefused",
    "ConfigError",
    "CorruptCheckpoint",
    "ExitCode",
    "FingerprintMismatch",
    "Guard",
    "InvalidArgument",
    "InvalidName",
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "LimitRaised",
    "LoadedCheckpoint",
    "MissingDependency",
    "NotSupported",
    "Registry",
    "RegistryError",
    "RegistryMismatch",
    "RegistryNotFound",
    "RunNotFound",
    "SaveResult",
    "SignatureRejected",
    "StateConflict",
    "Stop",
    "StopReason",
    "TrainguardError",
    "UnsafeCheckpoint",
    "UnsafeStore",
    "VerifyReport",
    "__version__",
    "live",
    "retention",
]
