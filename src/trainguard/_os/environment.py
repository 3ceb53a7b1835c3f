"""The environment `trainguard run` hands to its child (and every descendant inherits).

``TRAINGUARD_RUN_ID`` doubles as the marker the watchdog's orphan sweep looks for in ``/proc/*/environ``.
"""

from __future__ import annotations

RUN_ID = "TRAINGUARD_RUN_ID"
LEASE_TOKEN = "TRAINGUARD_LEASE_TOKEN"  # noqa: S105 - a fencing token, not a secret
REGISTRY = "TRAINGUARD_REGISTRY"
CONFIG = "TRAINGUARD_CONFIG"
LAUNCHER_PID = "TRAINGUARD_LAUNCHER_PID"

__all__ = ["CONFIG", "LAUNCHER_PID", "LEASE_TOKEN", "REGISTRY", "RUN_ID"]
