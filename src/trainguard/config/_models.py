"""The typed configuration: one pydantic model per section of the native YAML (see docs/design.md,
"Configuration")."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trainguard.config._project import Translation
from trainguard.config._thresholds import parse_threshold
from trainguard.config.units import parse_duration, parse_size
from trainguard.errors import MISSING, ConfigError, InvalidArgument, InvalidName
from trainguard.names import URL_SCHEME, bucket_url, default_registry_url, registry_url, validate_name

T = TypeVar("T")


def _rule_only(parse: Callable[[object], T]) -> Callable[[object], T]:
    """pydantic keys the message with the config path itself: pass it only the rule that was broken."""

    def validate(value: object) -> T:
        try:
            return parse(value)
        except InvalidArgument as error:
            raise ValueError(error.rule) from None

    return validate


def _not_bool(value: object) -> object:
    # YAML `every_episodes: true` is a typo, not the count 1 (pydantic would take True for 1).
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")  # noqa: TRY004 - pydantic reports ValueErrors
    return value


def _no_nul(value: object) -> object:
    # A NUL cannot be in a path or URL: every system call would refuse it later, far from the config.
    if isinstance(value, str) and "\0" in value:
        raise ValueError("contains a NUL character")
    return value


Duration = Annotated[float, BeforeValidator(_rule_only(parse_duration))]
# How often something is checked or how long it is waited for: below 10 ms a loop would spin, above 30 days
# nothing would ever be noticed (a lease that never expires).
Timing = Annotated[
    float, BeforeValidator(_rule_only(lambda v: parse_duration(v, minimum=0.01, maximum=30 * 86400.0)))
]
Size = Annotated[int, BeforeValidator(_rule_only(parse_size))]
Fraction = Annotated[float, Field(gt=0, le=1), BeforeValidator(_not_bool)]
Count = Annotated[int, Field(ge=1, le=2**63 - 1), BeforeValidator(_not_bool)]
Amount = Annotated[int, Field(ge=0, le=2**31 - 1), BeforeValidator(_not_bool)]
Score = Annotated[float, Field(ge=0, allow_inf_nan=False), BeforeValidator(_not_bool)]


class _Section(BaseModel):
    # Extras are allowed so they can be *reported* (warning, or error in strict mode) with their full path
    # instead of pydantic's generic message - never silently dropped.
    model_config = ConfigDict(extra="allow", populate_by_name=True, validate_default=True)


Percent = Annotated[float, Field(gt=0, le=100_000, allow_inf_nan=False), BeforeValidator(_not_bool)]
Improvement = Annotated[float, Field(ge=0, allow_inf_nan=False), BeforeValidator(_not_bool)]


class Limits(_Section):
    max_episodes: Count | None = None
    max_steps: Count | None = None
    max_runtime: Duration | None = None
    max_memory: Size | None = None
    max_disk: Size | None = None
    warn_at: Fraction = 0.9
    # CPU of the process tree, in percent of one core (200 = two cores), averaged over cpu_window: a
    # sustained level, not a spike (a checkpoint's hashing briefly uses every core).
    max_cpu_percent: Percent | None = None
    cpu_window: Timing = 60.0
    # Warnings (an event and a notification, once per process) at absolute levels, beside warn_at.
    warn_memory: Size | None = None
    warn_runtime: Duration | None = None
    warn_episodes: Count | None = None
    # Stop when the best value of checkpoints.best_metric (default: the reported "reward") has not improved
    # by more than min_improvement for this many episodes.
    max_episodes_without_improvement: Count | None = None
    min_improvement: Improvement = 0.0

    @field_validator("max_runtime", "max_memory", "max_disk", "warn_memory", "warn_runtime")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be greater than 0 (leave the key out for no limit)")
        return value


class BestMetric(_Section):
    name: str
    mode: Literal["min", "max"] = "max"


class Checkpoints(_Section):
    every_episodes: Count | None = 25
    format: Literal["safetensors", "torch"] = "safetensors"
    async_: bool = Field(False, alias="async")
    keep_last: Annotated[int, Field(ge=1, le=2**31 - 1), BeforeValidator(_not_bool)] | None = 10
    keep_best: Amount = 1
    best_metric: BestMetric | None = None
    keep_every: Count | None = None


class Monitoring(_Section):
    heartbeat_interval: Timing = 5.0
    # 0 (the default) derives max(30s, 3 heartbeats), so a config that only sets a slow heartbeat (the
    # incident report's 60 s) still gets a lease that survives one late beat.
    lease_ttl: Duration = 0.0  # 0, or a Timing: checked below (0 means derived)
    stall_timeout: Timing = 600.0
    resource_check_interval: Timing = 30.0
    checkpoint_validation: bool = True
    external_monitoring: bool = True

    @field_validator("lease_ttl")
    @classmethod
    def _ttl_range(cls, value: float) -> float:
        if value != 0 and not 0.1 <= value <= 7 * 86400:
            raise ValueError("must be 0 (derived from the heartbeat) or between 0.1s and 7d")
        return value

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
    interval: Timing = 5.0
    grace: Annotated[float, BeforeValidator(_rule_only(lambda v: parse_duration(v, maximum=86400.0)))] = 30.0
    rogue_action: Literal["report", "kill"] = "report"


class Gates(_Section):
    max_action_share: Fraction = 0.95
    min_action_entropy: Score | None = None
    min_decisions: Amount = 100
    metrics: dict[str, str] = Field(default_factory=dict)
    no_worse_than_live: dict[str, Score] = Field(default_factory=dict)
    evaluator: str | None = None
    auto_promote: bool = False  # the Guard promotes each checkpoint that passes every gate

    @field_validator("metrics")
    @classmethod
    def _thresholds(cls, value: dict[str, str]) -> dict[str, str]:
        for name, rule in value.items():
            try:
                parse_threshold(rule)
            except InvalidArgument as error:
                raise ValueError(f"metric {name!r}: threshold {rule!r} {error.rule}") from None
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


NotifyKind = Literal["warning", "stop", "fence", "rogue"]
NOTIFY_KINDS: tuple[NotifyKind, ...] = ("warning", "stop", "fence", "rogue")


class Notifications(_Section):
    """A webhook (JSON POST, Slack-compatible ``text``) for warnings, stops, fences and rogue findings. The
    URL may also come from $TRAINGUARD_WEBHOOK_URL (a Slack webhook is a secret: keep it out of the file)."""

    webhook: str | None = None
    events: list[NotifyKind] = Field(default_factory=lambda: [*NOTIFY_KINDS])
    timeout: Timing = 5.0

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


class SigningSettings(_Section):
    """Signed manifests (``trainguard.checkpoints.signing``): ``key`` signs (writers), ``public_key``
    checks (readers; defaults to the key's own), ``required`` refuses unsigned checkpoints. Paths are
    relative to the config file; ``signing: required`` is short for ``{required: true}`` with the keys
    from the environment."""

    key: Path | None = None
    public_key: Path | None = None
    required: bool = False

    @field_validator("key", "public_key", mode="before")
    @classmethod
    def _path_text(cls, value: object) -> object:
        return _no_nul(value)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        if value in ("required", "optional"):
            return {"required": value == "required"}
        return value


class TrainguardConfig(_Section):
    run: str | None = None
    store: Path | str | None = None  # a str is an s3:// URL (the validator makes every other a Path)
    registry: str | None = Field(default=None, validate_default=True)
    features: list[str | dict[str, Any]] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    checkpoints: Checkpoints = Field(default_factory=Checkpoints)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    watchdog: Watchdog = Field(default_factory=Watchdog)
    gates: Gates = Field(default_factory=Gates)
    failsafes: Failsafes = Field(default_factory=Failsafes)
    signing: SigningSettings = Field(default_factory=SigningSettings)
    notifications: Notifications = Field(default_factory=Notifications)
    # Not from the file: where it came from, for resolving relative paths and for messages.
    source: Path | None = Field(default=None, exclude=True)
    # How a project's own file was read (translated keys, keys not enforced, failsafes honoured).
    translation: Translation = Field(default_factory=Translation, exclude=True)

    @field_validator("run")
    @classmethod
    def _run_name(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                validate_name(value, "run")
            except InvalidName as error:
                raise ValueError(error.rule) from error
        return value

    @field_validator("features", mode="before")
    @classmethod
    def _feature_list(cls, value: object) -> object:
        value = [value] if isinstance(value, str | dict) else value
        for item in value if isinstance(value, list) else ():
            _no_nul(item)
        return value

    @field_validator("store", mode="before")
    @classmethod
    def _path_text(cls, value: object) -> object:
        if isinstance(value, str) and URL_SCHEME.match(value):
            # Kept as the URL it is: Path("s3://b/p") would be the local directory "s3:/b/p".
            if not value.startswith("s3://"):
                raise ValueError("a store is a directory or an s3://BUCKET[/PREFIX] URL")
            try:
                bucket_url(value)
            except InvalidArgument as error:
                raise ValueError(error.rule) from None
            return value.rstrip("/")
        _no_nul(value)
        return Path(value) if isinstance(value, str) else value

    @field_validator("registry")
    @classmethod
    def _registry_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and isinstance(info.data.get("store"), str):  # an s3:// store
            raise ValueError(
                f"store {info.data['store']} needs a registry (PostgreSQL, or sqlite:///PATH on a local "
                "disk): a registry is never kept on the object store"
            )
        if value is not None:
            try:
                registry_url(value)
            except InvalidArgument as error:
                raise ValueError(error.rule) from None
        return value

    def require_run(self) -> str:
        if self.run is None:
            raise ConfigError(
                "run",
                MISSING,
                "required: set 'run:' in the config or give run=NAME",
                source=str(self.source) if self.source else None,
            )
        return self.run

    def store_path(self) -> Path | str:
        """The store: as configured (a directory relative to the config file, or an s3:// URL) or
        ./checkpoints/<run>."""
        if self.store is not None:
            return self.store
        base = self.source.parent if self.source else Path.cwd()
        return (base / "checkpoints" / self.require_run()).resolve()

    def signing_paths(self) -> tuple[Path | None, Path | None]:
        """(private key, public key) as configured, relative paths resolved against the config file."""
        base = self.source.parent if self.source else Path.cwd()

        def resolved(path: Path | None) -> Path | None:
            return None if path is None else (base / path.expanduser()).resolve()

        return resolved(self.signing.key), resolved(self.signing.public_key)

    def registry_url(self) -> str:
        """The registry: as configured, or the default one inside the store."""
        return self.registry or default_registry_url(self.store_path())

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


__all__ = [
    "NOTIFY_KINDS",
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
]
