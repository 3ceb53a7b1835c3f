"""``trainguard.Guard``: the layer a training loop touches (docs/design.md, "The in-process Guard").

with tg.Guard.from_config("guard.yaml") as guard:
    restored = guard.resume()
    for episode in guard.episodes():
        ...
        guard.report(reward=r, actions=counts)
        if guard.should_checkpoint(episode):
            guard.save({"model": model.state_dict()}, metrics={...})
print(guard.stop_reason)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Mapping
from types import TracebackType
from typing import Any, Self

from trainguard import fingerprint as fp
from trainguard._os import environment
from trainguard.checkpoints import LoadedCheckpoint
from trainguard.config import TrainguardConfig, load_config, parse_config, settings_to_overrides
from trainguard.errors import (
    CorruptCheckpoint,
    ExitCode,
    FingerprintMismatch,
    InvalidArgument,
    LeaseLost,
    StateConflict,
)
from trainguard.guard._saver import SaveResult
from trainguard.guard._session import GuardHooks, Session
from trainguard.guard._state import GuardState
from trainguard.guard._stop import FINAL_CHECKPOINT, Stop, StopReason
from trainguard.registry import CheckpointRecord

log = logging.getLogger("trainguard")

_NEVER = -1  # step gate meaning "take the slow path on the next tick"


class Guard(GuardState):
    """Budgets, lease, heartbeats, signals and fenced checkpoints around one training loop.

    Build it from a config (``Guard.from_config(path, **overrides)``, or ``Guard(config)``) or from keyword
    settings (``Guard(run="r", store="ckpts", max_episodes=50)``); use it as a context manager. Everything it
    exposes is read-only: the loop talks to it through ``episodes``/``complete_episode``, ``tick``,
    ``report``, ``should_checkpoint``, ``save`` and ``request_stop``.
    """

    def __init__(
        self,
        config: TrainguardConfig | None = None,
        *,
        install_signal_handlers: bool = True,
        clock: Callable[[], float] = time.monotonic,
        **settings: Any,
    ) -> None:
        if config is None:
            config, _ = parse_config({}, overrides=settings_to_overrides(settings), strict=True)
        elif settings:
            raise InvalidArgument(
                "settings",
                sorted(settings),
                "give either a config or keyword settings, not both (use from_config(path, **overrides))",
            )
        super().__init__(config, clock)
        self._install_signal_handlers = install_signal_handlers
        self._step_gate = _NEVER
        self._in_episode_loop = False
        self._lock = threading.Lock()

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        install_signal_handlers: bool = True,
        **overrides: Any,
    ) -> Guard:
        """Build from a config file (default: ``$TRAINGUARD_CONFIG``, set by ``trainguard run``); keyword
        overrides (``max_episodes=50``, ``run=...``) win over the file."""
        path = path or os.environ.get(environment.CONFIG)
        if not path:
            raise InvalidArgument(
                "path",
                None,
                f"give a config path (or run under `trainguard run`, which sets {environment.CONFIG})",
            )
        config = load_config(os.fspath(path), overrides=settings_to_overrides(overrides))
        return cls(config, install_signal_handlers=install_signal_handlers)

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        if self._session is not None:
            raise StateConflict("the Guard", "already entered", "a Guard guards one `with` block at a time")
        session = Session.open(self._config, self._run)
        self._session = session
        self._steps = session.account.steps.spent
        hooks = GuardHooks(progress=self._progress, request_stop=self._request, lease_lost=self._fence)
        try:
            session.start(
                self._config,
                self._fingerprint,
                hooks,
                install_signal_handlers=self._install_signal_handlers,
            )
        except BaseException as error:
            self._close(error)
            raise
        self._recompute_gate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if exc is not None and self._stop is None and not isinstance(exc, SystemExit | KeyboardInterrupt):
            self.request_stop(StopReason.ERROR, f"{type(exc).__name__}: {exc}")
        elif exc is not None and self._stop is None:
            self.request_stop(StopReason.SIGNAL, f"{type(exc).__name__}")
        pending = self._close(exc)
        if pending is not None and exc is None:
            raise pending
        if (
            self._fenced
            and os.environ.get(environment.RUN_ID) == self._run
            and not isinstance(exc, SystemExit)
        ):
            raise SystemExit(ExitCode.REFUSED)

    def _close(self, exc: BaseException | None) -> BaseException | None:
        session, self._session = self._session, None
        if session is None:
            return None
        pending = session.close(self._stop, fenced=self.fenced, steps=self._steps)
        if session.saver is not None:
            self._last_checkpoint = session.saver.last_record or self._last_checkpoint
        if session.monitor is not None:
            self._monitor_seconds = session.monitor.busy_seconds
        return pending if exc is None else None

    # -- stop requests ----------------------------------------------------------------------------

    def request_stop(self, reason: StopReason, detail: str) -> None:
        """Ask the loop to end (first reason wins). Safe from any thread and from signal handlers."""
        self._request(Stop(reason, detail))

    def _request(self, stop: Stop) -> None:
        with self._lock:
            if self._stop is not None:
                return
            self._stop = stop
        self._step_gate = _NEVER
        if stop.reason is not StopReason.SIGNAL:  # the signal relay says it already
            log.warning("trainguard: run %r stopping: %s", self._run, stop)
        session = self._session
        if session is not None and session.heartbeat is not None:
            session.heartbeat.record_stop(stop)

    def _take(self, stop: Stop) -> None:
        """A stop the budget account decided: a lost lease (the registry unreachable for longer than the
        lease) fences this process, any other ends the loop."""
        if stop.reason is StopReason.LEASE_LOST:
            self._fence(stop.detail)
        else:
            self._request(stop)

    def _fence(self, reason: str) -> None:
        """The lease is gone: nothing this process writes can be committed; end the loop at the next tick."""
        if self._fenced is None:
            self._fenced = reason
            log.error("trainguard: lease of run %r lost (%s): stopping", self._run, reason)
        self.request_stop(StopReason.LEASE_LOST, reason)

    def _lease_lapsed(self) -> bool:
        """The lease's ttl passed without a renewal: nothing this process writes could commit any more. The
        monitor fences on its beat, but a beat can be blocked on an unreachable registry (a partition drops
        packets; each attempt waits out the connection's timeout), so the training thread checks too."""
        session = self._session
        if session is None or session.lease.held_locally or self._fenced is not None:
            return False
        self._fence(f"not renewed within its ttl of {session.lease.ttl:g}s (registry unreachable)")
        return True

    def _must_stop_now(self) -> bool:
        stop = self._stop
        return stop is not None and (not stop.graceful or not self._in_episode_loop)

    # -- the loop API -----------------------------------------------------------------------------

    def episodes(self, start: int | None = None) -> Generator[int, None, None]:
        """Episode numbers from ``start`` (default: after the resumed checkpoint, else after the episodes
        the run has spent) until the budget, a lost lease or a signal ends the loop."""
        account = self._require_session().account
        episode = start if start is not None else self._default_start()
        self._in_episode_loop = True
        try:
            while True:
                if self._stop is not None or self._lease_lapsed():
                    return
                if (stop := account.begin_episode(episode)) is not None:
                    self._take(stop)
                    return
                self._episode = episode
                try:
                    yield episode
                finally:
                    # Counted when the body is done - or abandoned (break, error).
                    account.end_episode()
                    self._last_progress = self._clock()
                episode += 1
        finally:
            self._in_episode_loop = False

    def complete_episode(self) -> bool:
        """Count one finished episode, for loops the Guard does not drive (an SB3 callback, vectorised
        envs). False when no further episode may start: the budget is spent (that stop lets
        ``should_checkpoint`` ask for a final checkpoint) or another stop was requested."""
        account = self._require_session().account
        episode = (self._episode if self._episode is not None else self._default_start() - 1) + 1
        if self._lease_lapsed() or (self._stop is not None and not self._stop.graceful):
            return False
        if (stop := account.begin_episode(episode)) is not None:
            self._take(stop)
            return False
        self._episode = episode
        account.end_episode()
        self._last_progress = self._clock()
        if (stop := account.episodes_exhausted()) is not None:
            self._request(stop)
        return self._stop is None

    def tick(self, steps: int = 1) -> bool:
        """Count ``steps``; False when the loop must stop now. Hot path: an add and one comparison."""
        self._steps += steps
        if self._steps >= self._step_gate:
            return self._tick_slow()
        return True

    def _tick_slow(self) -> bool:
        if self._lease_lapsed() or self._must_stop_now():
            return False
        account = self._require_session().account
        if (stop := account.reserve_steps(self._steps)) is not None:
            self._take(stop)
            return False
        self._recompute_gate()
        return not self._must_stop_now()

    def _recompute_gate(self) -> None:
        session = self._session
        if session is None:
            return
        self._step_gate = session.account.step_gate()
        # Re-checked after the write: a stop requested by another thread while the gate was computed must
        # not be overwritten by it.
        if self._must_stop_now():
            self._step_gate = _NEVER

    def report(self, *, actions: Mapping[Any, int] | list[Any] | None = None, **metrics: Any) -> None:
        """Record progress: metrics (kept for the next save) and the decisions taken (a histogram). The
        metric that ``max_episodes_without_improvement`` watches (checkpoints.best_metric, else "reward")
        is judged here, once per call, against the current episode."""
        self._metrics.update(metrics)
        session = self._session
        plateau = session.plateau if session is not None else None
        if plateau is not None and self._episode is not None and plateau.metric in metrics:
            value = metrics[plateau.metric]
            if isinstance(value, int | float) and (stalled := plateau.observe(self._episode, float(value))):
                self._request(Stop(StopReason.NO_IMPROVEMENT, str(stalled)))
        if actions is not None:
            if isinstance(actions, Mapping):
                for action, count in actions.items():
                    self._actions[str(action)] += int(count)
            else:
                self._actions.update(str(a) for a in actions)
        self._last_progress = self._clock()

    def should_checkpoint(self, episode: int | None = None) -> bool:
        """On the config's cadence, and once more before a graceful stop (signal, budget, runtime)."""
        episode = self._episode if episode is None else episode
        if self._fenced or episode is None:
            return False
        every = self._config.checkpoints.every_episodes
        if every and episode % every == 0:
            return True
        if self._stop is not None:
            return self._stop.reason in FINAL_CHECKPOINT
        session = self._session
        if session is None:
            return False
        counter = session.account.episodes
        # An episode still in progress (the episodes() loop asks before it is counted) that is the last one
        # the budget allows; a counted one (complete_episode) has already requested the budget stop above.
        return episode > counter.spent and not counter.allows(2)

    def save(
        self,
        state: object,
        *,
        metrics: Mapping[str, Any] | None = None,
        episode: int | None = None,
        background: bool | None = None,
        name: str | None = None,
    ) -> SaveResult:
        """Commit ``state`` through the fenced store with this guard's token and feature fingerprint.

        Returns a :class:`SaveResult` in either mode: in the background (``background=True``, or by default
        ``checkpoints.async``) the tensors are copied, the commit goes on on another thread, and
        ``result()`` (or :meth:`wait_for_saves`) waits for it. ``name``: the checkpoint's (default
        ``ep{episode}-t{token}``; names are never reused). Raises ``LeaseLost`` once the lease is gone,
        and the error of an earlier background save that nobody has seen yet.
        """
        session = self._require_session()
        if self._fenced:
            raise LeaseLost(self._run, session.lease.token, self._fenced)
        episode = self._episode if episode is None else episode
        if episode is None:
            raise InvalidArgument("episode", None, "save() outside guard.episodes() needs episode=N")
        merged = {**self._metrics, **(metrics or {})}
        if self._actions:
            merged["actions"] = dict(self._actions)
        assert session.saver is not None  # started with the session
        result = session.saver.save(
            state, episode, merged, progressed=self._progressed, background=background, name=name
        )
        self._actions.clear()
        return result

    def _progressed(self) -> None:
        self._last_progress = self._clock()

    def wait_for_saves(self) -> CheckpointRecord | None:
        """Wait until no save is in flight; raise the error of one that failed (once). The newest record."""
        saver = self._require_session().saver
        return saver.wait() if saver is not None else None

    def resume(self) -> LoadedCheckpoint | None:
        """The newest committed, verified checkpoint - refusing (with the differing keys) if the newest one
        was made with other features. Corrupt checkpoints are quarantined and skipped; None for a new run."""
        store = self._require_session().store
        mine = self._fingerprint
        for record in reversed(store.checkpoints()):
            manifest = store.manifest(record.name)
            if manifest.fingerprint != (mine.digest if mine else None):
                theirs = manifest.features or {"(no features recorded)": manifest.fingerprint}
                ours = mine.content if mine else {"(no features declared)": None}
                raise FingerprintMismatch(record.name, fp.differences(theirs, ours))
            try:
                loaded = store.load(record.name)
            except CorruptCheckpoint as error:
                log.error("trainguard: %s; quarantining it and trying the one before", error)  # noqa: TRY400
                store.quarantine(record.name, reason=f"corrupt: {error.reason}")
                continue
            store.registry.set_resumed_from(self._run, record.name)
            self._resumed = loaded
            return loaded
        return None

    @property
    def next_episode(self) -> int:
        """Where a loop the Guard does not drive starts: after the resumed checkpoint, else after the
        episodes the run has spent (cumulative across restarts)."""
        return self._default_start()

    def _default_start(self) -> int:
        if self._resumed is not None:
            return self._resumed.episode + 1
        return self._require_session().account.episodes.spent + 1


__all__ = ["Guard"]
