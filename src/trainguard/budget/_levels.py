"""Rules judged over time rather than by one number: CPU sustained over a window, warnings at absolute
levels, and training that has stopped improving. Pure: each takes readings (clock, CPU seconds, a metric)
and returns a value with a reason when the rule is met - the Guard and the launcher decide what to do.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CpuOverrun:
    percent: float  # of one core, averaged over the window
    limit: float
    window: float

    def __str__(self) -> str:
        return (
            f"CPU {self.percent:.0f}% of one core over the last {self.window:g}s is over max_cpu_percent "
            f"{self.limit:g}"
        )


@dataclass
class CpuWindow:
    """``max_cpu_percent`` sustained over ``window`` seconds: the average over a full window, so the burst
    of a checkpoint's hashing on every core does not stop a run, while a runaway that keeps the cores busy
    does. Readings are (monotonic seconds, CPU seconds of the process tree)."""

    limit: float
    window: float
    readings: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)

    def observe(self, now: float, cpu_seconds: float) -> CpuOverrun | None:
        self.readings.append((now, cpu_seconds))
        # Keep one reading at or before the window's start, so a full window can be measured.
        while len(self.readings) > 2 and self.readings[1][0] <= now - self.window:
            self.readings.popleft()
        start, used = self.readings[0]
        if now - start < self.window:
            return None  # not a full window yet: nothing sustained can be said
        percent = 100.0 * max(0.0, cpu_seconds - used) / (now - start)
        return CpuOverrun(percent, self.limit, now - start) if percent > self.limit else None

    @classmethod
    def from_limits(cls, limits: Mapping[str, Any]) -> CpuWindow | None:
        limit = limits.get("max_cpu_percent")
        if not isinstance(limit, int | float) or isinstance(limit, bool):
            return None
        return cls(float(limit), float(limits.get("cpu_window", 60.0)))


# (budget name in messages, limit key): levels that warn once when reached (the project's
# memory_alert_threshold_gb, runtime_warning_hours, episode_warning_count).
WARN_LEVELS = {"memory": "warn_memory", "runtime": "warn_runtime", "episodes": "warn_episodes"}


@dataclass
class LevelWarnings:
    """Each absolute warning level fires once per process, when its reading first reaches it."""

    levels: dict[str, float]
    fired: set[str] = field(default_factory=set)

    @classmethod
    def from_limits(cls, limits: Mapping[str, Any]) -> LevelWarnings:
        levels = {name: limits.get(key) for name, key in WARN_LEVELS.items()}
        return cls({k: float(v) for k, v in levels.items() if isinstance(v, int | float)})

    def check(self, name: str, reading: float) -> tuple[str, float, float] | None:
        """(name, reading, level) the first time ``reading`` reaches the level of ``name``."""
        level = self.levels.get(name)
        if level is None or name in self.fired or reading < level:
            return None
        self.fired.add(name)
        return name, reading, level


@dataclass(frozen=True)
class NoImprovement:
    metric: str
    best: float
    best_episode: int
    episode: int
    patience: int

    def __str__(self) -> str:
        return (
            f"{self.metric} has not improved on its best {self.best:g} (episode {self.best_episode}) for "
            f"{self.episode - self.best_episode} episodes (max_episodes_without_improvement {self.patience})"
        )


@dataclass
class Plateau:
    """Episodes since the metric last improved by more than ``min_delta`` (in the direction of ``mode``).
    The count restarts with each process: a resumed run gets its patience again (its best is not known
    to it until it reports one)."""

    metric: str
    patience: int
    min_delta: float = 0.0
    mode: str = "max"
    best: float | None = None
    best_episode: int = 0

    def observe(self, episode: int, value: float) -> NoImprovement | None:
        if not math.isfinite(value):
            return None  # a NaN reward is a trainer's problem to report, not an improvement or a stall
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_episode = value, episode
            return None
        if episode - self.best_episode >= self.patience:
            return NoImprovement(self.metric, self.best, self.best_episode, episode, self.patience)
        return None

    @classmethod
    def from_limits(cls, limits: Mapping[str, Any], metric: str, mode: str) -> Plateau | None:
        patience = limits.get("max_episodes_without_improvement")
        if not isinstance(patience, int) or isinstance(patience, bool):
            return None
        return cls(metric, patience, float(limits.get("min_improvement", 0.0)), mode)


__all__ = ["WARN_LEVELS", "CpuOverrun", "CpuWindow", "LevelWarnings", "NoImprovement", "Plateau"]
