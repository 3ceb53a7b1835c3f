"""Durations and sizes as people write them in configs: ``24h``, ``90s``, ``4GB``, ``512MiB``, or numbers.

Sizes follow the Kubernetes convention: ``GB`` is 10^9 bytes, ``GiB`` is 2^30. Durations are seconds.
"""

from __future__ import annotations

import math
import re

from trainguard.errors import InvalidArgument

_DURATION = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|hours?|d|days?)?\s*$"
)
_DURATION_UNITS = {
    "ms": 0.001, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}  # fmt: skip
# Sane ranges: nothing trainguard times runs for longer than ten years, and no size exceeds what a signed
# 64-bit integer (the registry's) holds. Beyond them a value is a typo, or an attempt to switch a limit off.
MAX_DURATION = 10 * 365 * 86400.0
MAX_SIZE = 2**63 - 1
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_duration(value: object, *, minimum: float = 0.0, maximum: float = MAX_DURATION) -> float:
    """Seconds from ``90``, ``90.5``, ``"90s"``, ``"10m"``, ``"24h"``, ``"2d"``, within ``minimum`` ..
    ``maximum``; else InvalidArgument."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value.lower())):
        seconds = float(match[1]) * _DURATION_UNITS[match[2] or "s"]
    else:
        raise InvalidArgument("duration", value, "must be seconds or a string like '90s', '10m', '24h'")
    if not math.isfinite(seconds) or not minimum <= seconds <= maximum:
        shown = f"{minimum:g}s" if minimum < 60 else format_duration(minimum)
        raise InvalidArgument("duration", value, f"must be between {shown} and {format_duration(maximum)}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from ``1024``, ``"4GB"`` (4*10^9), ``"4GiB"`` (4*2^30), ``"512MiB"``; else InvalidArgument."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        size = float(value)
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        unit = (match[2] or "b").lower()
        base, power = (1024 if "i" in unit else 1000), _SIZE_POWERS.get(unit[0], 0)
        size = float(match[1]) * base**power
    else:
        raise InvalidArgument("size", value, "must be a number of bytes or a string like '4GB', '512MiB'")
    if not math.isfinite(size) or not 0 <= size <= MAX_SIZE:
        raise InvalidArgument("size", value, f"must be between 0 and {MAX_SIZE} bytes")
    return int(size)


def format_duration(seconds: float) -> str:
    if seconds >= 86400 * 2:
        return f"{seconds / 86400:.0f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}m"
    return f"{seconds:.1f}s"


def format_size(size: float) -> str:
    """SI units, matching how configs are read (4GB = 4*10^9 bytes)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1000
    return f"{size:.1f}TB"


__all__ = ["MAX_DURATION", "MAX_SIZE", "format_duration", "format_size", "parse_duration", "parse_size"]
