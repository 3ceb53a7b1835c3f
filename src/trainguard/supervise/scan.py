"""Finding what should not be writing a run's checkpoints (design section 3.4, failure F3).

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

from trainguard.checkpoints._layout import RESERVED, STAGING, StagingName
from trainguard.checkpoints.store import CheckpointStore
from trainguard.registry import Registry, RunRecord
from trainguard.supervise.procs import Evidence, describe
from trainguard.supervise.snapshot import Snapshot


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
    fenced_attempts: int = 0
    problems: list[str] = field(default_factory=list)  # live pointer, budget

    @property
    def anything(self) -> bool:
        return bool(
            self.suspects or self.unregistered or self.dead_staging or self.problems or self.fenced_attempts
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "run": self.run,
            "store": self.store,
            "suspects": [s.as_dict() for s in self.suspects],
            "unregistered": self.unregistered,
            "dead_staging": self.dead_staging,
            "fenced_attempts_last_hour": self.fenced_attempts,
        }


def owners(snapshot: Snapshot, run: str) -> tuple[int | None, set[int]]:
    """The run's live token and the pids entitled to touch its store: the lease holder and the registered
    processes of that token that are still the same processes, and their descendants."""
    lease = snapshot.leases.get(run)
    if lease is None or lease.state != "held" or not lease.live:
        return None, set()
    identities = [(p.host_key, p.pid, p.start_time) for p in snapshot.processes_of(run, lease.token)]
    identities.append((lease.holder_host_key, lease.holder_pid, lease.holder_start_time))
    pids: set[int] = set()
    for key, pid, start in identities:
        if key == snapshot.local_key and snapshot.alive(pid, start):
            pids.add(pid)
            pids |= snapshot.descendants(pid)
    return lease.token, pids


def scan_run(snapshot: Snapshot, run: RunRecord) -> StoreFindings:
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
        pid, start = named.get("pid"), named.get("start_time")
        if (
            named.get("host_key") != snapshot.local_key
            or not isinstance(pid, int)
            or pid in seen
            or pid in allowed
            or not isinstance(start, int | float)
            or not snapshot.alive(pid, float(start))
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


def _run_problems(snapshot: Snapshot, run: RunRecord, states: dict[str, str]) -> list[str]:
    problems = []
    live = snapshot.live.get(run.name)
    if live is not None and states.get(live) != "committed":
        problems.append(
            f"the live pointer is on {live}, which is {states.get(live, 'missing')}: serving refuses it"
        )
    limits = run.limits
    if limits.get("max_episodes") is not None and run.episodes_spent > limits["max_episodes"]:
        problems.append(f"over budget: {run.episodes_spent} episodes spent of {limits['max_episodes']}")
    if limits.get("max_runtime") is not None and run.runtime_spent > limits["max_runtime"] + 2 * limits.get(
        "heartbeat_interval", 5.0
    ):
        problems.append(f"over budget: runtime {run.runtime_spent:.0f}s of {limits['max_runtime']:g}s")
    return problems


def scan_store(registry: Registry, run: RunRecord) -> StoreFindings:
    """One run's store, on its own (``trainguard incident scan``); also verifies the live checkpoint."""
    findings = scan_run(Snapshot.take(registry, runs=[run]), run)
    live = registry.live_pointer(run.name)
    record = registry.find_checkpoint(run.name, live) if live else None
    if record is not None and record.state == "committed" and run.store:
        with CheckpointStore(run.store, run=run.name, registry=registry, recover_on_open=False) as store:
            report = store.verify(record.name)
        if not report.ok:
            problem = report.problems[0]
            findings.problems.append(
                f"the live checkpoint {live} fails its integrity gate: {problem.file}: {problem.reason}"
            )
    return findings


__all__ = ["StoreFindings", "Suspect", "owners", "scan_run", "scan_store"]
