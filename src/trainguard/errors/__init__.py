"""Every exception trainguard raises, and the exit codes the command line maps them to.

Each one subclasses the standard error it refines (so ``except ValueError`` still works for callers that do
not know trainguard), carries its data as attributes, and renders a one-line message that names the
parameter, the value and the rule. ``exit_code`` is what the CLI exits with when the error reaches it (see
:class:`ExitCode`). Messages speak of the library's parameters; what to type at a shell is added by the
CLI (``trainguard.cli``), never here.

Expected outcomes - a budget ran out, a commit was refused by the registry, a gate failed - are values with
a reason (``Stop``, ``CommitVerdict``, ``Verdict``); these are the errors.
"""

from __future__ import annotations

from trainguard.errors._base import (
    MISSING,
    ExitCode,
    TrainguardError,
)
from trainguard.errors._problems import (
    CheckpointRejected,
    CheckpointWriteError,
    CommitOutcomeUnknown,
    CorruptCheckpoint,
    RegistryError,
    SignatureRejected,
    UnsafeCheckpoint,
    UnsafeStore,
)
from trainguard.errors._refused import (
    BudgetExhausted,
    CommitFenced,
    CommitRefused,
    LeaseHeld,
    LeaseLost,
)
from trainguard.errors._usage import (
    CheckpointNotFound,
    ConfigError,
    FingerprintMismatch,
    InvalidArgument,
    InvalidName,
    LimitRaised,
    MissingDependency,
    NotSupported,
    RegistryMismatch,
    RegistryNotFound,
    RunNotFound,
    StateConflict,
)

__all__ = [
    "MISSING",
    "BudgetExhausted",
    "CheckpointNotFound",
    "CheckpointRejected",
    "CheckpointWriteError",
    "CommitFenced",
    "CommitOutcomeUnknown",
    "CommitRefused",
    "ConfigError",
    "CorruptCheckpoint",
    "ExitCode",
    "FingerprintMismatch",
    "InvalidArgument",
    "InvalidName",
    "LeaseHeld",
    "LeaseLost",
    "LimitRaised",
    "MissingDependency",
    "NotSupported",
    "RegistryError",
    "RegistryMismatch",
    "RegistryNotFound",
    "RunNotFound",
    "SignatureRejected",
    "StateConflict",
    "TrainguardError",
    "UnsafeCheckpoint",
    "UnsafeStore",
]
