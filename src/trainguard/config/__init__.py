"""Configuration: the trainguard-native YAML and the incident report's ``config/training.yaml``, validated
into typed models; durations and sizes as people write them; keyword overrides (see docs/design.md,
"Configuration")."""

from __future__ import annotations

from trainguard.config._loading import load_config, parse_config, unknown_keys
from trainguard.config._models import (
    BestMetric,
    Checkpoints,
    Failsafes,
    Gates,
    Limits,
    Monitoring,
    Notifications,
    SigningSettings,
    TrainguardConfig,
    Watchdog,
)
from trainguard.config._settings import settings_to_overrides
from trainguard.config._thresholds import COMPARISONS, parse_threshold

__all__ = [
    "COMPARISONS",
    "BestMetric",
    "Checkpoints",
    "Failsafes",
    "Gates",
    "Limits",
    "Monitoring",
    "Notifications",
    "SigningSettings",
    "TrainguardConfig",
    "Watchdog",
    "load_config",
    "parse_config",
    "parse_threshold",
    "settings_to_overrides",
    "unknown_keys",
]
