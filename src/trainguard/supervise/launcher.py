"""``trainguard run -- CMD``: start a training command so that it cannot outlive its budget or its launcher.

The launcher holds the run's lease and hands it to the child (a Guard inside adopts it). It is a child
subreaper, so descendants that detach come back to it instead of init; the child runs in its own session
with a parent-death signal, so it dies with the launcher; every descendant inherits the run marker, so a
watchdog sweep finds whatever escapes anyway. The launcher enforces runtime and memory itself, and for an
unmodified legacy script it keeps the lease alive and counts episodes from the checkpoint files it writes.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import yaml

from trainguard._os import environment
from trainguard._os.files import write_atomically
from trainguard._os.identity import ProcessIdentity
from trainguard.budget import Runtime, exhausted
from trainguard.checkpoints import CheckpointStore, signing_of
from trainguard.config import TrainguardConfig
from trainguard.errors import BudgetExhausted, InvalidArgument, RegistryError
from trainguard.guard import Stop, StopReason
from trainguard.names import count_pattern, meta_directory
from trainguard.registry import EventKind, Lease, ProcessRole, Registry
from trainguard.supervise import _linux as linux
from trainguard.supervise._child_rules import ChildRules
from trainguard.supervise._containment import Containment
from trainguard.supervise._legacy import FileAccounting, FileWatch, LegacyProgress
from trainguard.supervise._outcome import LaunchResult, outcome
from trainguard.supervise._procs import marked_processes
from trainguard.supervise._progress_line import ProgressLine
from trainguard.supervise._reaping import reap_children, signal_group, wait_reaped
from trainguard.supervise.ladder import LadderResult, Target, run_ladder

log = logging.getLogger("trainguard")
_POLL = 0.05
_WATCH_EVERY = 0.2


@dataclass
class LaunchOptions:
    command: list[str]
    grace: float
    watch_pattern: str | None = None
    watch_dir: Path | None = None  # required with watch_pattern: the trainer's own checkpoint folder
    count: str | None = None  # what the number in a watched name counts: episodes|steps (default: its group)
    # What a stop sends first: SIGINT reaches a trainer's `except KeyboardInterrupt` (its final save).
    stop_signal: int = signal.SIGTERM
    takeover: bool = False  # revoke a live holder's lease instead of refusing (LeaseHeld)
    rlimits: dict[int, int] = field(default_factory=dict)
    progress: bool | None = None  # live status line; None: when stderr is a terminal


class Launcher:
    def __init__(self, config: TrainguardConfig, options: LaunchOptions) -> None:
        self.config = config
        self.options = options
        self.run = config.require_run()
        watched = options.watch_pattern
        self.pattern = count_pattern("watch_pattern", watched, options.count) if watched else None
        if self.pattern is not None and options.watch_dir is None:
            # Defaulting to the store would watch trainguard's own folder and count nothing, silently.
            raise InvalidArgument("watch_dir", None, "give the folder the trainer writes its checkpoints to")
        self.stop: Stop | None = None
        self.rules = ChildRules(self.run, config)  # runtime, memory, CPU, warning levels; the webhook
        self.progress = LegacyProgress(beat_every=0.0)
        self._line = ProgressLine(self.run, enabled=options.progress)
        self._signals: list[int] = []

    # -- start ------------------------------------------------------------------------------------

    def launch(self) -> LaunchResult:
        linux.require_linux("trainguard run")
        store_path = self.config.store_path()
        if isinstance(store_path, Path) and store_path.exists() and not store_path.is_dir():
            raise InvalidArgument("store", str(store_path), "is not a directory")
        url = self.config.registry_url()
        registry = Registry.open(url)
        try:
            # Creates and recovers it (and checks the config's signing keys before anything starts).
            signing = signing_of(self.config)
            with CheckpointStore(store_path, run=self.run, registry=registry, signing=signing) as created:
                local = created.root  # run files: the store's directory, or an object store's workdir
            ttl, takeover = self.config.monitoring.lease_ttl, self.options.takeover
            lease = registry.acquire(self.run, ttl=ttl, takeover=takeover, reason="trainguard run")
            try:
                # Under the lease: a launcher refused the lease must not rewrite the live run's settings.
                given = self.config.effective_limits()
                if self.options.watch_dir is not None:
                    # Recorded so the watchdog also names foreign writers of the trainer's own folder.
                    given["watch_dir"] = str(self.options.watch_dir.resolve())
                self.settings = registry.apply_limits(self.run, given, lease=lease, source="trainguard run")
                self.rules.limits(self.settings)
                files = self._account_existing(registry)
                if (spent := exhausted(registry.run(self.run))) is not None:
                    # Refused before the child runs: a restart must not buy the trainer more budget.
                    raise BudgetExhausted(self.run, spent.budget.value, spent.spent, spent.limit)
                return self._supervise(registry, lease, local, url, files)
            finally:
                if lease.lost_reason is None:
                    lease.release()
        finally:
            registry.close()
            self.rules.close()  # what the webhook was told is posted before the process exits

    def _account_existing(self, registry: Registry) -> FileAccounting | None:
        if self.pattern is None or self.options.watch_dir is None:
            return None
        files = FileAccounting(registry, self.run, FileWatch(self.options.watch_dir, self.pattern))
        _say(files.account_existing())
        return files

    def _effective_config_file(self, store_path: Path) -> Path:
        """The child's Guard reads exactly what the launcher enforces (file plus command-line overrides)."""
        # Not the failsafes (checked here): their defaults would ask the child for limits the file never set.
        body = self.config.model_dump(mode="json", by_alias=True, exclude={"source", "failsafes"})
        body["store"] = str(store_path)
        if self.config.source is not None:
            base = self.config.source.parent
            body["features"] = [
                f if isinstance(f, dict) or Path(f).is_absolute() else str(base / f)
                for f in self.config.features
            ]
        path = meta_directory(store_path) / f"{self.run}.effective.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, yaml.safe_dump(body, sort_keys=True))
        return path

    def _spawn(
        self, registry: Registry, lease: Lease, url: str, store_path: Path, containment: Containment
    ) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            environment.RUN_ID: self.run,
            environment.LEASE_TOKEN: str(lease.token),
            environment.REGISTRY: url,
            environment.REGISTRY_ID: registry.registry_id,
            environment.CONFIG: str(self._effective_config_file(store_path)),
            environment.LAUNCHER_PID: str(os.getpid()),
        }
        try:
            return subprocess.Popen(
                self.options.command,
                env=env,
                start_new_session=True,
                # Safe here: the launcher has started no thread yet (preexec in a threaded parent is not).
                preexec_fn=linux.child_setup(  # noqa: PLW1509
                    os.getpid(), self.options.rlimits, containment.child_hook()
                ),
            )
        except FileNotFoundError as error:
            raise InvalidArgument("command", self.options.command[0], "not found") from error
        except PermissionError as error:
            raise InvalidArgument("command", self.options.command[0], "is not executable") from error

    # -- the loop ---------------------------------------------------------------------------------

    def _supervise(
        self, registry: Registry, lease: Lease, store_path: Path, url: str, files: FileAccounting | None
    ) -> LaunchResult:
        linux.become_subreaper()
        # Registered *before* the child exists: from its first instant the child carries the run marker, and
        # a watchdog sweeping right then must find a live owner for it, not an orphan.
        ids = [registry.register_process(self.run, lease.token, ProcessRole.LAUNCHER, registry.identity)]
        # The run's cgroup (or a record of descendants), made before the child: nothing it starts escapes.
        containment = Containment(store_path, self.run, lease.token)
        child = self._spawn(registry, lease, url, store_path, containment)
        child_identity = ProcessIdentity.of(child.pid)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        status, ladder, seen, runtime = None, None, None, None
        try:
            # From here the child exists: a registry that cannot be reached for longer than the lease ends it
            # through the finally below (LeaseLost), never leaves it running unsupervised.
            ids.append(
                lease.while_held(
                    lambda: registry.register_process(
                        self.run, lease.token, ProcessRole.CHILD, child_identity, pgid=child.pid
                    ),
                    what="register the child",
                )
            )
            how = containment.how
            started = {"command": self.options.command, "child_pid": child.pid, "contained_by": how}
            _best_effort(
                functools.partial(
                    registry.add_event,
                    self.run,
                    EventKind.LAUNCHER_STARTED,
                    token=lease.token,
                    detail=started,
                )
            )
            spent = lease.while_held(lambda: registry.run(self.run).runtime_spent, what="read the budget")
            runtime = Runtime(self.settings.get("max_runtime"), spent)
            with self._line:
                ladder, seen = self._loop(registry, lease, child, runtime, files, containment=containment)
            status = child.returncode if child.returncode is not None else wait_reaped(child)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            leftovers = self._kill_leftovers(lease.token, containment)
            containment.close()
            if leftovers is not None and ladder is None:
                ladder = leftovers
            if self.progress.legacy and runtime is not None and runtime.charged:  # settle the prepay
                settle = functools.partial(runtime.settle, lambda fix: registry.charge(self.run, runtime=fix))
                _best_effort(settle)
            if self.progress.legacy and files is not None:
                # The child has exited: what it wrote on its way out (a final save on SIGINT) is charged now
                # and shown in the summary, not left for the next start to find.
                _best_effort(lambda: files.poll(charge=True, settled=True))
                seen = self.progress.seen
            for process_id in ids:
                _best_effort(functools.partial(registry.end_process, process_id))
        return self._finish(registry, lease, status, ladder, seen)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _loop(
        self,
        registry: Registry,
        lease: Lease,
        child: subprocess.Popen[bytes],
        runtime: Runtime,
        files: FileAccounting | None,
        *,
        containment: Containment,
    ) -> tuple[LadderResult | None, int | None]:
        """Supervise until the child exits (or is stopped); returns the ladder used, if any, and the highest
        count seen in watched files."""
        progress = self.progress = LegacyProgress(
            beat_every=lease.renewal_interval(self.config.monitoring.heartbeat_interval), files=files
        )
        stop_signal = self.options.stop_signal
        child_identity = ProcessIdentity.of(child.pid)
        child_target = Target(
            child.pid, child_identity.start_ticks, ProcessRole.CHILD.value, child_identity.uid
        )
        next_beat = next_watch = 0.0
        forwarded_at: float | None = None
        while True:
            status = reap_children(child.pid)
            if status is not None:
                child.returncode = status  # we reaped it; Popen must not try again
                return None, progress.seen
            if self._signals and forwarded_at is None:
                self._stop(StopReason.SIGNAL, f"signal {self._signals[0]} received")
                signal_group(child.pid, stop_signal)
                forwarded_at = time.monotonic()
            if forwarded_at is not None and (
                len(self._signals) > 1 or time.monotonic() - forwarded_at > self.options.grace
            ):
                return run_ladder([child_target], grace=0, first=stop_signal), progress.seen
            if forwarded_at is None and time.monotonic() >= next_watch:
                # Watched files are checked far more often than the heartbeat: the point is to stop the
                # child as soon as the first checkpoint beyond the budget appears.
                next_watch = time.monotonic() + _WATCH_EVERY
                _best_effort(lambda: self._watch(progress))
            if forwarded_at is None and time.monotonic() >= next_beat:
                next_beat = time.monotonic() + progress.beat_every
                self._beat(registry, lease, runtime, child.pid, progress)
                containment.observe()
                _best_effort(lambda: self._line.update(registry))
            if self.stop is not None and forwarded_at is None:
                # A budget or lease stop (a forwarded signal waits for the child above instead).
                ladder = run_ladder([child_target], grace=self.options.grace, first=stop_signal)
                return ladder, progress.seen
            time.sleep(_POLL)

    def _beat(
        self, registry: Registry, lease: Lease, runtime: Runtime, child_pid: int, progress: LegacyProgress
    ) -> None:
        # The lease's renewal alone decides whether an unreachable registry ends the run (after its ttl);
        # the accounting below is tried once per beat and, failing, again at the next (nothing is lost: a
        # runtime charge counts only once paid).
        if (lost := registry.replaced() or lease.keep_alive()) is not None:
            self._stop(StopReason.LEASE_LOST, lost)
        self._check_budget(runtime, child_pid)
        _best_effort(lambda: self._account(registry, lease, runtime, progress))

    def _account(self, registry: Registry, lease: Lease, runtime: Runtime, progress: LegacyProgress) -> None:
        # Until a Guard inside the child registers, the launcher accounts for the run (a legacy script
        # never will): runtime charged ahead, episodes from the files it writes, heartbeats for the watchdog.
        # The hand-off is one-way: once a Guard has accounted for this lease the launcher never takes the
        # accounting back (after the Guard exits it would otherwise charge the whole run a second time), so
        # the registrations are only looked at until then - ended ones included, a Guard may come and go
        # between two beats.
        if progress.legacy:
            guards = [
                p
                for p in registry.processes(self.run, token=lease.token, include_ended=True)
                if p.role is ProcessRole.GUARD
            ]
            if guards:
                # Settle what the launcher charged up to the moment the Guard registered (its prepay would
                # otherwise be counted on top of the Guard's own).
                runtime.settle(
                    lambda correction: registry.charge(self.run, runtime=correction),
                    until_wall=guards[0].registered_at,
                )
                progress.legacy = False
        if progress.legacy:
            runtime.charge_ahead(progress.beat_every, lambda due: registry.charge(self.run, runtime=due))
            age = None if progress.last_new_file is None else time.time() - progress.last_new_file
            registry.record_heartbeat(
                self.run,
                lease.token,
                {"pid": os.getpid(), "episode": progress.seen, "legacy": True, "last_progress_age": age},
            )

    def _watch(self, progress: LegacyProgress) -> None:
        files = progress.files
        if files is None:
            return
        added = files.poll(charge=progress.legacy)  # a Guard inside, once registered, counts for itself
        # The spend is read again only when a file added to it (this runs five times a second).
        if progress.legacy and (added or files.used is None) and (stop := files.over_budget(self.settings)):
            self._stop(stop.reason, stop.detail)
        waited = time.monotonic() - files.watch.started
        if (
            not files.watch.matched_any
            and not progress.warned_empty
            and waited > self.config.monitoring.stall_timeout
        ):
            progress.warned_empty = True
            _say(
                f"no file in {files.watch.directory} has matched {files.watch.pattern.regex.pattern!r} for "
                f"{waited:.0f}s: is --watch-dir the folder the trainer writes its checkpoints to?"
            )

    def _check_budget(self, runtime: Runtime, child_pid: int) -> None:
        files = self.progress.files
        episodes = files.used if files is not None and files.watch.pattern.counts == "episodes" else None
        if (stop := self.rules.judge(runtime, child_pid, episodes)) is not None:
            self._stop(stop.reason, stop.detail)

    def _stop(self, reason: StopReason, detail: str) -> None:
        if self.stop is None:
            self.stop = Stop(reason, detail)
            self.rules.stopping(self.stop)

    def _kill_leftovers(self, token: int, containment: Containment) -> LadderResult | None:
        """Every descendant still alive (re-parented to us as subreaper), in the run's cgroup, or still
        carrying our marker."""
        targets = containment.leftovers()
        known = {t.pid for t in targets}
        targets += [
            Target(e.pid, e.start_ticks, "marked", e.uid)
            for e in marked_processes()
            if e.marker == self.run and e.token == token and e.pid not in known
        ]
        if not targets:
            return None
        result = run_ladder(targets, grace=min(self.options.grace, 5.0))
        reap_children(None)
        return result

    # -- the end ----------------------------------------------------------------------------------

    def _finish(
        self,
        registry: Registry,
        lease: Lease,
        status: int | None,
        ladder: LadderResult | None,
        seen: int | None,
    ) -> LaunchResult:
        token, grace = lease.token, self.options.grace
        result = outcome(
            registry,
            self.run,
            token,
            launcher_stop=self.stop,
            status=status,
            ladder=ladder,
            grace=grace,
            seen=seen,
        )
        detail = {
            "reason": result.reason,
            "stopped_by": result.stopped_by,
            "exit_code": result.exit_code,
            "child_status": status,
            "child_end": result.child_end,
            "ladder": ladder.as_dict() if ladder else None,
            "count_seen": seen,
        }
        why = result.stop.detail if result.stop else result.reason
        exited = EventKind.LAUNCHER_EXITED
        _best_effort(lambda: registry.add_event(self.run, exited, token=token, reason=why, detail=detail))
        return result


def _say(line: str) -> None:
    """A line for the person who started the run (stderr; the CLI's own output goes to stdout)."""
    sys.stderr.write(f"trainguard run: {line}\n")


def _best_effort(step: Callable[[], object]) -> None:
    """A registry step the supervision must outlive: an unreachable registry is logged and the step is
    skipped (the lease's renewal decides when an outage ends the run)."""
    try:
        step()
    except RegistryError as error:
        log.warning("trainguard run: registry unreachable, step skipped: %s", error)


__all__ = ["LaunchOptions", "LaunchResult", "Launcher"]  # LaunchResult: see _outcome
