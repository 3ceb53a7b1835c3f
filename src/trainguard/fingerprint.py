"""Feature-schema fingerprints (failure F5: wrong input features go unnoticed).

The canonical content of the feature files (parsed, so key order, whitespace, comments and ``0.10`` vs
``0.1`` do not matter - values do) and of inline values is hashed; the digest goes into every manifest,
the canonical content too, so a refusal can say *which* keys differ.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainguard._os.files import TooLarge, read_limited
from trainguard._os.hashing import hash_bytes, hash_file
from trainguard.errors import ConfigError


@dataclass(frozen=True)
class Fingerprint:
    digest: str
    content: dict[str, Any]  # canonical: what was hashed


def _canonical(value: Any, where: str) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)
        return int(value) if value.is_integer() else value  # 1.0 and 1 are the same constant
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)  # dates and other YAML scalars: by their text


_MAX_PARSED_BYTES = 16 << 20  # a YAML/JSON feature description; larger files are hashed as bytes


def _load_file(path: Path) -> Any:
    try:
        if path.suffix.lower() not in (".yaml", ".yml", ".json"):
            # An opaque file (binary, CSV, a scaler's parameters): only its exact bytes can be compared -
            # read as bytes, so neither a binary file nor a CRLF line ending is lost in decoding.
            return {"sha": hash_file(path)[1]}
        text = read_limited(path, _MAX_PARSED_BYTES).decode("utf-8")
    except IsADirectoryError:
        raise ConfigError("features", str(path), "is a directory, not a feature file") from None
    except OSError as error:
        raise ConfigError("features", str(path), f"cannot be read: {error.strerror or error}") from None
    except TooLarge:
        rule = f"is larger than {_MAX_PARSED_BYTES >> 20} MiB; name it without .yaml/.json to hash its bytes"
        raise ConfigError("features", str(path), rule) from None
    except UnicodeDecodeError:
        raise ConfigError("features", str(path), "is not UTF-8 text, as a .yaml/.json file must be") from None
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError("features", str(path), "nested too deeply") from None
    except yaml.YAMLError as error:
        raise ConfigError("features", str(path), f"malformed YAML/JSON: {error}") from None


def _is_parsed(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml", ".json")


def compute(sources: Iterable[str | Mapping[str, Any]], *, base: Path | None = None) -> Fingerprint | None:
    """Fingerprint the feature ``sources`` (file paths, relative to ``base``, and inline mappings);
    None when there are none.

    Mappings are merged at their top level, so the fingerprint depends on what the features *are*, not on
    what the files are called or where they live (the serving side's copy of ``features.yaml`` is usually
    somewhere else); a key defined twice is an error, a file that is not a mapping is keyed by its name.
    """
    content: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source in sources:
        if isinstance(source, Mapping):
            label, loaded = "inline features", dict(source)
        else:
            path = Path(source)
            if not path.is_absolute() and base is not None:
                path = base / path
            label, parsed = str(path), _load_file(path)
            # A YAML/JSON mapping merges at the top level; anything else (an opaque file's hash, a list) is
            # keyed by its file name - two Python feature files must not collide on one shared key.
            parsed_mapping = isinstance(parsed, Mapping) and _is_parsed(path)
            loaded = dict(parsed) if parsed_mapping else {path.name: parsed}
        for key, value in loaded.items():
            if str(key) in content:
                raise ConfigError(
                    "features", label, f"defines {str(key)!r} again (already in {origin[str(key)]})"
                )
            content[str(key)], origin[str(key)] = _canonical(value, str(key)), label
    if not content:
        return None
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return Fingerprint(hash_bytes(text.encode()), content)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            _flatten(child, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and value:
        for index, child in enumerate(value):
            _flatten(child, f"{prefix}[{index}]", out)
    else:
        out[prefix] = value


def differences(expected: Mapping[str, Any] | None, actual: Mapping[str, Any] | None) -> list[str]:
    """Dotted keys whose values differ, with both values, e.g. ``normalisation.price_std: 0.012 -> 0.015``."""
    left: dict[str, Any] = {}
    right: dict[str, Any] = {}
    _flatten(dict(expected or {}), "", left)
    _flatten(dict(actual or {}), "", right)
    changes = []
    for key in sorted(set(left) | set(right)):
        if key not in right:
            changes.append(f"{key}: {left[key]!r} -> (missing)")
        elif key not in left:
            changes.append(f"{key}: (missing) -> {right[key]!r}")
        elif left[key] != right[key]:
            changes.append(f"{key}: {left[key]!r} -> {right[key]!r}")
    return changes


__all__ = ["Fingerprint", "compute", "differences"]
