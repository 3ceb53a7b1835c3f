"""A forex trading environment: wavelet features of the price window plus position features; actions
HOLD / BUY / SELL / CLOSE; reward = P&L in pips minus a drawdown penalty. Every constant comes from the
fingerprinted features.yaml."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pywt

from examples.swt.spec import Spec

HOLD, BUY, SELL, CLOSE = range(4)


def wavelet_features(prices: np.ndarray, spec: Spec) -> np.ndarray:
    """The window's log-returns, scaled, through a multi-level discrete wavelet transform."""
    obs = spec["observation"]
    returns = np.diff(np.log(prices)) * float(obs["return_scale"])
    coefficients = pywt.wavedec(returns, obs["wavelet"], level=int(obs["level"]), mode=obs["mode"])
    return np.concatenate(coefficients).astype(np.float32)


class SwtEnv(gym.Env[np.ndarray, np.int64]):
    def __init__(
        self, prices: np.ndarray, spec: Spec, *, episode_length: int | None = None, random_start: bool = True
    ) -> None:
        super().__init__()
        self.prices = prices
        self.features = spec
        self.window = spec.window + 1  # +1: returns need one more price than the window
        self.length = int(episode_length or spec["episode"]["length"])
        self.random_start = random_start
        self.pip = float(spec["market"]["pip"])
        self.spread = float(spec["market"]["spread_pips"])
        self.penalty = float(spec["reward"]["drawdown_penalty"])
        size = len(wavelet_features(prices[: self.window], spec)) + 4
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self._reset_state(self.window)

    def _reset_state(self, start: int) -> None:
        self.t = start
        self.end = (
            min(len(self.prices) - 1, start + self.length) if self.random_start else len(self.prices) - 1
        )
        self.side = 0  # -1 short, 0 flat, 1 long
        self.entry = 0.0
        self.opened = 0
        self.peak = 0.0  # best unrealised P&L of the open position, in pips
        self.trades: list[float] = []  # realised P&L per closed trade, in pips

    def _unrealised(self) -> float:
        return 0.0 if self.side == 0 else self.side * (self.prices[self.t] - self.entry) / self.pip

    def _observation(self) -> np.ndarray:
        scale = self.features["position"]
        pnl = self._unrealised()
        position = np.array(
            [
                self.side,
                (self.t - self.opened) / float(scale["duration_scale"]) if self.side else 0.0,
                pnl / float(scale["pnl_scale"]),
                (self.peak - pnl) / float(scale["pnl_scale"]) if self.side else 0.0,
            ],
            dtype=np.float32,
        )
        return np.concatenate(
            [wavelet_features(self.prices[self.t - self.window + 1 : self.t + 1], self.features), position]
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        latest = len(self.prices) - self.length - 1
        start = (
            int(self.np_random.integers(self.window, max(self.window + 1, latest)))
            if self.random_start
            else self.window
        )
        self._reset_state(start)
        return self._observation(), {}

    def _close(self) -> float:
        pnl = self._unrealised() - self.spread
        self.trades.append(pnl)
        self.side, self.peak = 0, 0.0
        return pnl

    def step(self, action: np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        before = self._unrealised()
        reward = 0.0
        if action == CLOSE and self.side:
            reward += self._close() - before
            before = 0.0
        elif action in (BUY, SELL):
            wanted = 1 if action == BUY else -1
            if self.side == -wanted:
                reward += self._close() - before
                before = 0.0
            elif self.side == 0:
                self.side, self.entry, self.opened, self.peak = wanted, self.prices[self.t], self.t, 0.0
        self.t += 1
        after = self._unrealised()
        reward += after - before
        if self.side:
            drawdown_before = self.peak - before
            self.peak = max(self.peak, after)
            reward -= self.penalty * max(0.0, (self.peak - after) - drawdown_before)
        done = self.t >= self.end
        if done and self.side:
            self._close()
        info: dict[str, Any] = {"trades": len(self.trades)}
        return self._observation(), float(reward), done, False, info


__all__ = ["BUY", "CLOSE", "HOLD", "SELL", "SwtEnv", "wavelet_features"]
