"""The PPO agent: one place that builds it, so training and the evaluator agree on its shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

HYPERPARAMETERS: dict[str, Any] = {
    "n_steps": 256,
    "batch_size": 256,
    "n_epochs": 4,
    "learning_rate": 3e-4,
    "gamma": 0.99,
    "ent_coef": 0.01,
}
POLICY: dict[str, Any] = {"net_arch": [64, 64]}


def vector_env(make: Callable[[], gym.Env[Any, Any]], n_envs: int, seed: int) -> VecEnv:
    return make_vec_env(make, n_envs=n_envs, seed=seed)


def build(env: VecEnv | gym.Env[Any, Any], seed: int = 0) -> PPO:
    return PPO("MlpPolicy", env, policy_kwargs=POLICY, seed=seed, device="cpu", verbose=0, **HYPERPARAMETERS)


__all__ = ["HYPERPARAMETERS", "POLICY", "build", "vector_env"]
