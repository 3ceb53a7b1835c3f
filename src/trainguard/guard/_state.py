"""What a Guard knows - the run, its config, the loop's progress, the session it holds while entered - kept
in private fields and shown read-only. The loop changes it only through the Guard's methods."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from trainguard import fingerprint as fp
from trainguard.budget import EffectiveLimits, Remaining
from trainguard.checkpoints import CheckpointStore, LoadedCheckpoint
from trainguard.config import TrainguardConfig
from trainguard.errors import StateConflict
from trainguard.guard._heartbeat import LoopProgress
from trainguard.guard._session import Session
from trainguard.guard._stop import Stop, StopReason
from trainguard.registry import CheckpointRecord, Lease, Registry


class GuardState:
    def __init__(self, config: TrainguardConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._run = config.require_run()
        self._clock = clock
        self._fingerprint = fp.compute(config.features, base=config.source.parent if config.source else None)
        self._stop: Stop | None = None
        self._episode: int | None = None  # the episode in progress (or last started)
        self._steps = 0  # cumulative over the run, like the budget
        self._metrics: dict[str, Any] = {}
        self._actions: collections.Counter[str] = collections.Counter()
        self._last_progress: float | None = None
        self._last_checkpoint: CheckpointRecord | None = None
        self._resumed: LoadedCheckpoint | None = None
        self._session: Session | None = None  # while entered
        self._monitor_seconds = 0.0
        self._fenced: str | None = None  # why the lease was lost

    def _require_session(self) -> Session:
        if self._session is None:
            raise StateConflict(
                "the Guard", "not entered", "use it as a context manager: `with Guard(...) as guard:`"
            )
        return self._session

    # -- what the guard knows (read-only) ---------------------------------------------------------

    @property
    def config(self) -> TrainguardConfig:
        return self._config

    @property
    def run(self) -> str:
        return self._run

    @property
    def fingerprint(self) -> fp.Fingerprint | None:
        """The feature fingerprint every checkpoint of this guard records (None: no features declared)."""
        return self._fingerprint

    @property
    def registry(self) -> Registry:
        return self._require_session().registry

    @property
    def registry_url(self) -> str:
        """The registry's URL as configured (credentials included): for the job's other ranks, which open
        the same registry to read (``trainguard.distributed``)."""
        return self._require_session().registry_url

    @property
    def store(self) -> CheckpointStore:
        return self._require_session().store

    @property
    def lease(self) -> Lease:
        return self._require_session().lease

    @property
    def limits(self) -> EffectiveLimits:
        """The limits the run was given (config, tightened by restarts, raised by extensions - also while
        running, at the next heartbeat after ``trainguard budget extend``)."""
        return self._require_session().account.effective()

    @property
    def remaining(self) -> Remaining:
        """What is left of each budget now (None: no limit)."""
        session = self._require_session()
        heartbeat = session.heartbeat
        return session.account.remaining(
            steps=self._steps, rss=heartbeat.rss if heartbeat else 0, disk=heartbeat.disk if heartbeat else 0
        )

    @property
    def stop(self) -> Stop | None:
        """Why the loop ends (the first reason requested), or None while it may go on."""
        return self._stop

    @property
    def stop_reason(self) -> StopReason | None:
        return self._stop.reason if self._stop else None

    @property
    def fenced(self) -> bool:
        """The lease is lost: nothing this process writes can be committed."""
        return self._fenced is not None

    @property
    def episode(self) -> int | None:
        """The episode in progress (or the last one started)."""
        return self._episode

    @property
    def steps(self) -> int:
        """Steps ticked, cumulative over the run like the budget."""
        return self._steps

    @property
    def metrics(self) -> dict[str, Any]:
        """The metrics reported so far (the next save records them)."""
        return dict(self._metrics)

    @property
    def actions(self) -> dict[str, int]:
        """The decisions reported since the last save (the next save records them)."""
        return dict(self._actions)

    @property
    def last_progress(self) -> float | None:
        """When (on the guard's clock) the loop last showed progress: an episode, a report, a save."""
        return self._last_progress

    @property
    def last_checkpoint(self) -> CheckpointRecord | None:
        """The newest checkpoint this guard committed (an asynchronous save's, once it is committed)."""
        saver = self._session.saver if self._session is not None else None
        return (saver.last_record if saver else None) or self._last_checkpoint

    @property
    def resumed(self) -> LoadedCheckpoint | None:
        return self._resumed

    @property
    def monitor_seconds(self) -> float:
        """Wall time the monitor thread spent in heartbeats and samples (its cost, off the loop's thread)."""
        session = self._session
        return session.monitor.busy_seconds if session and session.monitor else self._monitor_seconds

    def status(self) -> dict[str, Any]:
        session = self._session
        return {
            "run": self._run,
            "episode": self._episode,
            "steps": self._steps,
            "stop": str(self._stop) if self._stop else None,
            "fenced": self._fenced,
            **(session.status() if session else {}),
        }

    def _progress(self) -> LoopProgress:
        session = self._session
        last = self._last_progress
        return LoopProgress(
            episode=self._episode,
            steps=self._steps,
            stop=self._stop,
            last_progress_age=None if last is None else self._clock() - last,
            saving=bool(session and session.saver and session.saver.busy),
            fenced=self.fenced,
        )


__all__ = ["GuardState"]
