"""The incident report's ``config/training.yaml`` form, translated to the native form.

    training:
      limits: {max_episodes, max_runtime_hours, max_checkpoints, max_memory_gb}
      monitoring: {heartbeat_interval_seconds, resource_check_interval_seconds,
                   checkpoint_validation, external_monitoring}
      failsafes: {enable_episode_limit, enable_runtime_limit, enable_external_monitor}

Keys keep their original names in every message (``training.limits.max_runtime_hours``), and keys this
module does not know are carried over so the native validation reports them as unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# (section, incident key) -> (native dotted key, factor applied to numbers)
_KEYS: dict[tuple[str, str], tuple[str, float | None]] = {
    ("limits", "max_episodes"): ("limits.max_episodes", None),
    ("limits", "max_steps"): ("limits.max_steps", None),
    ("limits", "max_runtime_hours"): ("limits.max_runtime", 3600.0),
    ("limits", "max_runtime_seconds"): ("limits.max_runtime", 1.0),
    ("limits", "max_memory_gb"): ("limits.max_memory", 1e9),
    ("limits", "max_disk_gb"): ("limits.max_disk", 1e9),
    ("limits", "max_checkpoints"): ("checkpoints.keep_last", None),
    ("monitoring", "heartbeat_interval_seconds"): ("monitoring.heartbeat_interval", 1.0),
    ("monitoring", "resource_check_interval_seconds"): ("monitoring.resource_check_interval", 1.0),
    ("monitoring", "lease_ttl_seconds"): ("monitoring.lease_ttl", 1.0),
    ("monitoring", "stall_timeout_seconds"): ("monitoring.stall_timeout", 1.0),
    ("monitoring", "checkpoint_validation"): ("monitoring.checkpoint_validation", None),
    ("monitoring", "external_monitoring"): ("monitoring.external_monitoring", None),
}


def is_incident_form(data: Mapping[str, Any]) -> bool:
    return "training" in data and isinstance(data["training"], Mapping)


def set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in nested mappings; every mapping on the way is copied, so the caller's document is
    never changed (an override must not leak into the YAML it was applied to)."""
    node = target
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        child = dict(child) if isinstance(child, Mapping) else {}
        node[part] = child
        node = child
    node[leaf] = value


def translate_incident_form(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Return (native document, native key -> original key) for messages."""
    native: dict[str, Any] = {k: v for k, v in data.items() if k != "training"}
    renamed: dict[str, str] = {}
    training = data["training"]
    for section, body in training.items():
        if section == "failsafes" and isinstance(body, Mapping):
            for key, value in body.items():
                set_dotted(native, f"failsafes.{key}", value)
                renamed[f"failsafes.{key}"] = f"training.failsafes.{key}"
            continue
        if not isinstance(body, Mapping) or section not in ("limits", "monitoring"):
            # Unknown section: keep it where the native model will report it, under its original name.
            native[f"training.{section}"] = body
            renamed[f"training.{section}"] = f"training.{section}"
            continue
        for key, value in body.items():
            target, factor = _KEYS.get((section, key), (f"{section}.{key}", None))
            converted = value
            if factor is not None and isinstance(value, int | float) and not isinstance(value, bool):
                converted = value * factor
            set_dotted(native, target, converted)
            renamed[target] = f"training.{section}.{key}"
    return native, renamed


__all__ = ["is_incident_form", "set_dotted", "translate_incident_form"]
