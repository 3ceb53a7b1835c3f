"""Supervision from outside the training process: the launcher (``trainguard run``), the watchdog, the kill
ladder, the rogue-writer scan and the watchdog's metrics (see docs/design.md, "The launcher" and "The
watchdog"). Linux first; elsewhere each says so in one line (``NotSupported``)."""

from __future__ import annotations

from trainguard._os.identity import is_same_process_alive
from trainguard.supervise._membership import Membership
from trainguard.supervise._procs import Evidence, holders_under, marked_processes
from trainguard.supervise._registry_access import WATCHDOG_LOCK_WAIT
from trainguard.supervise._rogue_writes import ForeignWrite, watch_writers
from trainguard.supervise._writers import Write, WriteMonitor
from trainguard.supervise.ladder import LadderResult, Target, run_ladder
from trainguard.supervise.launcher import Launcher, LaunchOptions, LaunchResult
from trainguard.supervise.metrics import WatchdogMetrics
from trainguard.supervise.scan import StoreFindings, Suspect, scan_store
from trainguard.supervise.watchdog import Finding, SweepReport, Violation, Watchdog

__all__ = [
    "WATCHDOG_LOCK_WAIT",
    "Evidence",
    "Finding",
    "ForeignWrite",
    "LadderResult",
    "LaunchOptions",
    "LaunchResult",
    "Launcher",
    "Membership",
    "StoreFindings",
    "Suspect",
    "SweepReport",
    "Target",
    "Violation",
    "Watchdog",
    "WatchdogMetrics",
    "Write",
    "WriteMonitor",
    "holders_under",
    "is_same_process_alive",
    "marked_processes",
    "run_ladder",
    "scan_store",
    "watch_writers",
]
