"""Stable-Baselines3: a callback that puts ``model.learn()`` under a Guard.

    with tg.Guard.from_config("guard.yaml") as guard:
        model = PPO("MlpPolicy", env)
        resume(model, guard)                                  # weights, optimizer, timesteps if any
        model.learn(10**9, callback=GuardCallback(guard, action_names=["HOLD", "BUY", "SELL", "CLOSE"]))

The checkpoint is the policy's and the optimizer's ``state_dict`` through the fenced store - never SB3's
pickle zip, which ``PPO.load`` would unpickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trainguard.checkpoints import LoadedCheckpoint
from trainguard.errors import MissingDependency
from trainguard.guard import Guard

try:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.callbacks import BaseCallback
except ImportError as error:  # an optional integration: say which extra brings it
    raise MissingDependency("stable-baselines3", "sb3", "trainguard.integrations.sb3") from error


def state_of(model: BaseAlgorithm) -> dict[str, Any]:
    state: dict[str, Any] = {
        "policy": model.policy.state_dict(),
        "progress": {"num_timesteps": model.num_timesteps},
    }
    optimizer = getattr(model.policy, "optimizer", None)
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return state


def restore(model: BaseAlgorithm, checkpoint: LoadedCheckpoint) -> None:
    state = checkpoint.state
    model.policy.load_state_dict(state["policy"])
    optimizer = getattr(model.policy, "optimizer", None)
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    model.num_timesteps = int(state.get("progress", {}).get("num_timesteps", 0))


def resume(model: BaseAlgorithm, guard: Guard) -> LoadedCheckpoint | None:
    """Restore ``model`` from the guard's newest verified, feature-matched checkpoint (None: a new run)."""
    loaded = guard.resume()
    if loaded is not None:
        restore(model, loaded)
    return loaded


class GuardCallback(BaseCallback):
    """Counts finished episodes across vectorised envs, ends ``learn()`` when the Guard says stop, saves on
    the Guard's cadence, and reports the actions taken (named by ``action_names``) as the decision
    histogram."""

    def __init__(self, guard: Guard, *, action_names: Sequence[str] | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.guard = guard
        self.action_names = list(action_names) if action_names is not None else None
        self.rewards: list[float] = []  # episode returns since the last checkpoint
        self._counts: dict[int, int] = {}  # actions taken since they were last reported

    def _on_step(self) -> bool:
        guard = self.guard
        keep_going = guard.tick(self.training_env.num_envs if self.training_env is not None else 1)
        actions = self.locals.get("actions")
        if actions is not None:
            # Counted here as integers and handed to the guard once per finished episode: naming every action
            # of every env at every step was most of trainguard's cost to a training step.
            for action in np.asarray(actions).reshape(-1):
                self._counts[int(action)] = self._counts.get(int(action), 0) + 1
        dones = self.locals.get("dones")
        infos = self.locals.get("infos") or []
        for index, done in enumerate(np.asarray(dones).reshape(-1) if dones is not None else []):
            if not done:
                continue
            episode_info = infos[index].get("episode") if index < len(infos) else None
            if episode_info is not None:
                self.rewards.append(float(episode_info["r"]))
            self._report_actions()
            more = guard.complete_episode()
            if episode_info is not None:
                guard.report(reward=float(episode_info["r"]))  # max_episodes_without_improvement watches it
            if guard.should_checkpoint(guard.episode):
                self.save()
            if not more:
                return False
        if guard.stop is not None and not guard.stop.graceful:
            return False
        return keep_going or (guard.stop is not None and guard.stop.graceful)

    def _report_actions(self) -> None:
        if self._counts:
            names = self.action_names
            self.guard.report(actions={names[a] if names else str(a): n for a, n in self._counts.items()})
            self._counts.clear()

    def save(self) -> None:
        self._report_actions()
        metrics: dict[str, Any] = {"timesteps": int(self.model.num_timesteps)}
        if self.rewards:
            metrics["reward"] = float(np.mean(self.rewards))
            metrics["episodes_since_checkpoint"] = len(self.rewards)
        self.guard.save(state_of(self.model), metrics=metrics)
        self.rewards.clear()


__all__ = ["GuardCallback", "restore", "resume", "state_of"]
