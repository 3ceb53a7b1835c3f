"""A Guard's saves: through the fenced store with the Guard's token and feature fingerprint, synchronously
or in the background (``checkpoints.async``), each answered by one :class:`SaveResult` whatever the mode,
and auto-promoted when the config asks for it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from trainguard.checkpoints import AsyncSaver, CheckpointStore, default_name
from trainguard.config import TrainguardConfig
from trainguard.errors import LeaseLost, RegistryError
from trainguard.fingerprint import Fingerprint
from trainguard.promotion import auto_promote
from trainguard.registry import CheckpointRecord, Lease

log = logging.getLogger("trainguard")


class SaveResult:
    """What ``Guard.save`` returns: the checkpoint's name at once, its record once it is committed.

    A synchronous save is done when ``save`` returns; an asynchronous one commits in the background, and
    ``result()`` waits for it. ``result()`` raises what the commit raised (``CommitFenced`` - a
    ``LeaseLost`` -, ``CommitRefused``, ``CheckpointRejected``, ``CheckpointWriteError``); an error taken
    from here is not raised again by the next ``save`` or at exit (otherwise it is, so none is lost).
    """

    def __init__(
        self,
        name: str,
        episode: int,
        future: Future[CheckpointRecord],
        acknowledge: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self.episode = episode
        self._future = future
        self._acknowledge = acknowledge

    def __repr__(self) -> str:
        if not self.done():
            state = "pending"
        else:
            state = "failed" if self._future.exception() is not None else "committed"
        return f"SaveResult(name={self.name!r}, episode={self.episode}, {state})"

    def done(self) -> bool:
        return self._future.done()

    def when_committed(self, action: Callable[[CheckpointRecord], None]) -> None:
        """Run ``action(record)`` once the checkpoint is committed (not if the save fails): on the committing
        thread, before the next save can start (it waits for that thread) - so, say, a pin lands before
        the next commit's retention runs. An error in ``action`` is logged, not raised."""

        def committed(future: Future[CheckpointRecord]) -> None:
            if future.exception() is None:
                action(future.result())

        self._future.add_done_callback(committed)

    def result(self, timeout: float | None = None) -> CheckpointRecord:
        """The committed checkpoint's record; waits up to ``timeout`` seconds (None: as long as it takes)."""
        try:
            return self._future.result(timeout)
        except TimeoutError:
            raise
        except BaseException as error:
            if self._acknowledge is not None:
                self._acknowledge(error)
            raise


class Saver:
    def __init__(
        self,
        store: CheckpointStore,
        lease: Lease,
        config: TrainguardConfig,
        features: Fingerprint | None,
        *,
        lease_lost: Callable[[str], None],
    ) -> None:
        self.store = store
        self.lease = lease
        self.config = config
        self.features = features
        self.lease_lost = lease_lost
        self.saving = False  # a synchronous save is in progress (the watchdog gives stalls extra grace)
        self.last_record: CheckpointRecord | None = None
        self.background: AsyncSaver | None = None
        if config.checkpoints.async_:
            self.background = AsyncSaver(store, on_error=self._background_error, on_done=self._committed)

    @property
    def busy(self) -> bool:
        return self.saving or bool(self.background and self.background.in_flight)

    def save(
        self,
        state: object,
        episode: int,
        metrics: dict[str, Any],
        *,
        progressed: Callable[[], None],
        background: bool | None = None,
        name: str | None = None,
    ) -> SaveResult:
        """Commit (or start committing) ``state``; ``progressed`` is called once the loop may go on.
        ``background``: this save in the background (or not); None: as ``checkpoints.async`` says."""
        if background and self.background is None:
            self.background = AsyncSaver(self.store, on_error=self._background_error, on_done=self._committed)
        elif background is False and self.background is not None:
            self.background.wait()  # never two commits at once: the one in flight first
        kwargs: dict[str, Any] = {
            "episode": episode,
            "lease": self.lease,
            "metrics": metrics,
            "features": self.features,
        }
        if name is not None:
            kwargs["name"] = name
        name = name or default_name(episode, self.lease.token)
        try:
            self.saving = True
            if self.background is not None and background is not False:
                # Waits for (and raises the error of) the previous save first.
                future = self.background.submit(state, **kwargs)
                result = SaveResult(name, episode, future, self.background.acknowledge)
            else:
                done: Future[CheckpointRecord] = Future()
                done.set_result(self._committed(self.store.save(state, **kwargs)))
                result = SaveResult(name, episode, done)
            # A save is progress. Without this, the first heartbeat after a long save reports the whole save
            # as time without progress, no longer doubled ("saving" is over), and the watchdog kills a healthy
            # process between the save and the end of its episode. Called before "saving" is cleared, so no
            # heartbeat can see neither.
            progressed()
        except LeaseLost as lost:
            self.lease_lost(lost.reason)
            raise
        finally:
            self.saving = False
        return result

    def wait(self) -> CheckpointRecord | None:
        """Wait for a background save in flight; raise its error (once). The last committed record."""
        if self.background is not None:
            self.background.wait()
        return self.last_record

    def _committed(self, record: CheckpointRecord) -> CheckpointRecord:
        self.last_record = record
        try:
            auto_promote(self.store, self.config, self.features, record)
        except RegistryError as error:
            # The save is committed; a promotion is never urgent and never guessed: the live pointer stays
            # where it was, and `trainguard promote` (or the next save) can move it.
            log.warning("trainguard: %s committed, not auto-promoted (registry down): %s", record.name, error)
        return record

    def _background_error(self, error: BaseException) -> None:
        if isinstance(error, LeaseLost):
            self.lease_lost(error.reason)


__all__ = ["SaveResult", "Saver"]
