"""Retention: which committed checkpoints to keep, as small pure policies that compose.

A policy maps the candidates (committed, in commit order) to the names it wants kept. The store keeps the
union of what its policies want plus everything protected (pinned, live, the checkpoint the run resumed
from) and evicts the rest - and only right after a new commit, so retention can never remove the newest
good checkpoint to make room for one that then fails to commit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["min", "max"]


@dataclass(frozen=True)
class Candidate:
    name: str
    episode: int
    metrics: Mapping[str, Any] = field(default_factory=dict)


Policy = Callable[[Sequence[Candidate]], frozenset[str]]


def keep_last(n: int) -> Policy:
    """The ``n`` newest by episode (commit order breaks ties)."""
    if n < 0:
        raise ValueError(f"keep_last = {n}: must be >= 0")

    def policy(candidates: Sequence[Candidate]) -> frozenset[str]:
        ordered = sorted(enumerate(candidates), key=lambda p: (p[1].episode, p[0]))
        return frozenset(c.name for _, c in ordered[max(0, len(ordered) - n) :])

    return policy


def keep_best(k: int, metric: str, mode: Mode = "max") -> Policy:
    """The ``k`` best by ``metric``; checkpoints without a finite value for it are never "best"."""
    if k < 0:
        raise ValueError(f"keep_best = {k}: must be >= 0")
    if mode not in ("min", "max"):
        raise ValueError(f"best_metric.mode = {mode!r}: must be 'min' or 'max'")

    def policy(candidates: Sequence[Candidate]) -> frozenset[str]:
        scored = []
        for order, c in enumerate(candidates):
            value = c.metrics.get(metric)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                # Ties go to the newer checkpoint.
                scored.append((value if mode == "max" else -value, c.episode, order, c.name))
        scored.sort(reverse=True)
        return frozenset(name for *_, name in scored[:k])

    return policy


def keep_every(n: int) -> Policy:
    """Every checkpoint whose episode is a multiple of ``n`` (e.g. a permanent one per 1000 episodes)."""
    if n <= 0:
        raise ValueError(f"keep_every = {n}: must be >= 1")

    def policy(candidates: Sequence[Candidate]) -> frozenset[str]:
        return frozenset(c.name for c in candidates if c.episode % n == 0)

    return policy


def keep_all(candidates: Sequence[Candidate]) -> frozenset[str]:
    return frozenset(c.name for c in candidates)


def union(*policies: Policy) -> Policy:
    def policy(candidates: Sequence[Candidate]) -> frozenset[str]:
        kept: frozenset[str] = frozenset()
        for p in policies:
            kept |= p(candidates)
        return kept

    return policy


def evictions(candidates: Sequence[Candidate], policy: Policy, protected: Collection[str]) -> list[str]:
    """Names to evict, oldest first: neither wanted by ``policy`` nor ``protected``."""
    kept = policy(candidates) | frozenset(protected)
    return [c.name for c in sorted(candidates, key=lambda c: c.episode) if c.name not in kept]


def from_settings(
    keep_last_n: int | None = None,
    keep_best_k: int | None = None,
    best_metric: str | None = None,
    best_mode: Mode = "max",
    keep_every_n: int | None = None,
) -> Policy:
    """The policy a config describes; with nothing configured, nothing is ever evicted."""
    parts: list[Policy] = []
    if keep_last_n is not None:
        parts.append(keep_last(keep_last_n))
    if keep_best_k and best_metric:
        parts.append(keep_best(keep_best_k, best_metric, best_mode))
    if keep_every_n:
        parts.append(keep_every(keep_every_n))
    return union(*parts) if keep_last_n is not None else keep_all


__all__ = [
    "Candidate",
    "Mode",
    "Policy",
    "evictions",
    "from_settings",
    "keep_all",
    "keep_best",
    "keep_every",
    "keep_last",
    "union",
]
