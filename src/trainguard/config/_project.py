"""The incident project's own config files, translated to the native form (``config check`` shows how).

Three shapes arrive from that project, besides the native one:

- the incident report's ``config/training.yaml``: ``training: {limits, monitoring, failsafes}``;
- its ``config/training.yaml`` as it really is: ``training: {max_episodes, learning_rate, ...}``;
- its ``config/process_limits.yaml``: top-level ``limits``, ``monitoring``, ``signals``, ``failsafes``,
  ``training``, beside sections of other concerns (``live_trading``, ``cleanup``...).

Every key trainguard can enforce is translated with its meaning (a runtime in hours becomes seconds, a
checkpoint count becomes retention); every key it cannot is listed once, with why, as "not enforced by
trainguard" - never silently dropped, never reported as an unknown typo. A failsafe it cannot honour (one
it has no mechanism for, one switched off, one without the limit it would enforce) is a ConfigError: a
file that believes in a defence trainguard would not give must not start. Keys keep their original names
in every message.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainguard._os import environment
from trainguard.errors import ConfigError

NATIVE_SECTIONS = (
    "run", "store", "registry", "features", "limits", "checkpoints", "monitoring", "watchdog", "gates",
    "failsafes", "signing", "notifications",
)  # fmt: skip
# Sections of the project's files that are sections here too (their unknown keys may be typos: warned).
_GUARD_SECTIONS = ("limits", "monitoring", "failsafes", "signals", "checkpoints", "watchdog", "notifications")


def _times(factor: float, integer: bool = False) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value * factor) if integer else value * factor
        return value  # left for the native validation to report with the original key

    return convert


def _same(value: Any) -> Any:
    return value


# The project's key (sections of ``training:`` hoisted) -> (native key, conversion).
TRANSLATIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "limits.max_episodes": ("limits.max_episodes", _same),
    "limits.max_steps": ("limits.max_steps", _same),
    "limits.max_runtime_hours": ("limits.max_runtime", _times(3600.0)),
    "limits.max_runtime_seconds": ("limits.max_runtime", _same),
    "limits.max_memory_gb": ("limits.max_memory", _times(1e9, integer=True)),
    "limits.max_disk_gb": ("limits.max_disk", _times(1e9, integer=True)),
    "limits.max_cpu_percent": ("limits.max_cpu_percent", _same),
    "limits.max_checkpoints": ("checkpoints.keep_last", _same),
    "monitoring.heartbeat_interval_seconds": ("monitoring.heartbeat_interval", _same),
    "monitoring.resource_check_interval_seconds": ("monitoring.resource_check_interval", _same),
    "monitoring.lease_ttl_seconds": ("monitoring.lease_ttl", _same),
    "monitoring.stall_timeout_seconds": ("monitoring.stall_timeout", _same),
    "monitoring.memory_alert_threshold_gb": ("limits.warn_memory", _times(1e9, integer=True)),
    "monitoring.runtime_warning_hours": ("limits.warn_runtime", _times(3600.0)),
    "monitoring.episode_warning_count": ("limits.warn_episodes", _same),
    "monitoring.cpu_window_seconds": ("limits.cpu_window", _same),
    "monitoring.slack_webhook_url": ("notifications.webhook", _same),
    "signals.graceful_shutdown_timeout_seconds": ("watchdog.grace", _same),
    "failsafes.enforce_episode_limit": ("failsafes.enable_episode_limit", _same),
    "failsafes.enforce_runtime_limit": ("failsafes.enable_runtime_limit", _same),
    "failsafes.watchdog_check_interval_seconds": ("watchdog.interval", _same),
    "training.max_episodes": ("limits.max_episodes", _same),
    "training.max_steps": ("limits.max_steps", _same),
    "training.save_checkpoint_every_episodes": ("checkpoints.every_episodes", _same),
    "training.max_episodes_without_improvement": ("limits.max_episodes_without_improvement", _same),
    "training.early_stop_patience_episodes": ("limits.max_episodes_without_improvement", _same),
    "training.early_stop_min_improvement": ("limits.min_improvement", _same),
}
# Native keys several project keys may set: the strictest (smallest) wins - the project's own file sets
# both max_episodes_without_improvement and early_stop_patience_episodes, which trainguard enforces as one.
_SMALLEST_WINS = ("limits.", "checkpoints.every_episodes", "monitoring.heartbeat_interval")

# Failsafes trainguard honours: key -> (what must hold, why it holds). Any other failsafe is refused.
_FAILSAFES = {
    "enable_episode_limit": ("limits.max_episodes", "the episode budget, cumulative over restarts"),
    "enable_runtime_limit": ("limits.max_runtime", "the runtime budget, cumulative over restarts"),
    "enforce_episode_limit": ("limits.max_episodes", "the episode budget, cumulative over restarts"),
    "enforce_runtime_limit": ("limits.max_runtime", "the runtime budget, cumulative over restarts"),
    "enforce_memory_limit": ("limits.max_memory", "the memory ceiling of the process tree"),
    "enable_external_monitor": ("", "trainguard watchdog (deploy/trainguard-watchdog.service)"),
    "emergency_stop_on_disk_full": ("", "a full disk fails the save with nothing committed; the Guard stops"),
}
_OTHER_FAILSAFES = ("watchdog_check_interval_seconds", "watchdog_timeout_multiplier")

NOT_ENFORCED_REASONS = {
    "live_trading": "live trading is the serving side: trainguard moves the live pointer only through its "
    "gates (promote, rollback); the broker connection and order limits are the live system's",
    "cleanup": "trainguard never deletes by age: retention (checkpoints.keep_last, keep_best) decides, and "
    "what it evicts goes to the store's .trash",
    "logging": "logging is the trainer's own",
    "training": "a training setting of the trainer's own: trainguard does not change how it trains",
    "signals": "trainguard's stop is always a signal, then the grace (watchdog.grace), then SIGKILL",
    "monitoring": "not a check trainguard makes",
}
_DEFAULT_REASON = "not a setting trainguard has (it guards budgets, leases, checkpoints and the live pointer)"


@dataclass
class Translation:
    """How a file was read: native key -> the original key it came from (for messages, ``config check``),
    and the keys trainguard does not enforce, with why."""

    renamed: dict[str, str] = field(default_factory=dict)
    translated: dict[str, str] = field(default_factory=dict)  # original -> native
    not_enforced: dict[str, str] = field(default_factory=dict)  # original -> reason
    honoured: dict[str, str] = field(default_factory=dict)  # failsafe (original) -> how

    @property
    def anything(self) -> bool:
        return bool(self.translated or self.not_enforced or self.honoured)


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


def get_dotted(source: Mapping[str, Any], dotted: str) -> Any:
    node: Any = source
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _entries(data: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(canonical key, original key, value) for the keys of the project's sections: ``training.limits.x``
    is canonically ``limits.x``; native sections are passed through whole (canonical == original)."""
    found: list[tuple[str, str, Any]] = []
    for section, body in data.items():
        key = str(section)
        if key == "training" and isinstance(body, Mapping):
            for name, value in body.items():
                if isinstance(value, Mapping) and name in _GUARD_SECTIONS:
                    found += [(f"{name}.{k}", f"training.{name}.{k}", v) for k, v in value.items()]
                else:
                    found.append((f"training.{name}", f"training.{name}", value))
        elif isinstance(body, Mapping) and key in _GUARD_SECTIONS:
            found += [(f"{key}.{k}", f"{key}.{k}", v) for k, v in body.items()]
        else:
            found.append((key, key, body))
    return found


def translate(data: Mapping[str, Any]) -> tuple[dict[str, Any], Translation]:
    """The native document for ``data`` and how it was translated. Raises ConfigError for a failsafe that
    cannot be honoured and for a file that is not a trainguard config at all."""
    native: dict[str, Any] = {}
    how = Translation()
    failsafes: list[tuple[str, str, Any]] = []
    multiplier: tuple[str, Any] | None = None
    for canonical, original, value in _entries(data):
        section, _, leaf = canonical.partition(".")
        if canonical in TRANSLATIONS:
            target, convert = TRANSLATIONS[canonical]
            _put(native, how, target, original, convert(value))
        elif section == "failsafes" and leaf == "watchdog_timeout_multiplier":
            multiplier = (original, value)
        elif section == "failsafes":
            failsafes.append((leaf, original, value))
        elif section in NATIVE_SECTIONS and section != "signals":
            _put(native, how, canonical, original, value, translated=original != canonical)
        elif section not in NOT_ENFORCED_REASONS and difflib.get_close_matches(
            section, NATIVE_SECTIONS, cutoff=0.8
        ):
            _put(native, how, canonical, original, value, translated=False)  # a typo: warned as unknown
        else:
            top = original.split(".")[0]
            how.not_enforced[original] = NOT_ENFORCED_REASONS.get(top, _DEFAULT_REASON)
    for original, value in _anywhere(data, "enable_slack_alerts"):
        _slack(native, how, original, value, data)
    if multiplier is not None:
        _lease_from_multiplier(native, how, *multiplier)
    for leaf, original, value in failsafes:
        _failsafe(native, how, leaf, original, value)
    meaningful = [k for k in native if k != "features"]
    if data and not meaningful and not how.honoured:
        keys = ", ".join(sorted(str(k) for k in data)[:6])
        raise ConfigError(
            "(top level)",
            keys,
            "not a trainguard config: none of its keys is a budget, limit, checkpoint or supervision "
            "setting (a features or live-settings file?)",
        )
    return native, how


def _put(
    native: dict[str, Any],
    how: Translation,
    target: str,
    original: str,
    value: Any,
    *,
    translated: bool = True,
) -> None:
    before = get_dotted(native, target)
    if before is not None and target.startswith(_SMALLEST_WINS) and _number(before) and _number(value):
        value = min(before, value)  # two of the project's keys, one limit here: the stricter
    elif before is not None:
        first = how.renamed.get(target, target)
        raise ConfigError(original, value, f"sets {target}, as {first} already does: give one of them")
    set_dotted(native, target, value)
    how.renamed.setdefault(target, original)
    if translated:
        how.translated[original] = target


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _anywhere(data: Mapping[str, Any], name: str, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every key called ``name``, at any depth (the project keeps its alert switch
    wherever its author thought of it)."""
    found = []
    for key, value in data.items():
        if key == name:
            found.append((f"{prefix}{key}", value))
        elif isinstance(value, Mapping):
            found += _anywhere(value, name, f"{prefix}{key}.")
    return found


def _slack(
    native: dict[str, Any], how: Translation, original: str, value: Any, data: Mapping[str, Any]
) -> None:
    """``enable_slack_alerts: true`` is a webhook notification; without a URL to send to it would be a
    promise nobody keeps, so it is refused."""
    if value is not True:
        how.translated[original] = "notifications.events = [] (off)"
        set_dotted(native, "notifications.events", [])
        return
    urls = [url for _, url in _anywhere(data, "slack_webhook_url") + _anywhere(data, "webhook") if url]
    if urls and get_dotted(native, "notifications.webhook") is None:
        set_dotted(native, "notifications.webhook", urls[0])
    if not urls and not os.environ.get(environment.WEBHOOK_URL):
        raise ConfigError(
            original,
            value,
            f"alerts need a webhook URL: set notifications.webhook or ${environment.WEBHOOK_URL} "
            "(a Slack incoming webhook works as is)",
        )
    how.translated[original] = "notifications (webhook: warnings, stops, fences, rogue writers)"


def _lease_from_multiplier(native: dict[str, Any], how: Translation, original: str, value: Any) -> None:
    # The project's watchdog declared a process dead after `interval x multiplier` without a heartbeat;
    # here that is the lease: it expires `ttl` after the last renewal, and the watchdog acts on it.
    heartbeat = get_dotted(native, "monitoring.heartbeat_interval")
    beat = heartbeat if _number(heartbeat) else 5.0
    if not _number(value) or value < 2:
        raise ConfigError(
            original, value, "must be a number of at least 2 (one late heartbeat is not a death)"
        )
    _put(native, how, "monitoring.lease_ttl", original, float(beat) * float(value))


def _failsafe(native: dict[str, Any], how: Translation, leaf: str, original: str, value: Any) -> None:
    if leaf not in _FAILSAFES:
        raise ConfigError(
            original,
            value,
            "trainguard has no such failsafe and cannot honour it: remove it or enforce it elsewhere",
        )
    needs, what = _FAILSAFES[leaf]
    if value is not True:
        raise ConfigError(
            original, value, "cannot be disabled: trainguard always enforces it; remove the key or set true"
        )
    if needs and get_dotted(native, needs) is None:
        raise ConfigError(original, value, f"cannot be honoured: no limit is set for it ({needs})")
    if leaf in ("enable_episode_limit", "enable_runtime_limit", "enable_external_monitor"):
        set_dotted(native, f"failsafes.{leaf}", True)
    how.honoured[original] = what


__all__ = ["NATIVE_SECTIONS", "TRANSLATIONS", "Translation", "get_dotted", "set_dotted", "translate"]
