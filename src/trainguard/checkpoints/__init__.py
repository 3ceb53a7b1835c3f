"""The fenced checkpoint store: commit protocol, codecs, manifests, retention, quarantine, recovery."""

from __future__ import annotations

from trainguard.checkpoints import retention
from trainguard.checkpoints._reading import Problem, VerifyReport
from trainguard.checkpoints._recovery import RecoveryReport
from trainguard.checkpoints.manifest import Manifest
from trainguard.checkpoints.store import LATEST, CheckpointStore, LoadedCheckpoint, default_name

__all__ = [
    "LATEST",
    "CheckpointStore",
    "LoadedCheckpoint",
    "Manifest",
    "Problem",
    "RecoveryReport",
    "VerifyReport",
    "default_name",
    "retention",
]
