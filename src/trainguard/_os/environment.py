"""The environment `trainguard run` hands to its child (and every descendant inherits).

``TRAINGUARD_RUN_ID`` doubles as the marker the watchdog's orphan sweep looks for in ``/proc/*/environ``.
"""

from __future__ import annotations

RUN_ID = "TRAINGUARD_RUN_ID"
LEASE_TOKEN = "TRAINGUARD_LEASE_TOKEN"  # noqa: S105 - a fencing token, not a secret
REGISTRY = "TRAINGUARD_REGISTRY"
REGISTRY_ID = "TRAINGUARD_REGISTRY_ID"  # with RUN_ID, the marker: which run of *which* registry
CONFIG = "TRAINGUARD_CONFIG"
WEBHOOK_URL = "TRAINGUARD_WEBHOOK_URL"  # notifications (a Slack webhook is a secret: not in the config)
LAUNCHER_PID = "TRAINGUARD_LAUNCHER_PID"

__all__ = ["CONFIG", "LAUNCHER_PID", "LEASE_TOKEN", "REGISTRY", "REGISTRY_ID", "RUN_ID", "WEBHOOK_URL"]
