"""Configuration: the trainguard-native YAML and the incident report's ``config/training.yaml``, validated
into typed models. Every error names the key, the value and the rule, in one line."""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from trainguard.config_legacy import is_incident_form, translate_incident_form
from trainguard.errors import MISSING, ConfigError
from trainguard.names import validate_name
from trainguard.units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Fraction = Annotated[float, Field(gt=0, le=1)]

_THRESHOLD = re.compile(r"^\s*(>=|<=|>|<|==|!=)\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)\s*$")


class _Section(BaseModel):
    # Extras are allowed so they can be *reported* (warning, or error in strict mode) with their full path
    # instead of pydantic's generic message - never silently dropped.
    model_config = ConfigDict(extra="allow", populate_by_name=True, validate_default=True)


class Limits(_Section):
    max_episodes: Annotated[int, Field(ge=1)] | None = None
    max_steps: Annotated[int, Field(ge=1)] | None = None
    max_runtime: Duration | None = None
    max_memory: Size | None = None
    max_disk: Size | None = None
    warn_at: Fraction = 0.9

    @field_validator("max_runtime", "max_memory", "max_disk")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be greater than 0 (leave the key out for no limit)")
        return value


class BestMetric(_Section):
    name: str
    mode: Literal["min", "max"] = "max"


class Checkpoints(_Section):
    every_episodes: Annotated[int, Field(ge=1)] | None = 25
    format: Literal["safetensors", "torch"] = "safetensors"
    async_: bool = Field(False, alias="async")
    keep_last: Annotated[int, Field(ge=1)] | None = 10
    keep_best: Annotated[int, Field(ge=0)] = 1
    best_metric: BestMetric | None = None
    keep_every: Annotated[int, Field(ge=1)] | None = None


class Monitoring(_Section):
    heartbeat_interval: Duration = 5.0
    # 0 (the default) derives max(30s, 3 heartbeats), so a config that only sets a slow heartbeat (the
    # incident report's 60 s) still gets a lease that survives one late beat.
    lease_ttl: Duration = 0.0
    stall_timeout: Duration = 600.0
    resource_check_interval: Duration = 30.0
    checkpoint_validation: bool = True
    external_monitoring: bool = True

    @model_validator(mode="after")
    def _heartbeat_fits_ttl(self) -> Monitoring:
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be greater than 0")
        if self.lease_ttl == 0:
            self.lease_ttl = max(30.0, 3 * self.heartbeat_interval)
        if self.heartbeat_interval * 2 > self.lease_ttl:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat_interval:g}s) must be at most half of lease_ttl "
                f"({self.lease_ttl:g}s), or one late heartbeat loses the lease"
            )
        return self


class Watchdog(_Section):
    interval: Duration = 5.0
    grace: Duration = 30.0
    rogue_action: Literal["report", "kill"] = "report"


class Gates(_Section):
    max_action_share: Fraction = 0.95
    min_action_entropy: Annotated[float, Field(ge=0)] | None = None
    min_decisions: Annotated[int, Field(ge=0)] = 100
    metrics: dict[str, str] = Field(default_factory=dict)
    no_worse_than_live: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    evaluator: str | None = None
    auto_promote: bool = False  # the Guard promotes each checkpoint that passes every gate

    @field_validator("metrics")
    @classmethod
    def _thresholds(cls, value: dict[str, str]) -> dict[str, str]:
        for name, rule in value.items():
            if not isinstance(rule, str) or not _THRESHOLD.match(rule):
                raise ValueError(f"metric {name!r}: threshold {rule!r} must look like '>= 0' or '<= 50'")
        return value

    @field_validator("evaluator")
    @classmethod
    def _module_function(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:[\w.]+", value):
            raise ValueError("must be 'module:function', e.g. 'examples.swt.evaluate:evaluate'")
        return value


_CANNOT_DISABLE = (
    "cannot be disabled (the incident report marks it 'Cannot be disabled'); remove the key or set true"
)


class Failsafes(_Section):
    enable_episode_limit: bool = True
    enable_runtime_limit: bool = True
    enable_external_monitor: bool = True

    @field_validator("enable_episode_limit", "enable_runtime_limit", "enable_external_monitor")
    @classmethod
    def _always_on(cls, value: bool) -> bool:
        if value is not True:
            raise ValueError(_CANNOT_DISABLE)
        return value


class TrainguardConfig(_Section):
    run: str | None = None
    store: Path | None = None
    registry: str | None = None
    features: list[str | dict[str, Any]] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    checkpoints: Checkpoints = Field(default_factory=Checkpoints)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    watchdog: Watchdog = Field(default_factory=Watchdog)
    gates: Gates = Field(default_factory=Gates)
    failsafes: Failsafes = Field(default_factory=Failsafes)
    # Not from the file: where it came from, for resolving relative paths and for messages.
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("run")
    @classmethod
    def _run_name(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                validate_name(value, "run")
            except ValueError as error:
                raise ValueError(error.rule if hasattr(error, "rule") else str(error)) from error
        return value

    @field_validator("features", mode="before")
    @classmethod
    def _feature_list(cls, value: object) -> object:
        return [value] if isinstance(value, str | dict) else value

    def require_run(self) -> str:
        if self.run is None:
            raise ConfigError(
                "run",
                MISSING,
                "required: set 'run:' in the config or pass --run NAME",
                source=str(self.source) if self.source else None,
            )
        return self.run

    def store_path(self) -> Path:
        """The store directory: as configured (relative to the config file) or ./checkpoints/<run>."""
        if self.store is not None:
            return self.store
        base = self.source.parent if self.source else Path.cwd()
        return (base / "checkpoints" / self.require_run()).resolve()

    def effective_limits(self) -> dict[str, Any]:
        """The limits (and the timings judged against them) recorded with the run, so the store, the
        watchdog and ``status`` judge by the numbers this run was given."""
        limits = self.limits.model_dump(exclude_none=True)
        monitoring, watchdog = self.monitoring, self.watchdog
        limits.update(
            heartbeat_interval=monitoring.heartbeat_interval,
            lease_ttl=monitoring.lease_ttl,
            stall_timeout=monitoring.stall_timeout,
            grace=watchdog.grace,
            rogue_action=watchdog.rogue_action,
        )
        return limits


def unknown_keys(model: BaseModel, prefix: str = "") -> list[tuple[str, Any, list[str]]]:
    """(dotted key, value, known keys at that level) for every key no model field took."""
    found = []
    known = [f.alias or name for name, f in type(model).model_fields.items()]
    for key, value in (model.model_extra or {}).items():
        found.append((f"{prefix}{key}", value, known))
    for name in type(model).model_fields:
        child = getattr(model, name)
        if isinstance(child, BaseModel):
            found.extend(unknown_keys(child, f"{prefix}{name}."))
    return found


def _unknown_rule(key: str, known: list[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys here: {', '.join(sorted(known))}"
    return f"unknown key{hint}"


def _apply_override(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def _format_validation_error(error: ValidationError, renamed: Mapping[str, str]) -> ConfigError:
    first = error.errors()[0]
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]).lstrip(".")
    key = renamed.get(key, key)
    value = first.get("input", MISSING)
    if first["type"] == "missing":
        value = MISSING
    message = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if isinstance(value, Mapping) and first["type"].startswith("value_error"):
        value = MISSING if not value else dict(value)
    more = len(error.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(key or "(top level)", value, message)


def parse_config(
    data: object,
    *,
    source: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> tuple[TrainguardConfig, list[str]]:
    """Validate a loaded YAML document; returns the config and warnings (unknown keys when not strict)."""
    where = str(source) if source else None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            "(top level)", type(data).__name__, "a config must be a mapping of keys to values", source=where
        )
    renamed: dict[str, str] = {}
    if is_incident_form(data):
        data, renamed = translate_incident_form(data)
    data = dict(data)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _apply_override(data, dotted, value)
    try:
        config = TrainguardConfig.model_validate(data)
    except ValidationError as error:
        problem = _format_validation_error(error, renamed)
        problem.source = where
        raise problem from None
    if source is not None:
        config.source = Path(source).resolve()
        base = config.source.parent
        if config.store is not None and not config.store.is_absolute():
            config.store = (base / config.store).resolve()
    problems = []
    for key, value, known in unknown_keys(config):
        shown = renamed.get(key, key)
        if strict:
            raise ConfigError(shown, value, _unknown_rule(shown, known), source=where)
        problems.append(f"{where + ': ' if where else ''}{shown}: {_unknown_rule(shown, known)} (ignored)")
    return config, problems


def load_config(
    path: str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    strict: bool = False,
    warn: bool = True,
) -> TrainguardConfig:
    """Read and validate a YAML config file (native or incident-report form)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("config", str(path), "file not found") from None
    except OSError as error:
        raise ConfigError("config", str(path), f"cannot be read: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError("(yaml)", where, f"malformed YAML: {problem}", source=str(path)) from None
    config, problems = parse_config(data, source=path, overrides=overrides, strict=strict)
    if warn:
        for problem in problems:
            warnings.warn(problem, UserWarning, stacklevel=2)
    return config


__all__ = [
    "Checkpoints",
    "Failsafes",
    "Gates",
    "Limits",
    "Monitoring",
    "TrainguardConfig",
    "Watchdog",
    "load_config",
    "parse_config",
    "unknown_keys",
]
