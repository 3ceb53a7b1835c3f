"""Promotion gates: small pure functions from facts about a checkpoint to a verdict with a reason.

"Latest" is not "good" (failure F4): a checkpoint reaches the live pointer only when its bytes verify, it
was made with the live side's features (F5), its decisions have not collapsed onto one action (the
incident's HOLD-only model), and its metrics clear the configured thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainguard.config import COMPARISONS, parse_threshold
from trainguard.registry import CheckpointState


@dataclass(frozen=True)
class Verdict:
    gate: str
    passed: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"gate": self.gate, "passed": self.passed, "reason": self.reason}


def integrity(state: CheckpointState, problems: list[str], committed_with_live_token: bool) -> Verdict:
    if state is not CheckpointState.COMMITTED:
        return Verdict("integrity", False, f"checkpoint is {state.value}")
    if problems:
        return Verdict("integrity", False, f"does not verify: {problems[0]}")
    if not committed_with_live_token:
        return Verdict(
            "integrity", False, "no commit event shows it was committed under the token current then"
        )
    return Verdict("integrity", True, "every hash verifies; committed under the token current at the time")


def features(
    checkpoint_fingerprint: str | None,
    live_fingerprint: str | None,
    differences: list[str],
    *,
    live_declared: bool,
) -> Verdict:
    if not live_declared:
        if checkpoint_fingerprint is None:
            return Verdict("features", True, "neither side declares features")
        return Verdict(
            "features",
            False,
            "the checkpoint records a feature fingerprint but no live features "
            "were given to compare with (give --features)",
        )
    if checkpoint_fingerprint == live_fingerprint:
        return Verdict("features", True, "fingerprint matches the live features")
    shown = "; ".join(differences[:3]) or "no features recorded with the checkpoint"
    return Verdict("features", False, f"made with other features: {shown}")


def entropy_bits(histogram: Mapping[str, int]) -> float:
    total = sum(histogram.values())
    if total <= 0:
        return 0.0
    return -sum((n / total) * math.log2(n / total) for n in histogram.values() if n > 0)


def decision_health(
    histogram: Mapping[str, int] | None,
    *,
    max_action_share: float,
    min_action_entropy: float | None,
    min_decisions: int,
) -> Verdict:
    """The HOLD-only symptom: one action taking (nearly) every decision."""
    counts = {str(k): int(v) for k, v in (histogram or {}).items()}
    total = sum(counts.values())
    if total < min_decisions:
        return Verdict(
            "decisions", False, f"only {total} decisions recorded or evaluated; need at least {min_decisions}"
        )
    if total == 0:
        return Verdict("decisions", True, "no decisions required (min_decisions is 0)")
    action, count = max(counts.items(), key=lambda item: item[1])
    share = count / total
    if share > max_action_share:
        return Verdict(
            "decisions",
            False,
            f"action {action!r} takes {share:.1%} of {total} decisions "
            f"(max_action_share {max_action_share:.0%}): the policy has collapsed onto one action",
        )
    bits = entropy_bits(counts)
    if min_action_entropy is not None and bits < min_action_entropy:
        return Verdict(
            "decisions",
            False,
            f"action entropy {bits:.2f} bits is below min_action_entropy {min_action_entropy:g}",
        )
    return Verdict(
        "decisions", True, f"largest share {action!r} {share:.1%} of {total}; entropy {bits:.2f} bits"
    )


def metrics(values: Mapping[str, Any], thresholds: Mapping[str, str]) -> Verdict:
    failures = []
    for name, rule in thresholds.items():
        op, bound = parse_threshold(rule)
        value = values.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            failures.append(f"{name} is missing or not a finite number")
        elif not COMPARISONS[op](float(value), bound):
            failures.append(f"{name} = {value:g} fails {op} {bound:g}")
    if failures:
        return Verdict("metrics", False, "; ".join(failures))
    shown = ", ".join(f"{n} {r.strip()}" for n, r in thresholds.items())
    return Verdict("metrics", True, f"thresholds met ({shown})" if thresholds else "no thresholds configured")


def no_worse_than_live(
    values: Mapping[str, Any],
    live_values: Mapping[str, Any] | None,
    tolerances: Mapping[str, float],
    modes: Mapping[str, str],
) -> Verdict:
    """Each metric at most ``tolerance`` worse than the current live checkpoint's (direction from ``modes``,
    higher is better unless the metric's mode is ``min``)."""
    if not tolerances or live_values is None:
        return Verdict(
            "vs_live", True, "no live checkpoint to compare with" if tolerances else "not configured"
        )
    failures = []
    for name, tolerance in tolerances.items():
        mine, theirs = values.get(name), live_values.get(name)
        if not isinstance(mine, int | float) or not isinstance(theirs, int | float):
            failures.append(
                f"{name} missing on {'this' if not isinstance(mine, int | float) else 'the live'} checkpoint"
            )
            continue
        worse = (theirs - mine) if modes.get(name, "max") == "max" else (mine - theirs)
        if worse > tolerance:
            failures.append(
                f"{name} {mine:g} is {worse:g} worse than live {theirs:g} (tolerance {tolerance:g})"
            )
    if failures:
        return Verdict("vs_live", False, "; ".join(failures))
    return Verdict("vs_live", True, "no worse than the live checkpoint beyond tolerance")


__all__ = [
    "Verdict",
    "decision_health",
    "entropy_bits",
    "features",
    "integrity",
    "metrics",
    "no_worse_than_live",
]
