"""What serving code uses: only the promoted, verified, feature-matched checkpoint - never "the latest".

    model = trainguard.live.load("swt-gbpjpy", registry="postgresql://...", features="features.yaml")

``LiveModel`` polls the live pointer and swaps a new state in only after it has loaded and verified
completely; a reader always sees one whole state, and a bad promotion leaves the previous state serving.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainguard import fingerprint as fp
from trainguard.checkpoints import CheckpointStore, LoadedCheckpoint, Signing
from trainguard.errors import CheckpointNotFound, FingerprintMismatch, InvalidArgument, StateConflict
from trainguard.registry import Registry

log = logging.getLogger("trainguard")

FeatureSources = str | os.PathLike[str] | Sequence[str | os.PathLike[str] | dict[str, Any]] | None


def _features(features: FeatureSources) -> fp.Fingerprint | None:
    if features is None:
        return None
    sources = [features] if isinstance(features, str | os.PathLike) else list(features)
    return fp.compute([os.fspath(s) if isinstance(s, os.PathLike) else s for s in sources])


def _open(registry: Registry | str) -> tuple[Registry, bool]:
    if isinstance(registry, Registry):
        return registry, False
    return Registry.open(registry, mode="read"), True


def load(
    run: str,
    *,
    registry: Registry | str,
    features: FeatureSources = None,
    store: str | os.PathLike[str] | None = None,
    signing: Signing | None = None,
) -> LoadedCheckpoint:
    """The run's live checkpoint, hashes (and, with a public key configured, its signature) verified and
    fingerprint checked against ``features`` (the serving side's own feature files). Raises instead of
    returning anything else. ``signing``: by default from ``$TRAINGUARD_PUBLIC_KEY`` and
    ``$TRAINGUARD_SIGNING_REQUIRED``."""
    expected = _features(features)
    reg, owned = _open(registry)
    try:
        recorded = reg.run(run).store
        name = reg.live_pointer(run)
        if name is None:
            raise CheckpointNotFound(run, "(live)", "no checkpoint has been promoted for this run")
        root = Path(store) if store is not None else Path(recorded) if recorded else None
        if root is None:
            raise InvalidArgument(
                "store", None, f"the registry records no store for run {run!r}; pass store="
            )
        with CheckpointStore.open_existing(
            root, run=run, registry=reg, read_only=True, signing=signing
        ) as checkpoints:
            loaded = checkpoints.load(name)  # refuses quarantined/evicted; verifies every hash first
        if loaded.manifest.fingerprint != (expected.digest if expected else None):
            raise FingerprintMismatch(
                name,
                fp.differences(loaded.manifest.features, expected.content if expected else None),
                "serve",
            )
        return loaded
    finally:
        if owned:
            reg.close()


class LiveModel:
    """Serves the live checkpoint's state and follows promotions safely."""

    def __init__(
        self,
        run: str,
        *,
        registry: Registry | str,
        features: FeatureSources = None,
        store: str | os.PathLike[str] | None = None,
        poll_interval: float = 5.0,
        signing: Signing | None = None,
    ) -> None:
        self.run = run
        self.features = features
        self.store = store
        self.signing = signing
        self.poll_interval = poll_interval
        self.registry, self._owned = _open(registry)
        self.last_error: BaseException | None = None
        self._current: LoadedCheckpoint | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> LoadedCheckpoint | None:
        return self._current  # one reference read: always a whole, verified checkpoint (or None)

    @property
    def state(self) -> Any:
        current = self._current
        if current is None:
            raise StateConflict(
                f"the live model of run {self.run!r}",
                "empty",
                f"nothing loaded yet ({self.last_error or 'no promotion'}); call refresh() or start()",
            )
        return current.state

    def refresh(self) -> bool:
        """Load the live checkpoint if it changed; True when a new state was swapped in."""
        with self._lock:
            name = self.registry.live_pointer(self.run)
            if name is None or (self._current is not None and self._current.name == name):
                return False
            try:
                loaded = load(
                    self.run,
                    registry=self.registry,
                    features=self.features,
                    store=self.store,
                    signing=self.signing,
                )
            except Exception as error:
                # Keep serving what we have: a promotion that cannot be loaded and verified is not live here.
                self.last_error = error
                log.error(  # noqa: TRY400 - the reason is in the message; a traceback would bury it
                    "trainguard live: keeping %s; cannot load %s: %s",
                    self._current.name if self._current else "nothing",
                    name,
                    error,
                )
                return False
            self._current, self.last_error = loaded, None
            log.info("trainguard live: now serving %s", loaded.name)
            return True

    def start(self) -> LiveModel:
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="trainguard-live", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except Exception:  # the registry may be briefly unreachable; keep the last good state
                log.exception("trainguard live: poll failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._owned:
            self.registry.close()

    def __enter__(self) -> LiveModel:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()


__all__ = ["LiveModel", "load"]
