"""Asynchronous saves: copy the state into reusable CPU buffers, commit it on a background thread.

The loop is blocked only for the copy. At most one save is in flight - the next ``submit`` (and ``wait``)
first waits for it - so the buffers are never overwritten while being written, and an error in the
background surfaces on the very next call instead of being lost (unless the caller already took it from
the save's future: an error is reported once). The commit itself is the ordinary fenced protocol, so a
save submitted before the lease was lost is refused like any other.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from trainguard.checkpoints._tree import flatten, unflatten
from trainguard.checkpoints.store import CheckpointStore
from trainguard.registry import CheckpointRecord


class AsyncSaver:
    def __init__(
        self,
        store: CheckpointStore,
        on_error: Callable[[BaseException], None] | None = None,
        on_done: Callable[[CheckpointRecord], object] | None = None,
    ) -> None:
        self.store = store
        self.on_error = on_error
        self.on_done = on_done
        self.last_record: CheckpointRecord | None = None
        self._buffers: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, state: object, **save_kwargs: Any) -> Future[CheckpointRecord]:
        """Snapshot ``state`` and start committing it; returns once the snapshot is taken, with the future
        of the commit."""
        self.wait()
        snapshot = self.snapshot(state)
        future: Future[CheckpointRecord] = Future()
        future.set_running_or_notify_cancel()
        self._thread = threading.Thread(
            target=self._commit,
            args=(snapshot, save_kwargs, future),
            name="trainguard-async-save",
            daemon=False,
        )
        self._thread.start()
        return future

    def acknowledge(self, error: BaseException) -> None:
        """The caller took ``error`` from the save's future: it is not raised again by the next call."""
        if self._error is error:
            self._error = None

    def wait(self) -> CheckpointRecord | None:
        """Wait for the save in flight; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self.last_record

    def _commit(
        self, snapshot: object, save_kwargs: dict[str, Any], future: Future[CheckpointRecord]
    ) -> None:
        try:
            self.last_record = self.store.save(snapshot, **save_kwargs)
            if self.on_done is not None:
                self.on_done(self.last_record)
        except BaseException as error:  # surfaced by the next submit()/wait(), in the caller's thread
            self._error = error
            try:
                if self.on_error is not None:
                    self.on_error(error)  # first: whoever waits on the future sees its consequences done
            finally:
                future.set_exception(error)
        else:
            future.set_result(self.last_record)

    def snapshot(self, state: object) -> object:
        """A copy of ``state`` whose tensors live in this saver's reusable buffers."""
        skeleton, tensors = flatten(state)
        copies = {key: self._copy(key, value) for key, value in tensors.items()}
        return unflatten(skeleton, copies)

    def _copy(self, key: str, value: Any) -> Any:
        buffer: Any = self._buffers.get(key)
        if isinstance(value, np.ndarray):
            if not (
                isinstance(buffer, np.ndarray) and buffer.shape == value.shape and buffer.dtype == value.dtype
            ):
                buffer = np.empty_like(value, order="C")
            np.copyto(buffer, value)
        else:
            torch = sys.modules["torch"]
            same = (
                isinstance(buffer, torch.Tensor)
                and buffer.shape == value.shape
                and buffer.dtype == value.dtype
            )
            if not same:
                buffer = torch.empty(value.shape, dtype=value.dtype, device="cpu")
            buffer.copy_(value.detach())
        self._buffers[key] = buffer
        return buffer


__all__ = ["AsyncSaver"]
