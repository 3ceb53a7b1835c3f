"""The Stable-Baselines3 callback: budget stop mid-learn(), resume, and a revoked lease ending learn()."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from stable_baselines3 import DQN, PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env

from examples.swt.env import SwtEnv
from examples.swt.spec import Spec
from trainguard import Guard, LeaseLost, Registry, StopReason
from trainguard.integrations.sb3 import GuardCallback, resume, state_of

SPEC = Spec.load()
TRAINING, _ = SPEC.prices()
ACTIONS = SPEC.actions


def _model(seed: int = 0) -> PPO:
    env = make_vec_env(lambda: SwtEnv(TRAINING, SPEC, episode_length=16), n_envs=2, seed=seed)
    return PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        seed=seed,
        device="cpu",
        policy_kwargs={"net_arch": [16]},
    )


def _guard(tmp_path: Path, **settings: Any) -> Guard:
    return Guard(run="sb3", store=str(tmp_path / "store"), install_signal_handlers=False, **settings)


def test_budget_stops_learn_midway(tmp_path: Path) -> None:
    with _guard(tmp_path, max_episodes=12, every_episodes=5) as guard:
        model = _model()
        callback = GuardCallback(guard, action_names=ACTIONS)
        model.learn(total_timesteps=10**7, callback=callback)  # would run for hours without the guard
    assert guard.stop_reason is StopReason.EPISODES
    assert guard.episode == 12 and model.num_timesteps < 10_000
    with Registry.open(f"sqlite:///{tmp_path / 'store/.trainguard/registry.db'}") as registry:
        records = registry.checkpoints("sb3")
        assert [r.episode for r in records] == [5, 10, 12]  # the cadence and a final checkpoint
        actions = records[-1].metrics["actions"]
        assert set(actions) <= set(ACTIONS) and sum(actions.values()) > 0  # the decision histogram
        assert registry.run("sb3").episodes_spent == 12


def test_resume_continues_the_count_and_restores_the_weights(tmp_path: Path) -> None:
    with _guard(tmp_path, max_episodes=6, every_episodes=3) as guard:
        first = _model(seed=1)
        first.learn(total_timesteps=10**7, callback=GuardCallback(guard, action_names=ACTIONS))
        saved = {k: v.clone() for k, v in first.policy.state_dict().items()}
        timesteps = first.num_timesteps
        guard.registry.extend_budget("sb3", episodes=4, reason="four more")
    with _guard(tmp_path, max_episodes=6, every_episodes=3) as guard:  # 6 + the extension
        second = _model(seed=2)  # different initial weights
        restored = resume(second, guard)
        assert restored is not None and restored.episode == 6
        for key, value in second.policy.state_dict().items():
            assert torch.equal(value, saved[key]), key
        assert second.num_timesteps == timesteps
        optimizer = state_of(second)["optimizer"]
        assert optimizer["state"], "the optimizer state came back too"
        second.learn(
            total_timesteps=10**7,
            callback=GuardCallback(guard, action_names=ACTIONS),
            reset_num_timesteps=False,
        )
    assert guard.episode == 10  # continued from 6, not from 0
    with Registry.open(f"sqlite:///{tmp_path / 'store/.trainguard/registry.db'}") as registry:
        assert [r.episode for r in registry.checkpoints("sb3")] == [3, 6, 9, 10]


def test_a_revoked_lease_stops_learn(tmp_path: Path) -> None:
    with _guard(tmp_path, heartbeat_interval=0.05, lease_ttl=1, every_episodes=1000) as guard:
        model = _model()
        registry = guard.registry
        revoker = threading.Timer(1.0, lambda: registry.revoke("sb3", "operator: stop this run"))
        revoker.start()
        try:
            model.learn(total_timesteps=10**7, callback=GuardCallback(guard, action_names=ACTIONS))
        finally:
            revoker.cancel()
        with pytest.raises(LeaseLost, match="operator: stop this run"):
            guard.save({"w": np.zeros(1)}, episode=1)  # and nothing it writes can be committed
    assert guard.stop_reason is StopReason.LEASE_LOST
    assert guard.stop is not None and "operator: stop this run" in guard.stop.detail
    assert model.num_timesteps < 50_000  # it stopped, it did not train on for the full budget


class _Spy(BaseCallback):
    """Counts every action the algorithm takes, step by step (runs before the GuardCallback)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def _on_step(self) -> bool:
        self.counts.update(ACTIONS[int(a)] for a in np.asarray(self.locals["actions"]).reshape(-1))
        return True


class _SnapshotAtSave(GuardCallback):
    """Takes the spy's counts at each save: what the checkpoint's histogram must hold since the last one."""

    def __init__(self, guard: Guard, spy: _Spy) -> None:
        super().__init__(guard, action_names=ACTIONS)
        self.spy = spy
        self.at_save: list[Counter[str]] = []

    def save(self) -> None:
        self.at_save.append(Counter(self.spy.counts))
        super().save()


@pytest.mark.parametrize("algorithm", ["PPO", "DQN"])  # actions from the rollout buffer / copied per step
def test_each_checkpoint_histogram_counts_exactly_the_actions_taken_since_the_last(
    tmp_path: Path, algorithm: str
) -> None:
    with _guard(tmp_path, max_episodes=13, every_episodes=3) as guard:
        if algorithm == "PPO":
            model: PPO | DQN = _model()
        else:
            env = make_vec_env(lambda: SwtEnv(TRAINING, SPEC, episode_length=16), n_envs=2, seed=0)
            model = DQN("MlpPolicy", env, learning_starts=8, buffer_size=500, seed=0, device="cpu")
        spy = _Spy()
        callback = _SnapshotAtSave(guard, spy)
        model.learn(total_timesteps=10**7, callback=CallbackList([spy, callback]))
    with Registry.open(f"sqlite:///{tmp_path / 'store/.trainguard/registry.db'}") as registry:
        records = registry.checkpoints("sb3")
    assert [r.episode for r in records] == [3, 6, 9, 12, 13]
    assert len(callback.at_save) == len(records)
    before: Counter[str] = Counter()
    for record, at_save in zip(records, callback.at_save, strict=True):
        assert Counter(record.metrics["actions"]) == at_save - before, record.name
        before = at_save
