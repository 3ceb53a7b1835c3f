"""Budgets: which there are, how a restart may change a run's limits, how spend is charged ahead and judged
(see docs/design.md, "Budgets"). The rules live here once; the Guard, the launcher, the watchdog, the
incident scan, the CLI and the metrics all use them, and the registry applies them in its transactions."""

from __future__ import annotations

from trainguard.budget._counters import BudgetWarnings, ReservedCounter, Runtime, warn_log
from trainguard.budget._levels import (
    WARN_LEVELS,
    CpuOverrun,
    CpuWindow,
    LevelWarnings,
    NoImprovement,
    Plateau,
)
from trainguard.budget._limits import (
    EXTENDABLE,
    EXTENSIONS,
    LIMIT_KEYS,
    Budget,
    EffectiveLimits,
    Remaining,
    extend_limits,
    loosened_settings,
    merge_limits,
)
from trainguard.budget._rules import (
    DEFAULT_HEARTBEAT,
    PREPAY_HEARTBEATS,
    BudgetLine,
    Overrun,
    Spend,
    budget_lines,
    exhausted,
    heartbeat_interval,
    over_ceiling,
    overruns,
    prepay,
    remaining,
    spent,
)

__all__ = [
    "DEFAULT_HEARTBEAT",
    "EXTENDABLE",
    "EXTENSIONS",
    "LIMIT_KEYS",
    "PREPAY_HEARTBEATS",
    "WARN_LEVELS",
    "Budget",
    "BudgetLine",
    "BudgetWarnings",
    "CpuOverrun",
    "CpuWindow",
    "EffectiveLimits",
    "LevelWarnings",
    "NoImprovement",
    "Overrun",
    "Plateau",
    "Remaining",
    "ReservedCounter",
    "Runtime",
    "Spend",
    "budget_lines",
    "exhausted",
    "extend_limits",
    "heartbeat_interval",
    "loosened_settings",
    "merge_limits",
    "over_ceiling",
    "overruns",
    "prepay",
    "remaining",
    "spent",
    "warn_log",
]
