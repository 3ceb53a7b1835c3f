"""Retention: which committed checkpoints to keep, as small pure policies that compose.

A policy is a frozen value (it can be logged, compared, put in a config) that maps the candidates
(committed, in commit order) to the names it wants kept; ``a | b`` keeps what either keeps. The store keeps
that plus everything protected (pinned, live, the checkpoint the run resumed from) and evicts the rest -
and only right after a new commit, so retention can never remove the newest good checkpoint to make room
for one that then fails to commit.

    store = CheckpointStore(root, run="r", retention_policy=keep_last(3) | keep_best(1, "expectancy"))
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from trainguard.errors import InvalidArgument

if TYPE_CHECKING:
    from trainguard.config import Checkpoints

Mode = Literal["min", "max"]


@dataclass(frozen=True)
class Candidate:
    name: str
    episode: int
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """Keeps what :meth:`keep` returns; ``|`` composes policies into their union."""

    def keep(self, candidates: Sequence[Candidate]) -> frozenset[str]:
        raise NotImplementedError

    def __call__(self, candidates: Sequence[Candidate]) -> frozenset[str]:
        return self.keep(candidates)

    def __or__(self, other: Policy) -> Policy:
        return KeepUnion((*_members(self), *_members(other)))


@dataclass(frozen=True)
class KeepAll(Policy):
    """Keeps everything: nothing is ever evicted (the store's default)."""

    def keep(self, candidates: Sequence[Candidate]) -> frozenset[str]:
        return frozenset(c.name for c in candidates)


@dataclass(frozen=True)
class KeepLast(Policy):
    """The ``n`` newest by episode (commit order breaks ties)."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise InvalidArgument("keep_last", self.n, "must be >= 0")

    def keep(self, candidates: Sequence[Candidate]) -> frozenset[str]:
        ordered = sorted(enumerate(candidates), key=lambda p: (p[1].episode, p[0]))
        return frozenset(c.name for _, c in ordered[max(0, len(ordered) - self.n) :])


@dataclass(frozen=True)
class KeepBest(Policy):
    """The ``k`` best by ``metric``; checkpoints without a finite value for it are never "best"."""

    k: int
    metric: str
    mode: Mode = "max"

    def __post_init__(self) -> None:
        if self.k < 0:
            raise InvalidArgument("keep_best", self.k, "must be >= 0")
        if self.mode not in ("min", "max"):
            raise InvalidArgument("mode", self.mode, "must be 'min' or 'max'")

    def keep(self, candidates: Sequence[Candidate]) -> frozenset[str]:
        scored = []
        for order, c in enumerate(candidates):
            value = c.metrics.get(self.metric)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                # Ties go to the newer checkpoint.
                scored.append((value if self.mode == "max" else -value, c.episode, order, c.name))
        scored.sort(reverse=True)
        return frozenset(name for *_, name in scored[: self.k])


@dataclass(frozen=True)
class KeepEvery(Policy):
    """Every checkpoint whose episode is a multiple of ``n`` (e.g. a permanent one per 1000 episodes)."""

    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise InvalidArgument("keep_every", self.n, "must be >= 1")

    def keep(self, candidates: Sequence[Candidate]) -> frozenset[str]:
        return frozenset(c.name for c in candidates if c.episode % self.n == 0)


@dataclass(frozen=True)
class KeepUnion(Policy):
    """What any of ``policies`` keeps (none: nothing)."""

    policies: tuple[Policy, ...] = ()

    def keep(self, candidates: Sequence[Candidate]) -> frozenset[str]:
        kept: frozenset[str] = frozenset()
        for policy in self.policies:
            kept |= policy.keep(candidates)
        return kept


def _members(policy: Policy) -> tuple[Policy, ...]:
    return policy.policies if isinstance(policy, KeepUnion) else (policy,)


# The names configs and the README use.
keep_all = KeepAll()


def keep_last(n: int) -> Policy:
    return KeepLast(n)


def keep_best(k: int, metric: str, mode: Mode = "max") -> Policy:
    return KeepBest(k, metric, mode)


def keep_every(n: int) -> Policy:
    return KeepEvery(n)


def union(*policies: Policy) -> Policy:
    return KeepUnion(tuple(member for policy in policies for member in _members(policy)))


def evictions(candidates: Sequence[Candidate], policy: Policy, protected: Collection[str]) -> list[str]:
    """Names to evict, oldest first: neither wanted by ``policy`` nor ``protected``."""
    kept = policy.keep(candidates) | frozenset(protected)
    return [c.name for c in sorted(candidates, key=lambda c: c.episode) if c.name not in kept]


def from_settings(
    keep_last_n: int | None = None,
    keep_best_k: int | None = None,
    best_metric: str | None = None,
    best_mode: Mode = "max",
    keep_every_n: int | None = None,
) -> Policy:
    """The policy these settings describe; without ``keep_last_n`` nothing is ever evicted (the others
    only add to what a bounded window keeps)."""
    if keep_last_n is None:
        return keep_all
    parts: list[Policy] = [KeepLast(keep_last_n)]
    if keep_best_k and best_metric:
        parts.append(KeepBest(keep_best_k, best_metric, best_mode))
    if keep_every_n is not None:
        parts.append(KeepEvery(keep_every_n))
    return union(*parts)


def from_config(checkpoints: Checkpoints) -> Policy:
    """The policy a config's ``checkpoints:`` section describes."""
    best = checkpoints.best_metric
    return from_settings(
        checkpoints.keep_last,
        checkpoints.keep_best,
        best.name if best else None,
        best.mode if best else "max",
        checkpoints.keep_every,
    )


__all__ = [
    "Candidate",
    "KeepAll",
    "KeepBest",
    "KeepEvery",
    "KeepLast",
    "KeepUnion",
    "Mode",
    "Policy",
    "evictions",
    "from_config",
    "from_settings",
    "keep_all",
    "keep_best",
    "keep_every",
    "keep_last",
    "union",
]
