"""``trainguard watchdog``: an independent sweep over the registry and ``/proc`` that does not depend on the
training process's cooperation (docs/design.md, "The watchdog").

Each sweep, for every run held on this host: are the registered processes still the same processes (pid
and start time), is the heartbeat fresh, are episodes advancing, is the budget respected? Then orphans
(processes carrying a run's marker whose run no longer has a live owner) and rogue writers. A violation
runs the ladder - revoke the lease, SIGTERM, grace, SIGKILL the tree, verify - and leaves an event with the
reason, the signals and the evidence; ``dry_run`` records the same event and touches nothing.
"""

from __future__ import annotations

import logging
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from trainguard._os.identity import ProcessIdentity
from trainguard._os.resources import tree_bytes, tree_rss
from trainguard.budget import Budget, EffectiveLimits, heartbeat_interval, over_ceiling, overruns
from trainguard.errors import RegistryError
from trainguard.names import URL_SCHEME, store_directory
from trainguard.notify import Notifier
from trainguard.registry import EventKind, LeaseInfo, LeaseState, ProcessRole, Registry, RunRecord
from trainguard.supervise import _descendants
from trainguard.supervise._cgroup import RunCgroup, parse_name
from trainguard.supervise._linux import require_linux
from trainguard.supervise._membership import Membership
from trainguard.supervise._registry_access import TolerantWrites, reading_twin
from trainguard.supervise._rogue_writes import ForeignWrite, foreign_writes, watched_folders
from trainguard.supervise._snapshot import Snapshot
from trainguard.supervise._writers import WriteMonitor
from trainguard.supervise.ladder import LadderResult, Target, run_ladder
from trainguard.supervise.scan import StoreFindings, scan_run

log = logging.getLogger("trainguard")

DEFAULT_GRACE = 30.0
DEFAULT_STALL_TIMEOUT = 600.0


class Violation(StrEnum):
    """Why the watchdog acts on a run (the ``reason`` of its events)."""

    RUNTIME = Budget.RUNTIME.value
    EPISODES = Budget.EPISODES.value
    MEMORY = Budget.MEMORY.value
    DISK = Budget.DISK.value
    HEARTBEAT = "heartbeat"  # no heartbeat for longer than max(3 heartbeats, the lease ttl)
    STALLED = "stalled"  # heartbeats, but no progress for longer than stall_timeout
    HOLDER_GONE = "holder_gone"  # no registered process of the lease is alive
    ORPHAN = "orphan"  # carries a run's marker, and the run has no live owner for its token
    ROGUE = "rogue"  # writes under a store without the run's live lease


@dataclass
class Finding:
    run: str
    reason: Violation
    detail: str
    targets: list[Target]
    evidence: dict[str, Any] = field(default_factory=dict)
    revoke: bool = True
    act: bool = True  # False: report only (a rogue under rogue_action: report)


@dataclass
class SweepReport:
    snapshot: Snapshot | None = None  # what the sweep judged (the metrics are read from it too)
    findings: list[Finding] = field(default_factory=list)
    ladders: list[tuple[Finding, LadderResult | None]] = field(default_factory=list)
    stores: list[StoreFindings] = field(default_factory=list)
    foreign: list[ForeignWrite] = field(default_factory=list)  # writes by processes that are not the run's


def _setting(run: RunRecord, key: str, default: float) -> float:
    value = run.limits.get(key)
    return float(value) if isinstance(value, int | float) else default


class Watchdog:
    def __init__(
        self,
        registry: Registry,
        *,
        interval: float = 5.0,
        dry_run: bool = False,
        grace: float | None = None,
        scan_rogues: bool = True,
        watch_dirs: list[Path] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.registry = registry
        self.interval = interval
        self.dry_run = dry_run
        self.grace = grace
        self.scan_rogues = scan_rogues
        self.notifier = notifier  # rogue findings and stops, as they are recorded
        self.watch_dirs = list(watch_dirs or [])  # folders outside any store to name writers in
        self._writes: WriteMonitor | None = None  # started at the first sweep; sees writes between sweeps
        self._read_only: Registry | None = None
        self.writes = TolerantWrites(registry)
        require_linux("trainguard watchdog")  # /proc is what it judges by
        self.me = ProcessIdentity.current()

    # -- one sweep --------------------------------------------------------------------------------

    def sweep(self) -> SweepReport:
        report = SweepReport()
        self.writes.flush()  # what an earlier sweep could not record
        try:
            self.registry.watchdog_beat(self.me, self.interval, {"dry_run": self.dry_run})
        except RegistryError as error:
            # A registry that takes no writes (a frozen process holding SQLite's write lock, a database
            # that is down) must not stop the sweep: it judges from what it can read and acts by signals.
            log.warning("trainguard watchdog: its beat was not recorded: %s", error)
        snapshot = report.snapshot = Snapshot.take(self._reader())
        for run in snapshot.runs:
            finding = self.check_run(snapshot, run)
            if finding is not None:
                report.findings.append(finding)
        report.findings.extend(self.orphans(snapshot))
        if self.scan_rogues:
            for run in snapshot.runs:
                if run.store:
                    findings = scan_run(snapshot, run)
                    report.stores.append(findings)
                    report.findings.extend(self._rogue_findings(run, findings))
            report.findings.extend(self._writer_findings(snapshot, report))
        for finding in report.findings:
            report.ladders.append((finding, self.act(finding, self._grace(snapshot.runs, finding.run))))
        return report

    def _grace(self, runs: list[RunRecord], name: str) -> float:
        if self.grace is not None:
            return self.grace
        run = next((r for r in runs if r.name == name), None)
        return _setting(run, "grace", DEFAULT_GRACE) if run else DEFAULT_GRACE

    def _local_targets(self, snapshot: Snapshot, lease: LeaseInfo) -> list[Target]:
        targets = [
            Target(p.pid, p.start_ticks, p.role, p.uid)
            for p in snapshot.processes_of(lease.run, lease.token)
            if p.host_key == self.me.host_key
        ]
        if lease.holder_host_key == self.me.host_key and lease.holder_pid not in {t.pid for t in targets}:
            targets.append(Target(lease.holder_pid, lease.holder_start_ticks, "holder", lease.holder_uid))
        # What the run's cgroup holds, whatever escaped the process tree (setsid, env -i).
        known = {t.pid for t in targets}
        targets += [
            Target(e.pid, e.start_ticks, "cgroup", e.uid)
            for e in snapshot.marked
            if e.pid not in known and parse_name(e.cgroup) == (lease.run, lease.token)
        ]
        return targets

    def check_run(self, snapshot: Snapshot, run: RunRecord) -> Finding | None:
        lease = snapshot.leases.get(run.name)
        if lease is None or lease.state is not LeaseState.HELD or lease.holder_host_key != self.me.host_key:
            return None
        targets = self._local_targets(snapshot, lease)
        alive = [t for t in targets if snapshot.alive(t.pid, t.start_ticks)]
        if not alive:
            return Finding(
                run.name,
                Violation.HOLDER_GONE,
                "no registered process of the lease is alive (pid and start time)",
                [],
                {"targets": [t.__dict__ for t in targets]},
            )
        beat = snapshot.heartbeats.get(run.name) or {}
        stale_after = max(3 * heartbeat_interval(run.limits), lease.ttl)
        current = beat.get("token") == lease.token
        # Ages in the registry's clock (a wall-clock step must not make every heartbeat look stale); a row
        # from another clock domain or before schema 3 falls back to wall clocks.
        if current:
            age = snapshot.since(beat.get("clock_domain"), beat.get("clock_at"), beat["at"])
        else:  # nothing beat for this token yet: since the lease was granted or last renewed
            age = snapshot.since(lease.clock_domain, lease.expires_at - lease.ttl, lease.acquired_at)
        evidence: dict[str, Any] = {
            "heartbeat_age": round(age, 3),
            "token": lease.token,
            "spent": {
                "episodes": run.episodes_spent,
                "steps": run.steps_spent,
                "runtime": round(run.runtime_spent, 3),
            },
        }
        if age > stale_after:
            return Finding(
                run.name,
                Violation.HEARTBEAT,
                f"no heartbeat for {age:.1f}s (limit {stale_after:g}s)",
                alive,
                evidence,
            )
        progress = beat.get("last_progress_age")
        if isinstance(progress, int | float) and current:
            stall = _setting(run, "stall_timeout", DEFAULT_STALL_TIMEOUT) * (2 if beat.get("saving") else 1)
            progress_age = progress + age
            evidence["progress_age"] = round(progress_age, 3)
            if progress_age > stall:
                return Finding(
                    run.name,
                    Violation.STALLED,
                    f"no progress for {progress_age:.1f}s (limit {stall:g}s"
                    f"{', doubled during a save' if beat.get('saving') else ''})",
                    alive,
                    evidence,
                )
        return self._budget_finding(run, alive, evidence)

    def _budget_finding(
        self, run: RunRecord, alive: list[Target], evidence: dict[str, Any]
    ) -> Finding | None:
        # The cumulative budgets by the shared rule (runtime only beyond what is charged ahead).
        if found := overruns(run):
            return Finding(run.name, Violation(found[0].budget.value), str(found[0]), alive, evidence)
        limits = EffectiveLimits.from_mapping(run.limits)
        if limits.memory is not None:
            evidence["rss"] = rss = tree_rss(*(t.pid for t in alive if t.role != ProcessRole.LAUNCHER))
            if overrun := over_ceiling(Budget.MEMORY, rss, limits.memory):
                return Finding(run.name, Violation.MEMORY, str(overrun), alive, evidence)
        # An object store's size is judged by its Guard (which has the bucket's credentials), not here.
        if limits.disk is not None and run.store and not URL_SCHEME.match(run.store):
            evidence["disk"] = used = tree_bytes(Path(run.store))
            if overrun := over_ceiling(Budget.DISK, used, limits.disk):
                return Finding(run.name, Violation.DISK, str(overrun), alive, evidence)
        return None

    def orphans(self, snapshot: Snapshot) -> list[Finding]:
        """Processes of a run's token - by its marker, its cgroup, or the launcher's record of descendants -
        when that token has no live launcher or guard."""
        known = {r.name: r for r in snapshot.runs}
        groups: dict[tuple[str, int], list[Target]] = defaultdict(list)
        evidence: dict[tuple[str, int], list[dict[str, object]]] = defaultdict(list)
        for seen in snapshot.marked:
            # Only marks this registry can vouch for: a run it knows, launched with a token. A stray
            # TRAINGUARD_RUN_ID in someone's shell, or a run of another registry, is none of our business.
            mark = seen.run_mark(self._reader().registry_id)
            if mark is None or mark[0] not in known or mark[1] is None:
                continue
            key = (mark[0], mark[1])
            groups[key].append(Target(seen.pid, seen.start_ticks, "orphan", seen.uid))
            evidence[key].append(seen.as_dict())
        for record in known.values():
            for token, (_, listed) in _recorded_descendants(record).items():
                key = (record.name, token)
                present = {t.pid for t in groups.get(key, [])}
                for pid, ticks in listed:
                    if pid not in present and snapshot.alive(pid, ticks):
                        groups[key].append(Target(pid, ticks, "orphan"))
                        evidence[key].append({"pid": pid, "start_ticks": ticks, "recorded": True})
        findings = []
        for (run, token), targets in groups.items():
            if self._owned(snapshot, run, token):
                continue
            lease = snapshot.leases.get(run)
            findings.append(
                Finding(
                    run,
                    Violation.ORPHAN,
                    f"{len(targets)} process(es) of run {run!r} (token {token}, by marker, cgroup or the "
                    "launcher's record) have no live launcher or guard for that token",
                    targets,
                    {"processes": evidence[(run, token)]},
                    revoke=lease is not None and lease.token == token,
                )
            )
        return findings

    def _owned(self, snapshot: Snapshot, run: str, token: int) -> bool:
        lease = snapshot.leases.get(run)
        if lease is None or not lease.held or lease.token != token:
            return False
        return any(
            p.role in (ProcessRole.LAUNCHER, ProcessRole.GUARD) and snapshot.alive(p.pid, p.start_ticks)
            for p in snapshot.processes_of(run, token)
            if p.host_key == snapshot.local_key
        )

    def _rogue_findings(self, run: RunRecord, findings: StoreFindings) -> list[Finding]:
        kill = run.limits.get("rogue_action") == "kill"
        return [
            Finding(
                run.name,
                Violation.ROGUE,
                suspect.why,
                [Target(suspect.evidence.pid, suspect.evidence.start_ticks, "rogue", suspect.evidence.uid)],
                {"process": suspect.evidence.as_dict()},
                revoke=False,
                act=kill and suspect.killable,
            )
            for suspect in findings.suspects
        ]

    def _writer_findings(self, snapshot: Snapshot, report: SweepReport) -> list[Finding]:
        """Writers of files under the runs' folders that are not the runs' (the kernel names each, even one
        that held its file for a millisecond: fanotify)."""
        folders = sorted({*watched_folders(snapshot), *(str(d.resolve()) for d in self.watch_dirs)})
        if self._writes is None or self._writes.directories != folders:
            if self._writes is not None:
                self._writes.close()
            self._writes = WriteMonitor([Path(f) for f in folders])
            # A watchdog dropped without close() (a test's one sweep) must not leave the reader running.
            weakref.finalize(self, self._writes.close)
            if self._writes.limitation:
                log.warning("trainguard watchdog: %s", self._writes.limitation)
        report.foreign = foreign_writes(self.registry, snapshot, self._writes.drain(), self.watch_dirs)
        findings = []
        for foreign in report.foreign:
            writer, run = foreign.write.writer, foreign.run
            if run is None:
                log.warning("trainguard watchdog: %s", foreign.why)
                continue
            record = next(r for r in snapshot.runs if r.name == run)
            targets = [Target(writer.pid, writer.start_ticks, "writer", writer.uid)] if writer else []
            kill = record.limits.get("rogue_action") == "kill" and bool(targets)
            evidence = {"write": foreign.write.as_dict()}
            findings.append(
                Finding(run, Violation.ROGUE, foreign.why, targets, evidence, revoke=False, act=kill)
            )
        return findings

    def _reader(self) -> Registry:
        """What the sweep reads through (see ``_registry_access.reading_twin``)."""
        if self._read_only is None:
            self._read_only = reading_twin(self.registry) or self.registry
        return self._read_only

    def close(self) -> None:
        self.writes.flush()  # a last try for what the registry did not take
        if self._read_only is not None and self._read_only is not self.registry:
            self._read_only.close()
        self._read_only = None
        if self._writes is not None:
            self._writes.close()
            self._writes = None

    # -- acting -----------------------------------------------------------------------------------

    def _membership(self, run: str) -> Membership:
        record = self._reader().run_info(run)
        store = store_directory(record.store) if record is not None and record.store else None
        return Membership(run, store, self._reader().registry_id)

    def act(self, finding: Finding, grace: float) -> LadderResult | None:
        why = f"{finding.reason}: {finding.detail}"
        detail = {
            "reason": finding.reason,
            "evidence": finding.evidence,
            "dry_run": self.dry_run,
            "targets": [t.__dict__ for t in finding.targets],
        }
        if self.notifier is not None and not self.dry_run:
            kind = "rogue" if finding.reason is Violation.ROGUE else "stop"
            self.notifier.send(kind, finding.run, f"watchdog: {why}", act=finding.act)
        if not finding.act:
            self.writes.event(finding.run, EventKind.WATCHDOG_REPORT, why, detail)
            return None
        if self.dry_run:
            self.writes.event(
                finding.run,
                EventKind.WATCHDOG_WOULD_STOP,
                why,
                {
                    **detail,
                    "would": ["revoke lease"] * finding.revoke
                    + ["SIGTERM", f"grace {grace:g}s", "SIGKILL", "verify"],
                },
            )
            return None
        revoked = not finding.revoke or self.writes.revoke(finding.run, f"watchdog: {why}")
        # Rows only say which processes to look at: each is checked from the kernel's side first.
        allow = self._membership(finding.run).refusal
        ladder = run_ladder(finding.targets, grace=grace, allow=allow) if finding.targets else None
        if not revoked:  # once more: the frozen process that held the registry's lock may be the one killed
            self.writes.revoke_later(finding.run, f"watchdog: {why}")
        if finding.reason is Violation.ORPHAN:
            _remove_run_cgroups(finding)  # the launcher that made them died without tidying up
        signals = sorted({name for _, name in ladder.signals}) if ladder else []
        refused = bool(ladder and ladder.skipped and not ladder.signals)
        self.writes.event(
            finding.run,
            EventKind.WATCHDOG_REPORT if refused else EventKind.WATCHDOG_STOPPED,
            why + ("; nothing signalled" if refused else ""),
            {**detail, "signals": signals, "ladder": ladder.as_dict() if ladder else None},
        )
        log.warning(
            "trainguard watchdog: %s %s: %s (%s)",
            finding.run,
            finding.reason,
            finding.detail,
            ", ".join(signals) or "no process to signal",
        )
        return ladder


def _remove_run_cgroups(finding: Finding) -> None:
    for seen in finding.evidence.get("processes", []):
        cgroup = RunCgroup.at(str(seen.get("cgroup") or ""))
        if cgroup is not None:
            cgroup.remove()  # only if empty: what the ladder could not stop keeps it


def _recorded_descendants(run: RunRecord) -> dict[int, tuple[int, set[tuple[int, int]]]]:
    directory = store_directory(run.store) if run.store else None
    if directory is None or not directory.is_dir():
        return {}
    return _descendants.recorded(directory, run.name)


__all__ = ["Finding", "SweepReport", "Violation", "Watchdog"]
