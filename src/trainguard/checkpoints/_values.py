"""The values the store hands out and takes: a loaded checkpoint, a checkpoint's provenance, default names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainguard.checkpoints.manifest import Manifest
from trainguard.registry import CheckpointRecord


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A verified checkpoint: ``state`` decoded only after every hash matched."""

    state: Any
    record: CheckpointRecord
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def episode(self) -> int:
        return self.record.episode


@dataclass(frozen=True)
class Provenance:
    """Where a checkpoint came from, beyond its run and writer: recorded in its manifest, never judged."""

    code_hash: str | None = None
    config_hash: str | None = None
    origin: dict[str, Any] | None = None  # e.g. {"adopted_from": path} for a legacy checkpoint


def default_name(episode: int, token: int) -> str:
    # The token is part of the name: after a takeover the new holder may save the same episode again.
    return f"ep{episode:08d}-t{token}"


__all__ = ["LoadedCheckpoint", "Provenance", "default_name"]
