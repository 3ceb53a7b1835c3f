"""The in-process Guard: cumulative budgets, heartbeats, self-fencing, graceful signals, fenced saves
(see docs/design.md, "The in-process Guard")."""

from __future__ import annotations

from trainguard.guard._guard import Guard
from trainguard.guard._saver import SaveResult
from trainguard.guard._stop import REFUSALS, Stop, StopReason

__all__ = ["REFUSALS", "Guard", "SaveResult", "Stop", "StopReason"]
