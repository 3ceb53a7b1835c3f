"""The values the store hands out and takes: a loaded checkpoint, a checkpoint's provenance, default names."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainguard._os.mapping import VerifiedMap
from trainguard.checkpoints._reading import check_maps
from trainguard.checkpoints.manifest import Manifest
from trainguard.registry import CheckpointRecord


class LoadedCheckpoint:
    """A verified checkpoint: ``state`` decoded only after every hash matched.

    The state is built on private maps of the verified files (``trainguard._os.mapping``): each access to
    ``state`` checks that no file changed on disk since (one ``fstat`` each) and re-verifies one that did -
    refusing it (CorruptCheckpoint) when its content no longer matches. ``check()`` does the same on demand.
    """

    def __init__(
        self,
        state: Any,
        record: CheckpointRecord,
        manifest: Manifest,
        maps: Mapping[str, VerifiedMap] | None = None,
    ) -> None:
        self._state = state
        self.record = record
        self.manifest = manifest
        self._maps = dict(maps or {})  # manifest path -> the verified map the state is built on
        self._lock = threading.Lock()

    @property
    def state(self) -> Any:
        self.check()
        return self._state

    def check(self) -> None:
        """Raise CorruptCheckpoint if a file changed on disk after verification and no longer matches."""
        if self._maps:
            with self._lock:
                check_maps(self.record.name, self.manifest, self._maps)

    @property
    def mapped(self) -> bool:
        return bool(self._maps)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def episode(self) -> int:
        return self.record.episode

    def __repr__(self) -> str:
        return f"LoadedCheckpoint({self.record.name!r}, episode={self.record.episode}, mapped={self.mapped})"


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
