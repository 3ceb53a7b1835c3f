"""What a Guard holds while it is entered - registry, store, lease, budget account, heartbeat and monitor
thread, saver, signal relay, run files - and the order in which they are opened and closed.

The session knows nothing of the Guard: it reports to it through :class:`GuardHooks` (a stop to request, a
lost lease, the loop's progress for heartbeats). Closing runs every step even if an earlier one fails, so a
failing registry at exit still leaves the signal handlers restored and the run files removed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainguard._os import environment
from trainguard.budget import Plateau
from trainguard.checkpoints import CheckpointStore, Validation, retention, signing_of
from trainguard.config import TrainguardConfig
from trainguard.errors import ConfigError
from trainguard.fingerprint import Fingerprint
from trainguard.guard._account import BudgetAccount
from trainguard.guard._heartbeat import Heartbeat, LoopProgress
from trainguard.guard._monitor import Cadence, Monitor
from trainguard.guard._runfiles import RunFiles
from trainguard.guard._saver import Saver
from trainguard.guard._signals import SignalRelay
from trainguard.guard._stop import Stop, StopReason
from trainguard.names import meta_directory
from trainguard.notify import Notifier
from trainguard.registry import EventKind, Lease, ProcessRole, Registry

log = logging.getLogger("trainguard")


@dataclass(frozen=True)
class GuardHooks:
    """How the session reaches the Guard (from the monitor thread, the saver's thread, signal handlers)."""

    progress: Callable[[], LoopProgress]
    request_stop: Callable[[Stop], None]
    lease_lost: Callable[[str], None]


class Session:
    def __init__(
        self,
        registry: Registry,
        store: CheckpointStore,
        lease: Lease,
        *,
        adopted: bool,
        account: BudgetAccount,
        files: RunFiles,
        registry_url: str = "",
    ) -> None:
        self.registry = registry
        self.store = store
        self.lease = lease
        self.adopted = adopted  # the lease was handed down by `trainguard run`: the launcher releases it
        self.registry_url = registry_url  # as given (the Registry keeps only a redacted copy, for messages)
        self.account = account
        self.files = files
        self.heartbeat: Heartbeat | None = None
        self.saver: Saver | None = None
        self.monitor: Monitor | None = None
        self.signals: SignalRelay | None = None
        self.process_id: int | None = None
        self.notifier: Notifier | None = None
        self.plateau: Plateau | None = None  # max_episodes_without_improvement, fed by Guard.report

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, config: TrainguardConfig, run: str) -> Session:
        """Registry, store, effective limits and the lease: acquired, or adopted from the launcher that
        started this process (no second acquisition, no new token)."""
        launched_for = os.environ.get(environment.RUN_ID)
        if launched_for and launched_for != run:
            raise ConfigError(
                "run", run, f"this process was launched for run {launched_for!r} ({environment.RUN_ID})"
            )
        store_path = config.store_path()
        # Under `trainguard run` the launcher's registry, unless the config names one itself.
        handed_down = os.environ.get(environment.REGISTRY) if launched_for and not config.registry else None
        url = handed_down or config.registry_url()
        registry = Registry.open(url)
        lease: Lease | None = None
        adopted = False
        try:
            store = CheckpointStore(
                store_path,
                run=run,
                registry=registry,
                retention_policy=retention.from_config(config.checkpoints),
                format=config.checkpoints.format,
                validation=Validation(decode=config.monitoring.checkpoint_validation),
                signing=signing_of(config),
            )
            token = os.environ.get(environment.LEASE_TOKEN) if launched_for else None
            if token:
                lease, adopted = registry.adopt(run, int(token)), True
            else:
                lease = registry.acquire(run, ttl=config.monitoring.lease_ttl, reason="guard")
            # Under the lease: a Guard refused the lease (LeaseHeld above) changes nothing of the live run.
            limits = registry.apply_limits(run, config.effective_limits(), lease=lease)
            account = BudgetAccount(
                registry,
                registry.run(run),
                limits,
                lease=lease,
                beat=lease.renewal_interval(config.monitoring.heartbeat_interval),
                warn=lambda *_: None,  # replaced by the heartbeat's, which queues an event too
            )
            return cls(
                registry,
                store,
                lease,
                adopted=adopted,
                account=account,
                files=RunFiles(meta_directory(store.root), run),
                registry_url=url,
            )
        except BaseException:
            if lease is not None and not adopted:
                lease.release()
            registry.close()
            raise

    def start(
        self,
        config: TrainguardConfig,
        features: Fingerprint | None,
        hooks: GuardHooks,
        *,
        install_signal_handlers: bool,
    ) -> None:
        """Charge the first runtime, write the run files, register this process, then start the monitor
        thread and the signal relay - the things that run on their own."""
        account, run = self.account, self.account.run
        notes = config.notifications
        self.notifier = Notifier.from_settings(notes.webhook, notes.events, notes.timeout, source="guard")
        metric = config.checkpoints.best_metric
        self.plateau = Plateau.from_limits(
            account.limits, metric.name if metric else "reward", metric.mode if metric else "max"
        )
        self.heartbeat = Heartbeat(
            self.registry,
            self.lease,
            account,
            self.files,
            self.store.stored_bytes,
            progress=hooks.progress,
            request_stop=hooks.request_stop,
            lease_lost=hooks.lease_lost,
            notifier=self.notifier,
        )
        account.warnings.emit = self.heartbeat.warn
        account.level_reached = self.heartbeat.check_level
        account.charge_runtime()
        if (spent := account.runtime_spent_already()) is not None:
            hooks.request_stop(spent)
        self.files.write_pid()
        self.heartbeat.write_file()
        # Registered with its start time, so the watchdog and `stop` can find (and verify) this process.
        self.process_id = self.registry.register_process(
            run, self.lease.token, ProcessRole.GUARD, self.registry.identity
        )
        self.registry.add_event(
            run,
            EventKind.GUARD_STARTED,
            token=self.lease.token,
            detail={
                "adopted": self.adopted,
                "limits": account.limits,
                "pid": os.getpid(),
                "spent": account.spent(),
            },
        )
        self.saver = Saver(self.store, self.lease, config, features, lease_lost=hooks.lease_lost)
        heartbeat = self.heartbeat
        self.monitor = Monitor(
            Cadence(beat=account.beat, resources=config.monitoring.resource_check_interval),
            beat=heartbeat.beat,
            sample=heartbeat.sample,
            deadline=account.runtime.deadline,
            deadline_reached=lambda: hooks.request_stop(account.runtime_reached()),
        )
        self.monitor.start()
        if install_signal_handlers:
            self.signals = SignalRelay(
                on_first=lambda signum: hooks.request_stop(
                    Stop(StopReason.SIGNAL, f"signal {signum} received")
                )
            )
            self.signals.install()

    # -- closing ----------------------------------------------------------------------------------

    def close(self, stop: Stop | None, *, fenced: bool, steps: int) -> BaseException | None:
        """Tear down in order; every step runs even if an earlier one failed. Returns the error of a
        background save that nobody has seen yet, for the Guard to raise."""
        pending: BaseException | None = None
        if self.signals is not None:
            self.signals.closing = True
        if self.saver is not None:
            try:
                self.saver.wait()
            except BaseException as error:
                pending = error
        run = self.account.run
        steps_in_order: tuple[Callable[[], object], ...] = (
            lambda: self.monitor.stop() if self.monitor else None,
            lambda: self.account.settle(steps),
            lambda: self.heartbeat.flush_events() if self.heartbeat else None,
            lambda: self.registry.add_event(
                run,
                EventKind.GUARD_STOPPED,
                token=self.lease.token,
                reason=str(stop) if stop else "completed",
                detail={
                    "reason": stop.reason.value if stop else "completed",
                    "spent": self.account.spent(),
                    "fenced": fenced,
                },
            ),
            lambda: None if (self.adopted or fenced) else self.lease.release(),
            lambda: self.registry.end_process(self.process_id) if self.process_id is not None else None,
            self.files.remove,
            lambda: self.notifier.close() if self.notifier else None,
            self.store.close,
            self.registry.close,
            lambda: self.signals.restore() if self.signals else None,
        )
        for step in steps_in_order:
            _attempt(step)
        return pending

    def status(self) -> dict[str, Any]:
        heartbeat = self.heartbeat
        return {
            "token": self.lease.token,
            "limits": self.account.limits,
            "spent": self.account.spent(),
            "rss": heartbeat.rss if heartbeat else 0,
        }


def _attempt(step: Callable[[], object]) -> None:
    try:
        step()
    except Exception:
        log.exception("trainguard: shutdown step failed")


__all__ = ["GuardHooks", "Session"]
