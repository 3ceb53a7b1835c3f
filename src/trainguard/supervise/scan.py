"""Finding what should not be writing a run's checkpoints (docs/design.md, "The watchdog"; failure F3).

Three traces, from strongest to weakest:
- a process whose commit was *refused* for a stale token (the event and the quarantined staging name it,
  with pid and start time) and that is still alive;
- a process holding files under the store without owning the run's live lease;
- a process whose working directory is under the store (reported, but never killed for that alone:
  an operator's shell sitting in the directory looks exactly the same).
Plus what writers leave behind: directories without a committed row, staging from dead writers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from trainguard.budget import overruns
from trainguard.checkpoints import CheckpointStore
from trainguard.checkpoints.layout import RESERVED, STAGING, StagingName
from trainguard.names import URL_SCHEME
from trainguard.registry import CheckpointState, Registry, RunRecord
from trainguard.supervise._procs import Evidence, describe
from trainguard.supervise._snapshot import Snapshot


@dataclass(frozen=True)
class Suspect:
    run: str
    evidence: Evidence
    why: str
    killable: bool  # a writer (open files, refused commits), not merely a process sitting in the directory

    def as_dict(self) -> dict[str, object]:
        return {"run": self.run, "why": self.why, "killable": self.killable, **self.evidence.as_dict()}


@dataclass
class StoreFindings:
    run: str
    store: str
    suspects: list[Suspect] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)
    dead_staging: list[str] = field(default_factory=list)
    refused_staging: list[str] = field(default_factory=list)  # an object store's refused commits (evidence)
    fenced_attempts: int = 0
    problems: list[str] = field(default_factory=list)  # live pointer, budget
    writers: list[str] = field(default_factory=list)  # writes by processes that are not the run's (--watch)

    @property
    def anything(self) -> bool:
        return bool(
            self.suspects
            or self.unregistered
            or self.dead_staging
            or self.refused_staging
            or self.problems
            or self.fenced_attempts
            or self.writers
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "run": self.run,
            "store": self.store,
            "suspects": [s.as_dict() for s in self.suspects],
            "unregistered": self.unregistered,
            "dead_staging": self.dead_staging,
            "refused_staging": self.refused_staging,
            "fenced_attempts_last_hour": self.fenced_attempts,
            "problems": self.problems,
            "over_budget": [
                p.removeprefix("over budget: ") for p in self.problems if p.startswith("over budget")
            ],
            "writers": self.writers,
        }


def owners(snapshot: Snapshot, run: str) -> tuple[int | None, set[int]]:
    """The run's live token and the pids entitled to touch its store: the lease holder and the registered
    processes of that token that are still the same processes, and their descendants."""
    lease = snapshot.leases.get(run)
    if lease is None or not lease.held:
        return None, set()
    identities = [(p.host_key, p.pid, p.start_ticks) for p in snapshot.processes_of(run, lease.token)]
    identities.append((lease.holder_host_key, lease.holder_pid, lease.holder_start_ticks))
    pids: set[int] = set()
    for key, pid, start in identities:
        if key == snapshot.local_key and snapshot.alive(pid, start):
            pids.add(pid)
            pids |= snapshot.descendants(pid)
    return lease.token, pids


def scan_run(snapshot: Snapshot, run: RunRecord) -> StoreFindings:
    if run.store and URL_SCHEME.match(run.store):  # an object store: no processes hold its files here
        findings = StoreFindings(run.name, run.store)
        states = snapshot.checkpoint_states.get(run.name, {})
        findings.problems.extend(_run_problems(snapshot, run, states))
        findings.fenced_attempts = len([e for e in snapshot.refused if e.run == run.name])
        return findings
    store = Path(run.store or ".")
    findings = StoreFindings(run.name, str(store))
    if not store.is_dir():
        return findings
    token, allowed = owners(snapshot, run.name)
    seen: set[int] = set()
    for held in snapshot.holders_of(str(store)):
        if held.pid in allowed or (held.marker == run.name and token is not None and held.token == token):
            continue
        seen.add(held.pid)
        writer = bool(held.files)
        why = (
            "holds files under the store without the run's live lease"
            if writer
            else "its working directory is under the store (not a writer by itself)"
        )
        findings.suspects.append(Suspect(run.name, held, why, killable=writer))
    refused = [e for e in snapshot.refused if e.run == run.name]
    findings.fenced_attempts = len(refused)
    for event in reversed(refused):
        named = event.detail.get("writer") or {}
        pid, start = named.get("pid"), named.get("start_ticks")
        if (
            named.get("host_key") != snapshot.local_key
            or not isinstance(pid, int)
            or pid in seen
            or pid in allowed
            or not isinstance(start, int)
            or not snapshot.alive(pid, start)
        ):
            continue
        seen.add(pid)
        try:
            evidence = describe(psutil.Process(pid))
        except psutil.Error:
            continue
        why = f"its commit with stale token {event.token} was refused ({event.reason})"
        findings.suspects.append(Suspect(run.name, evidence, why, killable=True))
    states = snapshot.checkpoint_states.get(run.name, {})
    findings.problems.extend(_run_problems(snapshot, run, states))
    committed = set(states)
    # scandir: the directory type comes with the entry, no stat per checkpoint (a sweep lists every store).
    with os.scandir(store) as entries:
        for entry in entries:
            hidden = entry.name in RESERVED or entry.name.startswith(".")
            if not hidden and entry.name not in committed and entry.is_dir(follow_symlinks=False):
                findings.unregistered.append(entry.name)
    try:
        with os.scandir(store / STAGING) as entries:
            for entry in entries:
                parsed = StagingName.parse(entry.name)
                if parsed is None or parsed.writer_alive(snapshot.local_key) is False:
                    findings.dead_staging.append(entry.name)
    except FileNotFoundError:
        pass
    return findings


def _run_problems(snapshot: Snapshot, run: RunRecord, states: dict[str, CheckpointState]) -> list[str]:
    problems = []
    live = snapshot.live.get(run.name)
    if live is not None and states.get(live) is not CheckpointState.COMMITTED:
        state = states.get(live)
        shown = state.value if state else "missing"
        problems.append(f"the live pointer is on {live}, which is {shown}: serving refuses it")
    problems.extend(f"over budget: {overrun}" for overrun in overruns(run))
    return problems


def scan_store(registry: Registry, run: RunRecord) -> StoreFindings:
    """One run's store, on its own (``trainguard incident scan``); also verifies the live checkpoint."""
    findings = scan_run(Snapshot.take(registry, runs=[run]), run)
    live = registry.live_pointer(run.name)
    record = registry.find_checkpoint(run.name, live) if live else None
    surveyed = run.store is not None and URL_SCHEME.match(run.store) is not None
    checked = record is not None and record.state is CheckpointState.COMMITTED
    if run.store and (surveyed or checked):
        with CheckpointStore.open_existing(
            run.store, run=run.name, registry=registry, read_only=True
        ) as store:
            report = store.verify(record.name) if checked and record is not None else None
            if (survey := store.survey()) is not None:  # the bucket's prefixes, listed once
                findings.unregistered += survey.unregistered
                findings.dead_staging += survey.abandoned
                findings.refused_staging += survey.refused
        if report is not None and not report.ok:
            problem = report.problems[0]
            findings.problems.append(
                f"the live checkpoint {live} fails its integrity gate: {problem.file}: {problem.reason}"
            )
    return findings


__all__ = ["StoreFindings", "Suspect", "owners", "scan_run", "scan_store"]
