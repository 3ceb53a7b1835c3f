"""Prometheus metrics from the watchdog: per run progress and budget, lease, heartbeat and checkpoints;
kills and commit refusals by reason. Served on 127.0.0.1 only."""

from __future__ import annotations

import collections
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from trainguard._os.resources import tree_bytes
from trainguard.budget import budget_lines
from trainguard.registry import CheckpointState, EventKind, Registry
from trainguard.supervise._snapshot import Snapshot
from trainguard.supervise.watchdog import SweepReport


class WatchdogMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["run"]
        self.episodes = Gauge(
            "trainguard_run_episodes_spent",
            "Episodes spent by the run, over every restart",
            labels,
            registry=self.registry,
        )
        self.remaining = Gauge(
            "trainguard_run_budget_remaining",
            "Budget left (episodes, steps, runtime seconds)",
            ["run", "budget"],
            registry=self.registry,
        )
        self.heartbeat_age = Gauge(
            "trainguard_run_heartbeat_age_seconds",
            "Seconds since the run's last heartbeat",
            labels,
            registry=self.registry,
        )
        self.token = Gauge(
            "trainguard_run_lease_token",
            "Fencing token of the run's lease (0: none held)",
            labels,
            registry=self.registry,
        )
        self.checkpoints = Gauge(
            "trainguard_run_checkpoints",
            "Checkpoints of the run by state",
            ["run", "state"],
            registry=self.registry,
        )
        self.store_bytes = Gauge(
            "trainguard_store_bytes", "Bytes under the run's store", labels, registry=self.registry
        )
        self.kills = Counter(
            "trainguard_watchdog_kills",
            "Processes stopped by the watchdog, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "trainguard_commit_refusals",
            "Checkpoint commits refused, by run and reason",
            ["run", "reason"],
            registry=self.registry,
        )
        self.last_sweep = Gauge(
            "trainguard_watchdog_last_sweep_timestamp_seconds",
            "When the last sweep ended",
            registry=self.registry,
        )
        self.sweep_seconds = Gauge(
            "trainguard_watchdog_sweep_seconds", "Duration of the last sweep", registry=self.registry
        )
        self._last_event_id = 0

    def serve(self, port: int) -> None:
        start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def update(self, registry: Registry, report: SweepReport, duration: float) -> None:
        # From the sweep's own snapshot: one more round of per-run queries would double the sweep's I/O.
        snapshot = report.snapshot or Snapshot.take(registry, proc=False)
        for run in snapshot.runs:
            self.episodes.labels(run.name).set(run.episodes_spent)
            for line in budget_lines(run):
                if line.budget.cumulative and line.remaining is not None:
                    self.remaining.labels(run.name, line.budget.value).set(line.remaining)
            lease = snapshot.leases.get(run.name)
            self.token.labels(run.name).set(lease.token if lease is not None and lease.live else 0)
            beat = snapshot.heartbeats.get(run.name)
            if beat is not None:
                age = snapshot.since(beat.get("clock_domain"), beat.get("clock_at"), beat["at"])
                self.heartbeat_age.labels(run.name).set(age)
            counts = collections.Counter(dict.fromkeys(CheckpointState, 0))
            counts.update(snapshot.checkpoint_states.get(run.name, {}).values())
            for state, count in counts.items():
                self.checkpoints.labels(run.name, state.value).set(count)
            if run.store and Path(run.store).is_dir():
                self.store_bytes.labels(run.name).set(tree_bytes(Path(run.store)))
        for finding, ladder in report.ladders:
            if ladder is not None:
                self.kills.labels(finding.reason).inc()
        for event in registry.events(kinds=[EventKind.COMMIT_REFUSED], after_id=self._last_event_id):
            reason = "fenced" if event.detail.get("fenced") else "refused"
            self.refusals.labels(event.run or "", reason).inc()
            self._last_event_id = max(self._last_event_id, event.id)
        self.sweep_seconds.set(duration)
        self.last_sweep.set(time.time())


__all__ = ["WatchdogMetrics"]
