"""Retention policies are pure functions: tested with tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from trainguard.checkpoints.retention import (
    Candidate,
    Policy,
    evictions,
    from_settings,
    keep_all,
    keep_best,
    keep_every,
    keep_last,
    union,
)


def _c(episode: int, **metrics: float) -> Candidate:
    return Candidate(f"ep{episode}", episode, metrics)


HISTORY = [
    _c(100, expectancy=0.1),
    _c(200, expectancy=0.9),
    _c(300, expectancy=float("nan")),
    _c(400),
    _c(500, expectancy=0.5),
    _c(1000, expectancy=-0.2),
]


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        (keep_last(0), set()),
        (keep_last(2), {"ep500", "ep1000"}),
        (keep_last(10), {c.name for c in HISTORY}),
        (keep_best(1, "expectancy", "max"), {"ep200"}),
        (keep_best(2, "expectancy", "max"), {"ep200", "ep500"}),
        (keep_best(1, "expectancy", "min"), {"ep1000"}),
        (keep_best(3, "missing-metric"), set()),
        (keep_every(500), {"ep500", "ep1000"}),
        (keep_every(1000), {"ep1000"}),
        (union(keep_last(1), keep_best(1, "expectancy")), {"ep1000", "ep200"}),
        (union(), set()),
        (keep_all, {c.name for c in HISTORY}),
    ],
    ids=lambda v: repr(v) if isinstance(v, Policy) else "",
)
def test_policies_keep(policy: Policy, kept: set[str]) -> None:
    assert policy(HISTORY) == kept


def test_policies_are_values_with_a_readable_repr_that_compose() -> None:
    policy = keep_last(3) | keep_best(1, "expectancy") | keep_every(1000)
    assert repr(policy) == (
        "KeepUnion(policies=(KeepLast(n=3), KeepBest(k=1, metric='expectancy', mode='max'), "
        "KeepEvery(n=1000)))"
    )
    assert policy == union(keep_last(3), keep_best(1, "expectancy"), keep_every(1000))  # compared by value
    assert hash(policy) == hash(union(keep_last(3), keep_best(1, "expectancy"), keep_every(1000)))
    assert keep_last(3) != keep_last(4)
    assert from_settings(3, 1, "expectancy", "max", 1000) == policy  # what a config describes
    assert from_settings(None, 1, "expectancy") == keep_all  # no window: nothing is ever evicted
    assert policy(HISTORY) == {"ep400", "ep500", "ep1000", "ep200"}


@pytest.mark.parametrize(
    ("settings", "protected", "evicted"),
    [
        ({}, set(), []),  # nothing configured: nothing is ever evicted
        ({"keep_last_n": 2}, set(), ["ep100", "ep200", "ep300", "ep400"]),
        ({"keep_last_n": 2}, {"ep100"}, ["ep200", "ep300", "ep400"]),
        (
            {"keep_last_n": 1, "keep_best_k": 1, "best_metric": "expectancy"},
            set(),
            ["ep100", "ep300", "ep400", "ep500"],
        ),
        ({"keep_last_n": 1, "keep_every_n": 200}, {"ep300"}, ["ep100", "ep500"]),
        ({"keep_last_n": 0}, set(), [c.name for c in HISTORY]),
    ],
)
def test_evictions_respect_policy_and_protection(
    settings: dict[str, Any], protected: set[str], evicted: list[str]
) -> None:
    assert evictions(HISTORY, from_settings(**settings), protected) == evicted


def test_ties_in_best_go_to_the_newer_checkpoint() -> None:
    tied = [_c(1, loss=0.5), _c(2, loss=0.5)]
    assert keep_best(1, "loss", "min")(tied) == {"ep2"}


def test_same_episode_twice_keeps_the_later_commit() -> None:
    # After a takeover the new holder may save an episode again: commit order breaks the tie.
    again = [Candidate("ep5-t1", 5), Candidate("ep5-t2", 5)]
    assert keep_last(1)(again) == {"ep5-t2"}


@pytest.mark.parametrize(
    "bad",
    [
        lambda: keep_last(-1),
        lambda: keep_best(-1, "m"),
        lambda: keep_every(0),
        lambda: keep_best(1, "m", cast(Any, "median")),
    ],
)
def test_bad_settings_are_refused(bad: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        bad()
