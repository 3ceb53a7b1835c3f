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

import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from trainguard.checkpoints._layout import RESERVED, STAGING, StagingName
from trainguard.identity import host_key, is_same_process_alive
from trainguard.registry import Registry, RunRecord
from trainguard.supervise.procs import Evidence, describe, holders_under

FENCED_WINDOW = 3600.0


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

    @property
    def anything(self) -> bool:
        return bool(self.suspects or self.unregistered or self.dead_staging)

    def as_dict(self) -> dict[str, object]:
        return {
            "run": self.run,
            "store": self.store,
            "suspects": [s.as_dict() for s in self.suspects],
            "unregistered": self.unregistered,
            "dead_staging": self.dead_staging,
            "fenced_attempts_last_hour": self.fenced_attempts,
        }


def owners(registry: Registry, run: str) -> tuple[int | None, set[int]]:
    """The run's live token and the pids entitled to touch its store (registered processes of that token
    that are still the same processes, and their descendants)."""
    lease = registry.lease_info(run)
    if lease is None or lease.state != "held" or not lease.live:
        return None, set()
    pids: set[int] = set()
    identities = [(r.host_key, r.pid, r.start_time) for r in registry.processes(run, token=lease.token)]
    identities.append((lease.holder_host_key, lease.holder_pid, lease.holder_start_time))
    for key, pid, start in identities:
        if key == host_key() and is_same_process_alive(pid, start):
            pids.add(pid)
            try:
                pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
            except psutil.Error:
                continue
    return lease.token, pids


def _registry_files(store: Path) -> list[Path]:
    return [store / ".trainguard"]  # the registry database every trainguard command opens


def scan_run(registry: Registry, run: RunRecord, *, now: float | None = None) -> StoreFindings:
    store = Path(run.store or ".")
    findings = StoreFindings(run.name, str(store))
    if not store.is_dir():
        return findings
    now = time.time() if now is None else now
    token, allowed = owners(registry, run.name)
    seen: set[int] = set()
    for held in holders_under([store], ignore=_registry_files(store)):
        if held.pid in allowed or (held.marker == run.name and token is not None and held.token == token):
            continue
        seen.add(held.pid)
        writer = bool(held.files)
        why = (
            "holds files under the store without the run's live lease"
            if writer
            else ("its working directory is under the store (not a writer by itself)")
        )
        findings.suspects.append(Suspect(run.name, held, why, killable=writer))
    refused = [e for e in registry.events(run.name, kinds=["commit_refused"]) if now - e.at <= FENCED_WINDOW]
    findings.fenced_attempts = len(refused)
    for event in reversed(refused):
        named = event.detail.get("writer") or {}
        pid, start = named.get("pid"), named.get("start_time")
        if (
            named.get("host_key") != host_key()
            or not isinstance(pid, int)
            or pid in seen
            or pid in allowed
            or not isinstance(start, int | float)
            or not is_same_process_alive(pid, float(start))
        ):
            continue
        seen.add(pid)
        try:
            evidence = describe(psutil.Process(pid))
        except psutil.Error:
            continue
        why = f"its commit with stale token {event.token} was refused ({event.reason})"
        findings.suspects.append(Suspect(run.name, evidence, why, killable=True))
    committed = {r.name for r in registry.checkpoints(run.name, states=None)}
    for entry in store.iterdir():
        if (
            entry.is_dir()
            and entry.name not in RESERVED
            and not entry.name.startswith(".")
            and entry.name not in committed
        ):
            findings.unregistered.append(entry.name)
    staging = store / STAGING
    if staging.is_dir():
        for entry in staging.iterdir():
            parsed = StagingName.parse(entry.name)
            if parsed is None or parsed.writer_alive(host_key()) is False:
                findings.dead_staging.append(entry.name)
    return findings


__all__ = ["FENCED_WINDOW", "StoreFindings", "Suspect", "owners", "scan_run"]
