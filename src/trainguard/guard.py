"""``trainguard.Guard``: the layer a training loop touches (design section 3.1).

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
from collections import Counter as Histogram
from collections.abc import Callable, Generator, Mapping
from types import TracebackType
from typing import Any, Self

from trainguard import environment
from trainguard import fingerprint as fp
from trainguard._guard_parts import GuardParts
from trainguard._guard_settings import settings_to_overrides
from trainguard._stop import FINAL_CHECKPOINT, Stop, StopReason
from trainguard.checkpoints import LoadedCheckpoint
from trainguard.config import TrainguardConfig, load_config, parse_config
from trainguard.errors import ConfigError, CorruptCheckpoint, FingerprintMismatch, LeaseLost
from trainguard.registry import CheckpointRecord

log = logging.getLogger("trainguard")

ENV_RUN = environment.RUN_ID
ENV_TOKEN = environment.LEASE_TOKEN
ENV_REGISTRY = environment.REGISTRY
ENV_CONFIG = environment.CONFIG
EXIT_FENCED = 3
_NEVER = -1  # step gate meaning "take the slow path on the next tick"


class Guard:
    """Budgets, lease, heartbeats, signals and fenced checkpoints around one training loop."""

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
            raise TypeError(
                "give either a config or keyword settings, not both (use from_config(path, **overrides))"
            )
        self.config = config
        self.run = config.require_run()
        self.install_signal_handlers = install_signal_handlers
        self.clock = clock
        self.stop: Stop | None = None
        self.episode: int | None = None  # the episode in progress (or last started)
        self.steps = 0  # cumulative over the run, like the budget
        self.metrics: dict[str, Any] = {}
        self.actions: Histogram[str] = Histogram()
        self.last_progress: float | None = None
        self.last_checkpoint: CheckpointRecord | None = None
        self.resumed: LoadedCheckpoint | None = None
        self.fingerprint = fp.compute(config.features, base=config.source.parent if config.source else None)
        self.parts: GuardParts | None = None
        self._step_gate = _NEVER
        self._in_episode_loop = False
        self._fenced: str | None = None
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
        path = path or os.environ.get(ENV_CONFIG)
        if not path:
            raise ConfigError(
                "config", None, f"give a config path (or run under `trainguard run`, which sets {ENV_CONFIG})"
            )
        config = load_config(os.fspath(path), overrides=settings_to_overrides(overrides))
        return cls(config, install_signal_handlers=install_signal_handlers)

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.parts = GuardParts.open(self)
        self._recompute_gate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if exc is not None and self.stop is None and not isinstance(exc, SystemExit | KeyboardInterrupt):
            self.request_stop(StopReason.ERROR, f"{type(exc).__name__}: {exc}")
        elif exc is not None and self.stop is None:
            self.request_stop(StopReason.SIGNAL, f"{type(exc).__name__}")
        parts, self.parts = self.parts, None
        if parts is None:
            return
        pending = parts.close(self, raising=exc is None)
        if pending is not None and exc is None:
            raise pending
        if self._fenced and os.environ.get(ENV_RUN) == self.run and not isinstance(exc, SystemExit):
            raise SystemExit(EXIT_FENCED)

    # -- stop requests ----------------------------------------------------------------------------

    @property
    def stop_reason(self) -> StopReason | None:
        return self.stop.reason if self.stop else None

    @property
    def fenced(self) -> bool:
        return self._fenced is not None

    def request_stop(self, reason: StopReason, detail: str) -> None:
        """Ask the loop to end (first reason wins). Safe from any thread and from signal handlers."""
        with self._lock:
            if self.stop is not None:
                return
            self.stop = Stop(reason, detail)
        self._step_gate = _NEVER
        if reason is not StopReason.SIGNAL:  # the signal relay says it already
            log.warning("trainguard: run %r stopping: %s", self.run, self.stop)
        if self.parts is not None:
            self.parts.record_stop(self.stop)

    def fence(self, reason: str) -> None:
        """The lease is gone: nothing this process writes can be committed; end the loop at the next tick."""
        if self._fenced is None:
            self._fenced = reason
            log.error("trainguard: lease of run %r lost (%s): stopping", self.run, reason)
        self.request_stop(StopReason.LEASE_LOST, reason)

    def _must_stop_now(self) -> bool:
        stop = self.stop
        return stop is not None and (not stop.graceful or not self._in_episode_loop)

    # -- the loop API -----------------------------------------------------------------------------

    def episodes(self, start: int | None = None) -> Generator[int, None, None]:
        """Episode numbers from ``start`` (default: after the resumed checkpoint, else after the episodes
        the run has spent) until the budget, a lost lease or a signal ends the loop."""
        parts = self._require_parts()
        episode = start if start is not None else self._default_start(parts)
        self._in_episode_loop = True
        try:
            while True:
                if self.stop is not None:
                    return
                if not parts.begin_episode(self, episode):
                    return
                self.episode = episode
                try:
                    yield episode
                finally:
                    parts.end_episode(self)  # counted when the body is done - or abandoned (break, error)
                episode += 1
        finally:
            self._in_episode_loop = False

    def complete_episode(self) -> bool:
        """Count one finished episode, for loops the Guard does not drive (an SB3 callback, vectorised
        envs). False when no further episode may start: the budget is spent (that stop lets
        ``should_checkpoint`` ask for a final checkpoint) or another stop was requested."""
        parts = self._require_parts()
        episode = (self.episode if self.episode is not None else self._default_start(parts) - 1) + 1
        if self.stop is not None and not self.stop.graceful:
            return False
        if not parts.begin_episode(self, episode):
            return False
        self.episode = episode
        parts.end_episode(self)
        if not parts.episodes.allows(1):
            self.request_stop(
                StopReason.EPISODES, f"{parts.episodes.spent} of {parts.episodes.limit} episodes spent"
            )
        return self.stop is None

    def tick(self, steps: int = 1) -> bool:
        """Count ``steps``; False when the loop must stop now. Hot path: an add and one comparison."""
        self.steps += steps
        if self.steps >= self._step_gate:
            return self._tick_slow()
        return True

    def _tick_slow(self) -> bool:
        if self._must_stop_now():
            return False
        parts = self._require_parts()
        if not parts.reserve_steps(self):
            return False
        self._recompute_gate()
        return not self._must_stop_now()

    def _recompute_gate(self) -> None:
        parts = self.parts
        if parts is None:
            return
        limit = parts.steps.limit
        self._step_gate = parts.steps.reserved if limit is None else min(parts.steps.reserved, limit)
        # Re-checked after the write: a stop requested by another thread while the gate was computed must
        # not be overwritten by it.
        if self._must_stop_now():
            self._step_gate = _NEVER

    def report(self, *, actions: Mapping[Any, int] | list[Any] | None = None, **metrics: Any) -> None:
        """Record progress: metrics (kept for the next save) and the decisions taken (a histogram)."""
        self.metrics.update(metrics)
        if actions is not None:
            if isinstance(actions, Mapping):
                for action, count in actions.items():
                    self.actions[str(action)] += int(count)
            else:
                self.actions.update(str(a) for a in actions)
        self.last_progress = self.clock()

    def should_checkpoint(self, episode: int | None = None) -> bool:
        """On the config's cadence, and once more before a graceful stop (signal, budget, runtime)."""
        episode = self.episode if episode is None else episode
        if self._fenced or episode is None:
            return False
        every = self.config.checkpoints.every_episodes
        if every and episode % every == 0:
            return True
        if self.stop is not None:
            return self.stop.reason in FINAL_CHECKPOINT
        parts = self.parts
        # An episode still in progress (the episodes() loop asks before it is counted) that is the last one
        # the budget allows; a counted one (complete_episode) has already requested the budget stop above.
        return parts is not None and episode > parts.episodes.spent and not parts.episodes.allows(2)

    def save(
        self, state: object, *, metrics: Mapping[str, Any] | None = None, episode: int | None = None
    ) -> CheckpointRecord | None:
        """Commit ``state`` through the fenced store with this guard's token (async when configured:
        returns None and the record arrives later in ``last_checkpoint``)."""
        parts = self._require_parts()
        if self._fenced:
            raise LeaseLost(self.run, parts.lease.token, self._fenced)
        episode = self.episode if episode is None else episode
        if episode is None:
            raise ConfigError("episode", None, "save() outside guard.episodes() needs episode=N")
        merged = {**self.metrics, **(metrics or {})}
        if self.actions:
            merged["actions"] = dict(self.actions)
        record = parts.save(self, state, episode, merged)
        self.actions.clear()
        if record is not None:
            self.last_checkpoint = record
        return record

    def resume(self) -> LoadedCheckpoint | None:
        """The newest committed, verified checkpoint - refusing (with the differing keys) if the newest one
        was made with other features. Corrupt checkpoints are quarantined and skipped; None for a new run."""
        parts = self._require_parts()
        store = parts.store
        for record in reversed(store.list()):
            manifest = store.manifest(record.name)
            mine = self.fingerprint.digest if self.fingerprint else None
            if manifest.fingerprint != mine:
                theirs = manifest.features or {"(no features recorded)": manifest.fingerprint}
                ours = self.fingerprint.content if self.fingerprint else {"(no features declared)": None}
                raise FingerprintMismatch(record.name, fp.differences(theirs, ours))
            try:
                loaded = store.load(record.name)
            except CorruptCheckpoint as error:
                log.error("trainguard: %s; quarantining it and trying the one before", error)  # noqa: TRY400
                store.quarantine(record.name, reason=f"corrupt: {error.reason}")
                continue
            store.registry.set_resumed_from(self.run, record.name)
            self.resumed = loaded
            return loaded
        return None

    def _default_start(self, parts: GuardParts) -> int:
        if self.resumed is not None:
            return self.resumed.episode + 1
        return parts.episodes.spent + 1

    def _require_parts(self) -> GuardParts:
        if self.parts is None:
            raise RuntimeError("use the Guard as a context manager: `with Guard(...) as guard:`")
        return self.parts

    def status(self) -> dict[str, Any]:
        parts = self.parts
        return {
            "run": self.run,
            "episode": self.episode,
            "steps": self.steps,
            "stop": str(self.stop) if self.stop else None,
            "fenced": self._fenced,
            **(parts.status() if parts else {}),
        }


__all__ = ["ENV_CONFIG", "ENV_REGISTRY", "ENV_RUN", "ENV_TOKEN", "EXIT_FENCED", "Guard", "Stop", "StopReason"]
