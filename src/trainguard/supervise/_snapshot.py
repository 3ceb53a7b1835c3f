"""One consistent look at the registry and at ``/proc`` per watchdog sweep.

Reading every run's lease, heartbeat and processes with one query each, and walking ``/proc`` once for all
stores, is what keeps a sweep over a hundred runs cheap (a query per run, and a ``/proc`` walk per store,
cost a quarter of a core at a 5 s interval).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from trainguard._os.identity import host_key, is_same_process_alive
from trainguard.names import meta_directory
from trainguard.registry import (
    CheckpointState,
    ClockReading,
    EventKind,
    EventRecord,
    LeaseInfo,
    ProcessRecord,
    Registry,
    RunRecord,
)
from trainguard.supervise._procs import Evidence, holders_under, marked_processes

FENCED_WINDOW = 3600.0


@dataclass
class Snapshot:
    at: float
    runs: list[RunRecord]
    leases: dict[str, LeaseInfo]
    heartbeats: dict[str, dict[str, Any]]
    processes: list[ProcessRecord]
    checkpoint_states: dict[str, dict[str, CheckpointState]]
    live: dict[str, str]
    refused: list[EventRecord]  # commit refusals within FENCED_WINDOW
    marked: list[Evidence]
    holders: list[Evidence]  # processes holding files (or their cwd) under any store
    clock: ClockReading  # the registry's clock when the snapshot was taken (heartbeat ages)
    local_key: str = field(default_factory=host_key)
    _alive: dict[tuple[int, int | None], bool] = field(default_factory=dict)
    _children: dict[int, list[int]] | None = None

    @classmethod
    def take(cls, registry: Registry, *, runs: list[RunRecord] | None = None, proc: bool = True) -> Snapshot:
        runs = registry.runs() if runs is None else runs
        # Resolved once here: realpath costs more than everything else a sweep does per store.
        stores = [Path(os.path.realpath(r.store)) for r in runs if r.store and os.path.isdir(r.store)]
        # trainguard's own files under each store (the registry every command opens, the run files Guards
        # and launchers hold) are not checkpoint writes: not evidence of a rogue writer.
        registries = [meta_directory(store) for store in stores]
        # /proc first, the registry second: launchers register themselves before they spawn, so every
        # marked process or holder seen here already has its owner's row by the time the rows are read.
        # (Read the other way round, a child spawned between the two reads looks like an orphan.)
        marked = marked_processes() if proc else []
        holders = holders_under(stores, ignore=registries, resolved=True) if proc and stores else []
        now = time.time()
        heartbeats = registry.heartbeats()
        return cls(
            at=now,
            runs=runs,
            leases=registry.leases(),
            heartbeats=heartbeats,
            processes=registry.processes(),
            checkpoint_states=registry.checkpoint_states(),
            live=registry.live_pointers(),
            refused=registry.events(kinds=[EventKind.COMMIT_REFUSED], since=now - FENCED_WINDOW),
            marked=marked,
            holders=holders,
            clock=registry.clock_reading(),  # after the heartbeats were read: no age comes out negative
        )

    def since(self, domain: str | None, clock_at: float | None, wall_at: float) -> float:
        """Seconds since a moment recorded in the registry: in its clock when the domain is this one's,
        else (another host's clock, a row from before schema 3) by the wall clocks."""
        age = self.clock.since(domain, clock_at)
        return age if age is not None else self.at - wall_at

    def processes_of(self, run: str, token: int | None) -> list[ProcessRecord]:
        return [p for p in self.processes if p.run == run and p.token == token]

    def alive(self, pid: int, start_ticks: int | None) -> bool:
        key = (pid, start_ticks)
        if key not in self._alive:
            self._alive[key] = is_same_process_alive(pid, start_ticks)
        return self._alive[key]

    def descendants(self, pid: int) -> set[int]:
        if self._children is None:
            children: dict[int, list[int]] = {}
            for process in psutil.process_iter(["ppid"]):
                children.setdefault(process.info["ppid"], []).append(process.pid)
            self._children = children
        found: set[int] = set()
        stack = [pid]
        while stack:
            for child in self._children.get(stack.pop(), []):
                if child not in found:
                    found.add(child)
                    stack.append(child)
        return found

    def holders_of(self, store: str) -> list[Evidence]:
        if not self.holders:
            return []
        root = os.path.realpath(store)

        def under(path: str | None) -> bool:
            return path is not None and (path == root or path.startswith(root + os.sep))

        return [e for e in self.holders if any(under(f) for f in e.files) or under(e.cwd)]


__all__ = ["FENCED_WINDOW", "Snapshot"]
