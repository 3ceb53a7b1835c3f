"""The fenced checkpoint store: commit protocol, codecs, manifests, retention, quarantine, recovery (see
docs/design.md, "The commit protocol" and "Recovery")."""

from __future__ import annotations

from trainguard.checkpoints import _bucket_store as _bucket_store  # registers the s3:// store
from trainguard.checkpoints import retention
from trainguard.checkpoints._binding import bound_to
from trainguard.checkpoints._context import Validation, Validator
from trainguard.checkpoints._reading import Problem, VerifyReport
from trainguard.checkpoints._recovery import RecoveryReport
from trainguard.checkpoints.adopt import AdoptionReport, adopt_directory
from trainguard.checkpoints.async_writer import AsyncSaver
from trainguard.checkpoints.manifest import Manifest
from trainguard.checkpoints.signing import Signing, generate_key, signing_of
from trainguard.checkpoints.store import LATEST, CheckpointStore, LoadedCheckpoint, Provenance, default_name

__all__ = [
    "LATEST",
    "AdoptionReport",
    "AsyncSaver",
    "CheckpointStore",
    "LoadedCheckpoint",
    "Manifest",
    "Problem",
    "Provenance",
    "RecoveryReport",
    "Signing",
    "Validation",
    "Validator",
    "VerifyReport",
    "adopt_directory",
    "bound_to",
    "default_name",
    "generate_key",
    "retention",
    "signing_of",
]
