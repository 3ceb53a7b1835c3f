"""The registry's vocabularies: checkpoint and lease states, process roles, event kinds.

String enums, stored as their values: a row written by any version reads back as the same text, and a
member compares equal to its value, so code and SQL speak the same words.
"""

from __future__ import annotations

from enum import StrEnum


class CheckpointState(StrEnum):
    """A checkpoint row's state. (Staging is not a state: a directory without a row is not a checkpoint.)"""

    COMMITTED = "committed"  # loadable, promotable
    QUARANTINED = "quarantined"  # moved aside with a reason; never loaded, never deleted
    EVICTED = "evicted"  # removed by retention (its row stays, for the audit log)


class LeaseState(StrEnum):
    HELD = "held"  # live until its expiry, unless renewed
    RELEASED = "released"  # given up by its holder
    REVOKED = "revoked"  # taken away (takeover, watchdog, operator)
    EXPIRED = "expired"  # not renewed within its ttl, or its holder's process is gone


class ProcessRole(StrEnum):
    """Why a process is registered for a run: only registered processes are ever signalled."""

    LAUNCHER = "launcher"  # `trainguard run`, holding the lease for its child
    CHILD = "child"  # the command the launcher started
    GUARD = "guard"  # a process whose Guard accounts for the run
    WORKER = "worker"  # a Ray Train worker staging files for the holder's commit


class EventKind(StrEnum):
    """Every kind of audit event (``tg_events.kind``)."""

    # runs and budgets
    RUN_CREATED = "run_created"
    STORE_MOVED = "store_moved"
    LIMITS_SET = "limits_set"
    LIMITS_LOOSENED = "limits_loosened"  # a restart made a supervision setting looser (with its reason)
    BUDGET_EXTENDED = "budget_extended"
    BUDGET_WARNING = "budget_warning"
    BUDGET_EXHAUSTED = "budget_exhausted"
    RESUMED = "resumed"
    WATCHED_FILE = "watched_file"  # an unmodified trainer's checkpoint file, charged once
    REGISTRY_REBUILT = "registry_rebuilt"  # a run restored from its store's signed manifests
    # leases
    LEASE_ACQUIRED = "lease_acquired"
    LEASE_RENEWED = "lease_renewed"
    LEASE_RELEASED = "lease_released"
    LEASE_REVOKED = "lease_revoked"
    LEASE_EXPIRED = "lease_expired"
    LEASE_LOST = "lease_lost"
    # checkpoints
    CHECKPOINT_COMMITTED = "checkpoint_committed"
    COMMIT_REFUSED = "commit_refused"
    CHECKPOINT_ROLLED_FORWARD = "checkpoint_rolled_forward"
    CHECKPOINT_QUARANTINED = "checkpoint_quarantined"
    CHECKPOINT_RELEASED = "checkpoint_released"
    CHECKPOINT_EVICTED = "checkpoint_evicted"
    CHECKPOINT_PINNED = "checkpoint_pinned"
    CHECKPOINT_UNPINNED = "checkpoint_unpinned"
    LIVE_MOVED = "live_moved"
    RECOVERED = "recovered"
    # processes
    PROCESS_REGISTERED = "process_registered"
    GUARD_STARTED = "guard_started"
    GUARD_STOP_REQUESTED = "guard_stop_requested"
    GUARD_STOPPED = "guard_stopped"
    LAUNCHER_STARTED = "launcher_started"
    LAUNCHER_EXITED = "launcher_exited"
    STOPPED_BY_OPERATOR = "stopped_by_operator"
    WATCHDOG_STOPPED = "watchdog_stopped"
    WATCHDOG_WOULD_STOP = "watchdog_would_stop"
    WATCHDOG_REPORT = "watchdog_report"


# The event a checkpoint's move into each state is recorded as.
STATE_EVENTS = {
    CheckpointState.COMMITTED: EventKind.CHECKPOINT_RELEASED,
    CheckpointState.QUARANTINED: EventKind.CHECKPOINT_QUARANTINED,
    CheckpointState.EVICTED: EventKind.CHECKPOINT_EVICTED,
}

__all__ = ["STATE_EVENTS", "CheckpointState", "EventKind", "LeaseState", "ProcessRole"]
