"""Reading a config: YAML (native or the incident report's form), command-line and keyword overrides,
validation into :class:`TrainguardConfig`, unknown keys reported with their full path. Every error names
the key, the value and the rule, in one line."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from trainguard._os.files import TooLarge, read_limited
from trainguard.config._models import TrainguardConfig
from trainguard.config._project import set_dotted, translate
from trainguard.errors import MISSING, ConfigError

MAX_CONFIG_BYTES = 1 << 20


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
    try:
        data, how = translate(data)
    except ConfigError as refused:
        refused.source = where
        raise
    renamed = how.renamed
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, dotted, value)
    try:
        config = TrainguardConfig.model_validate(data)
    except ValidationError as error:
        problem = _format_validation_error(error, renamed)
        problem.source = where
        raise problem from None
    config.translation = how
    if source is not None:
        config.source = Path(source).resolve()
        base = config.source.parent
        if isinstance(config.store, Path) and not config.store.is_absolute():
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
        text = read_limited(path, MAX_CONFIG_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("config", str(path), "file not found") from None
    except IsADirectoryError:
        raise ConfigError("config", str(path), "is a directory, not a config file") from None
    except OSError as error:
        raise ConfigError("config", str(path), f"cannot be read: {error.strerror}") from None
    except TooLarge:
        rule = f"is larger than {MAX_CONFIG_BYTES // 1024} KiB; a config is a few KB (is it the right file?)"
        raise ConfigError("config", str(path), rule) from None
    except UnicodeDecodeError:
        raise ConfigError("config", str(path), "is not UTF-8 text (a binary file?)") from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError("(yaml)", str(path), "nested too deeply to be a config", source=str(path)) from None
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


__all__ = ["load_config", "parse_config", "unknown_keys"]
