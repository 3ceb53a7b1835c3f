"""The promotion gates' evaluator: the checkpoint's policy, deterministic, over the held-out period.

Metrics come from data the trainer never saw, so a gate does not depend on what the trainer says about
itself - the HOLD-only collapse shows up here as one action taking every decision.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from examples.swt import agent
from examples.swt.env import SwtEnv
from examples.swt.spec import Spec
from trainguard.checkpoints import LoadedCheckpoint


def run_policy(model: Any, env: SwtEnv, names: list[str]) -> dict[str, Any]:
    observation, _ = env.reset(seed=0)
    decisions: Counter[str] = Counter()
    equity, peak, drawdown = 0.0, 0.0, 0.0
    done = False
    while not done:
        action, _ = model.predict(observation, deterministic=True)
        decisions[names[int(action)]] += 1
        observation, reward, done, _, _ = env.step(np.int64(action))
        equity += reward
        peak = max(peak, equity)
        drawdown = max(drawdown, peak - equity)
    trades = env.trades
    return {
        "metrics": {
            "expectancy": float(np.mean(trades)) if trades else 0.0,  # pips per closed trade
            "total_pips": float(np.sum(trades)) if trades else 0.0,
            "trades": len(trades),
            "max_drawdown": float(drawdown),
        },
        "actions": dict(decisions),
    }


def evaluate(checkpoint: LoadedCheckpoint) -> dict[str, Any]:
    """trainguard calls this with the verified checkpoint (``evaluator: examples.swt.evaluate:evaluate``)."""
    spec = Spec.load()
    _, held_out = spec.prices()
    env = SwtEnv(held_out, spec, random_start=False)
    model = agent.build(env)
    model.policy.load_state_dict(checkpoint.state["policy"])
    return run_policy(model, env, spec.actions)


__all__ = ["evaluate", "run_policy"]
