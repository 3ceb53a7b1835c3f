"""Metric thresholds as configs write them (``">= 0"``, ``"<= 50"``): one syntax, parsed in one place for
the config's validation and for the metrics gate that applies them."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable

from trainguard.errors import InvalidArgument

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_THRESHOLD = re.compile(r"^\s*(>=|<=|>|<|==|!=)\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)\s*$")


def parse_threshold(rule: str) -> tuple[str, float]:
    """``">= 0"`` -> ``(">=", 0.0)``; InvalidArgument for anything else."""
    match = _THRESHOLD.match(rule) if isinstance(rule, str) else None
    if not match:
        raise InvalidArgument("threshold", rule, "must look like '>= 0' or '<= 50'")
    bound = float(match[2])
    if not math.isfinite(bound):
        raise InvalidArgument("threshold", rule, "must compare with a finite number")
    return match[1], bound


__all__ = ["COMPARISONS", "parse_threshold"]
