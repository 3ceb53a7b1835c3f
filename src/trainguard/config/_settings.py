"""How keyword settings (``Guard(max_episodes=50)``) map onto the config keys they override."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from trainguard.config._models import TrainguardConfig
from trainguard.errors import ConfigError

_SECTIONS = ("limits", "checkpoints", "monitoring", "watchdog", "gates", "failsafes")
_TOP_LEVEL = ("run", "store", "registry", "features")


def settings_to_overrides(settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword settings (``max_episodes=50``, ``heartbeat_interval="1s"``, ``checkpoints__keep_last=3``) as
    the dotted config keys they override."""
    where: dict[str, str] = {}
    for section in _SECTIONS:
        model = TrainguardConfig.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for name, info in model.model_fields.items():
            where.setdefault(name, f"{section}.{info.alias or name}")
    result = {}
    for key, value in settings.items():
        if key in _TOP_LEVEL:
            result[key] = value
        elif "__" in key:
            result[key.replace("__", ".")] = value
        elif key in where:
            result[where[key]] = value
        else:
            raise ConfigError(
                key, value, "unknown setting; use a config key such as max_episodes or lease_ttl"
            )
    return result


__all__ = ["settings_to_overrides"]
