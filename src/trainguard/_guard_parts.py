"""What a Guard holds while it is entered - registry, store, lease, budget counters, monitor thread, signal
relay, run files - and how they are opened, consulted and closed in order."""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainguard._guard_settings import retention_policy
from trainguard._monitor import Cadence, Monitor, tree_bytes, tree_rss
from trainguard._runfiles import RunFiles
from trainguard._signals import SignalRelay
from trainguard._stop import Stop, StopReason
from trainguard.budget import Counter, Runtime, Warnings, warn_log
from trainguard.checkpoints import CheckpointStore
from trainguard.checkpoints.async_writer import AsyncSaver
from trainguard.errors import ConfigError, LeaseLost, RegistryError
from trainguard.registry import CheckpointRecord, Lease, Registry, RunRecord, default_registry_url

if TYPE_CHECKING:
    from trainguard.guard import Guard

log = logging.getLogger("trainguard")


@dataclass
class GuardParts:
    registry: Registry
    store: CheckpointStore
    lease: Lease
    adopted: bool
    episodes: Counter
    steps: Counter
    runtime: Runtime
    warnings: Warnings
    files: RunFiles
    cadence: Cadence
    limits: dict[str, Any]
    saver: AsyncSaver | None = None
    monitor: Monitor | None = None
    signals: SignalRelay | None = None
    rss: int = 0
    disk: int = 0
    process_id: int | None = None
    saving: bool = False  # a synchronous save is in progress (the watchdog gives stalls extra grace)
    pending_events: collections.deque[tuple[str, dict[str, Any]]] = field(default_factory=collections.deque)

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, guard: Guard) -> GuardParts:
        from trainguard.guard import ENV_REGISTRY, ENV_RUN, ENV_TOKEN

        config, run = guard.config, guard.run
        launched_for = os.environ.get(ENV_RUN)
        if launched_for and launched_for != run:
            raise ConfigError("run", run, f"this process was launched for run {launched_for!r} ({ENV_RUN})")
        store_path = config.store_path()
        url = config.registry or (os.environ.get(ENV_REGISTRY) if launched_for else None)
        registry = Registry.open(url or default_registry_url(store_path))
        lease: Lease | None = None
        adopted = False
        try:
            store = CheckpointStore(
                store_path,
                run=run,
                registry=registry,
                retention_policy=retention_policy(config),
                format=config.checkpoints.format,
                validate=config.monitoring.checkpoint_validation,
            )
            limits = registry.apply_limits(run, config.effective_limits())
            token = os.environ.get(ENV_TOKEN) if launched_for else None
            if token:
                lease, adopted = registry.adopt(run, int(token)), True
            else:
                lease = registry.acquire(run, ttl=config.monitoring.lease_ttl, reason="guard")
            info = registry.run_info(run)
            assert info is not None
            guard.steps = info.steps_spent
            parts = cls(
                registry=registry,
                store=store,
                lease=lease,
                adopted=adopted,
                episodes=Counter(
                    "episodes",
                    limits.get("max_episodes"),
                    info.episodes_spent,
                    reserve=lambda n: registry.charge(run, episodes=n),
                ),
                steps=Counter(
                    "steps",
                    limits.get("max_steps"),
                    info.steps_spent,
                    reserve=lambda n: registry.charge(run, steps=n),
                ),
                runtime=Runtime(limits.get("max_runtime"), info.runtime_spent, clock=guard.clock),
                warnings=Warnings(float(limits.get("warn_at", 0.9)), emit=lambda *a: None),
                files=RunFiles(store.root / ".trainguard", run),
                cadence=Cadence(
                    beat=min(config.monitoring.heartbeat_interval, lease.ttl / 3),
                    resources=config.monitoring.resource_check_interval,
                ),
                limits=limits,
            )
            parts.warnings.emit = parts._warn
            parts._start(guard)
        except BaseException:
            if lease is not None and not adopted:
                lease.release()
            registry.close()
            raise
        return parts

    def _start(self, guard: Guard) -> None:
        self.registry.charge(guard.run, runtime=self._runtime_due())
        if self.runtime.limit is not None and self.runtime.spent >= self.runtime.limit:
            guard.request_stop(StopReason.RUNTIME, f"runtime budget of {self.runtime.limit:g}s already spent")
        self.files.write_pid()
        self._write_heartbeat_file(guard)
        # Registered with its start time, so the watchdog and `stop` can find (and verify) this process.
        self.process_id = self.registry.register_process(
            guard.run, self.lease.token, "guard", self.registry.identity
        )
        self.registry.add_event(
            guard.run,
            "guard_started",
            token=self.lease.token,
            detail={
                "adopted": self.adopted,
                "limits": self.limits,
                "pid": os.getpid(),
                "spent": self.spent(),
            },
        )
        if guard.config.checkpoints.async_:
            self.saver = AsyncSaver(
                self.store,
                on_error=lambda e: self._background_error(guard, e),
                on_done=lambda record: self._auto_promote(guard, record),
            )
        self.monitor = Monitor(
            self.cadence,
            beat=lambda: self.beat(guard),
            sample=lambda: self.sample(guard),
            deadline=self.runtime.deadline,
            deadline_reached=lambda: guard.request_stop(
                StopReason.RUNTIME, f"runtime budget of {self.runtime.limit:g}s reached"
            ),
        )
        self.monitor.start()
        if guard.install_signal_handlers:
            self.signals = SignalRelay(
                on_first=lambda signum: guard.request_stop(StopReason.SIGNAL, f"signal {signum} received")
            )
            self.signals.install()

    # -- budget -----------------------------------------------------------------------------------

    def begin_episode(self, guard: Guard, episode: int) -> bool:
        limit = self.episodes.limit
        if not self.episodes.allows(1):
            guard.request_stop(StopReason.EPISODES, f"{self.episodes.spent} of {limit} episodes spent")
            return False
        if limit is not None and episode > limit:
            guard.request_stop(StopReason.EPISODES, f"episode {episode} is beyond the budget of {limit}")
            return False
        self.episodes.ensure_reserved(1)
        self.warnings.check("episodes", self.episodes.spent + 1, limit)
        return True

    def end_episode(self, guard: Guard) -> None:
        self.episodes.spent += 1
        guard.last_progress = guard.clock()

    def reserve_steps(self, guard: Guard) -> bool:
        self.steps.spent = guard.steps
        limit = self.steps.limit
        if limit is not None and guard.steps >= limit:
            guard.request_stop(StopReason.STEPS, f"{guard.steps} of {limit} steps spent")
            return False
        self.steps.ensure_reserved(1)
        self.warnings.check("steps", guard.steps, limit)
        return True

    def _runtime_due(self) -> float:
        due = self.runtime.due_charge(prepay=self.cadence.beat * 2)
        self.runtime.charged += due
        return due

    def spent(self) -> dict[str, Any]:
        return {
            "episodes": self.episodes.spent,
            "steps": self.steps.spent,
            "runtime": round(self.runtime.spent, 3),
        }

    def _warn(self, name: str, spent: float, limit: float) -> None:
        warn_log(name, spent, limit)
        self.pending_events.append(("budget_warning", {"budget": name, "spent": spent, "limit": limit}))

    # -- background ------------------------------------------------------------------------------

    def record_stop(self, stop: Stop) -> None:
        # Called from signal handlers and other threads: never touch the database here (the main thread
        # may be inside a transaction); the monitor or close() writes the event.
        kind = (
            "budget_exhausted"
            if stop.reason in (StopReason.EPISODES, StopReason.STEPS, StopReason.RUNTIME)
            else "guard_stop_requested"
        )
        self.pending_events.append((kind, {"reason": stop.reason.value, "detail": stop.detail}))

    def _flush_events(self, run: str) -> None:
        while self.pending_events:
            kind, detail = self.pending_events.popleft()
            self.registry.add_event(
                run, kind, token=self.lease.token, reason=detail.get("detail"), detail=detail
            )

    def beat(self, guard: Guard) -> None:
        if not guard.fenced:
            try:
                self.lease.renew()
            except LeaseLost as lost:
                guard.fence(lost.reason)
            except RegistryError as error:
                log.warning("trainguard: lease renewal failed: %s", error)
                if not self.lease.held_locally:
                    guard.fence(f"registry unreachable for longer than the lease ttl ({error.reason})")
        # The charge returns the run's row: its limits pick up `trainguard budget extend` without a re-read.
        self._refresh_limits(self.registry.charge(guard.run, runtime=self._runtime_due()))
        self.warnings.check("runtime", self.runtime.spent, self.runtime.limit)
        self.registry.record_heartbeat(guard.run, self.lease.token, self.heartbeat(guard))
        self._write_heartbeat_file(guard)
        self._flush_events(guard.run)

    def _refresh_limits(self, info: RunRecord) -> None:
        """Pick up `trainguard budget extend` while running."""
        if info.limits == self.limits:
            return
        self.limits = info.limits
        self.episodes.limit = info.limits.get("max_episodes")
        self.steps.limit = info.limits.get("max_steps")
        self.runtime.limit = info.limits.get("max_runtime")

    def sample(self, guard: Guard) -> None:
        self.rss = tree_rss()
        if (limit := self.limits.get("max_memory")) and self.rss > limit:
            guard.request_stop(
                StopReason.MEMORY, f"process tree RSS {self.rss} bytes is over max_memory {limit}"
            )
        if limit := self.limits.get("max_disk"):
            self.disk = tree_bytes(self.store.root)
            if self.disk > limit:
                guard.request_stop(
                    StopReason.DISK, f"{self.disk} bytes under the store is over max_disk {limit}"
                )

    def heartbeat(self, guard: Guard) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "episode": guard.episode,
            "step": guard.steps,
            "rss": self.rss,
            "disk": self.disk,
            "spent": self.spent(),
            "stop": str(guard.stop) if guard.stop else None,
            "last_progress_age": None if guard.last_progress is None else guard.clock() - guard.last_progress,
            "saving": self.saving or bool(self.saver and self.saver.in_flight),
        }

    def _write_heartbeat_file(self, guard: Guard) -> None:
        self.files.write_heartbeat(
            {
                "run": guard.run,
                "last_heartbeat": time.time(),
                "runtime_hours": self.runtime.spent / 3600,
                **self.heartbeat(guard),
            }
        )

    def _background_error(self, guard: Guard, error: BaseException) -> None:
        if isinstance(error, LeaseLost):
            guard.fence(error.reason)

    # -- saving -----------------------------------------------------------------------------------

    def save(
        self, guard: Guard, state: object, episode: int, metrics: dict[str, Any]
    ) -> CheckpointRecord | None:
        print_ = guard.fingerprint
        kwargs: dict[str, Any] = {
            "episode": episode,
            "lease": self.lease,
            "metrics": metrics,
            "fingerprint": print_.digest if print_ else None,
            "features": print_.content if print_ else None,
        }
        try:
            self.saving = True
            if self.saver is not None:
                self.saver.submit(state, **kwargs)  # waits for (and raises the error of) the previous one
                guard.last_checkpoint = self.saver.last_record or guard.last_checkpoint
                record = None
            else:
                record = self.store.save(state, **kwargs)
            # A save is progress. Without this, the first heartbeat after a long save reports the whole save
            # as time without progress, no longer doubled ("saving" is over), and the watchdog kills a healthy
            # process between the save and the end of its episode. Set before "saving" is cleared, so no
            # heartbeat can see neither.
            guard.last_progress = guard.clock()
        except LeaseLost as lost:
            guard.fence(lost.reason)
            raise
        finally:
            self.saving = False
        if record is not None:  # an asynchronous save's record is not known yet: promotion waits for it
            self._auto_promote(guard, record)
        return record

    def _auto_promote(self, guard: Guard, record: CheckpointRecord) -> None:
        """With ``gates.auto_promote``: move the live pointer to this checkpoint if it passes every gate."""
        if not guard.config.gates.auto_promote:
            return
        from trainguard.health.promotion import Promoter

        promoter = Promoter(
            self.store,
            guard.config.gates,
            best_metric=guard.config.checkpoints.best_metric,
            live_features=guard.fingerprint,
        )
        assessment = promoter.assess(record)
        if assessment.passed:
            promoter.move_live(
                assessment,
                reason=f"passed every gate after the save of episode {record.episode}",
                kind="auto-promote",
            )
        else:
            failed = "; ".join(f"{v.gate}: {v.reason}" for v in assessment.verdicts if not v.passed)
            log.info("trainguard: %s not promoted: %s", record.name, failed)

    # -- closing ----------------------------------------------------------------------------------

    def close(self, guard: Guard, *, raising: bool) -> BaseException | None:
        """Tear down in order; every step runs even if an earlier one failed. Returns an error from the
        background saver for the caller to raise (only when no other exception is propagating)."""
        pending: BaseException | None = None
        if self.signals is not None:
            self.signals.closing = True
        if self.saver is not None:
            try:
                guard.last_checkpoint = self.saver.wait() or guard.last_checkpoint
            except BaseException as error:
                pending = error
        steps: tuple[Callable[[], object], ...] = (
            lambda: self.monitor.stop() if self.monitor else None,
            lambda: self._settle(guard),
            lambda: self._flush_events(guard.run),
            lambda: self.registry.add_event(
                guard.run,
                "guard_stopped",
                token=self.lease.token,
                reason=str(guard.stop) if guard.stop else "completed",
                detail={
                    "reason": guard.stop_reason.value if guard.stop_reason else "completed",
                    "spent": self.spent(),
                    "fenced": guard.fenced,
                },
            ),
            lambda: None if (self.adopted or guard.fenced) else self.lease.release(),
            lambda: self.registry.end_process(self.process_id) if self.process_id is not None else None,
            self.files.remove,
            self.store.close,
            self.registry.close,
            lambda: self.signals.restore() if self.signals else None,
        )
        for step in steps:
            _attempt(step)
        return pending if raising else None

    def _settle(self, guard: Guard) -> None:
        """Refund what was reserved but not used, and charge the runtime actually spent."""
        self.steps.spent = guard.steps
        self.registry.charge(
            guard.run,
            episodes=-self.episodes.unused(),
            steps=-max(0, self.steps.unused()),
            runtime=self.runtime.final_charge(),
        )

    def status(self) -> dict[str, Any]:
        return {"token": self.lease.token, "limits": self.limits, "spent": self.spent(), "rss": self.rss}


def _attempt(step: Callable[[], object]) -> None:
    try:
        step()
    except Exception:
        log.exception("trainguard: shutdown step failed")


__all__ = ["GuardParts"]
