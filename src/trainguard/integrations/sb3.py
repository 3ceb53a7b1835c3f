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
    from stable_baselines3.common.buffers import RolloutBuffer
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
    histogram.

    Its cost to a training step is what trainguard costs a trainer, so a step does only ``tick()`` and a
    bytes comparison of ``dones``. On-policy algorithms (PPO, A2C) already keep every action in their
    rollout buffer: those are counted in bulk at the end of each rollout and at each save (the histogram is
    what a checkpoint records for the decision-health gate). Off-policy ones copy the step's actions into a
    buffer counted every 4096 steps. Saves run in the background (``background_saves``, one in flight: the
    next save waits for the previous one): the step that saves is blocked only while the tensors are
    copied."""

    _FOLD_EVERY = 4096  # steps of actions kept before they are counted anyway (very long episodes)

    def __init__(
        self,
        guard: Guard,
        *,
        action_names: Sequence[str] | None = None,
        background_saves: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.guard = guard
        self.action_names = list(action_names) if action_names is not None else None
        self.background_saves = background_saves
        self.rewards: list[float] = []  # episode returns since the last checkpoint
        self._counts: dict[int, int] = {}  # actions taken since they were last reported
        # Off-policy: the actions of the steps since they were last counted, one row per step.
        self._taken: np.ndarray = np.empty(0)
        self._shape: tuple[int, ...] | None = None
        self._filled = 0
        self._envs = 1
        # On-policy: the rollout buffer's rows [0, _counted) are already in _counts.
        self._rollout: RolloutBuffer | None = None
        self._counted = 0
        # The bytes of a `dones` with no episode ended: comparing bytes is the cheapest test per step.
        self._none_done = b""
        self._stepping = False

    def _init_callback(self) -> None:
        self._envs = self.training_env.num_envs if self.training_env is not None else 1
        buffer = getattr(self.model, "rollout_buffer", None)
        self._rollout = buffer if isinstance(buffer, RolloutBuffer) else None

    def _on_rollout_start(self) -> None:
        self._counted = 0  # the algorithm has just reset its buffer

    def _on_rollout_end(self) -> None:
        self._count_rollout(None)

    def _on_step(self) -> bool:
        guard = self.guard
        keep_going = guard.tick(self._envs)
        local = self.locals
        if self._rollout is None:
            self._copy_actions(local.get("actions"))
        dones = local.get("dones")
        if dones is not None:
            try:
                some_ended = dones.tobytes() != self._none_done
            except AttributeError:  # a VecEnv that returns a list, not the array SB3 promises
                some_ended = True
            if some_ended and not self._episodes_ended(guard, dones):
                return False
        if keep_going:
            return True
        # tick() said stop: at once unless the stop is graceful (a signal), which waits for the episode end.
        stop = guard.stop
        return stop is not None and stop.graceful

    def _copy_actions(self, actions: Any) -> None:
        if actions is None:
            return
        filled = self._filled
        if filled < self._FOLD_EVERY and getattr(actions, "shape", None) == self._shape:
            self._taken[filled] = actions  # one copy of a few numbers into a buffer reused all run
            self._filled = filled + 1
        else:
            self._take_slowly(actions)

    def _episodes_ended(self, guard: Guard, dones: Any) -> bool:
        dones = np.asarray(dones).reshape(-1)
        ended = np.flatnonzero(dones)
        if not len(ended):  # a new shape or dtype of `dones`: remember what "none ended" looks like
            self._none_done = dones.tobytes()
            return True
        infos = self.locals.get("infos") or []
        self._stepping = True  # a save now also counts this step's actions (not in the rollout buffer yet)
        try:
            return self._count_episodes(guard, ended, infos)
        finally:
            self._stepping = False

    def _count_episodes(self, guard: Guard, ended: np.ndarray, infos: list[dict[str, Any]]) -> bool:
        for index in ended:
            episode_info = infos[index].get("episode") if index < len(infos) else None
            if episode_info is not None:
                self.rewards.append(float(episode_info["r"]))
            more = guard.complete_episode()
            if episode_info is not None:
                guard.report(reward=float(episode_info["r"]))  # max_episodes_without_improvement watches it
            if guard.should_checkpoint(guard.episode):
                self.save()
            if not more:
                return False
        return True

    def _count_rollout(self, current: Any) -> None:
        """Count the rollout buffer's rows not counted yet, and ``current`` (the actions of the step being
        taken, which the algorithm adds to the buffer only after this callback)."""
        buffer = self._rollout
        if buffer is None:
            return
        filled = buffer.buffer_size if buffer.full else buffer.pos
        rows = buffer.actions[self._counted : filled]
        if current is not None:
            rows = np.concatenate([rows.reshape(-1), np.asarray(current).reshape(-1)])
            filled += 1
        self._counted = filled
        self._add_counts(rows)

    def _take_slowly(self, actions: Any) -> None:
        """The buffer is full, or this is the first step (or the actions changed shape): count what is in
        it, then (re)make it for actions of this shape."""
        self._fold()
        array = np.asarray(actions)
        if array.shape != self._shape:
            self._shape = array.shape
            self._taken = np.empty((self._FOLD_EVERY, *array.shape), dtype=array.dtype)
        self._taken[0] = array
        self._filled = 1

    def _fold(self) -> None:
        if self._filled:
            self._add_counts(self._taken[: self._filled])
            self._filled = 0

    def _add_counts(self, actions: np.ndarray) -> None:
        if actions.size:
            values, counts = np.unique(actions, return_counts=True)
            for value, count in zip(values.tolist(), counts.tolist(), strict=True):
                action = int(value)
                self._counts[action] = self._counts.get(action, 0) + int(count)

    def _report_actions(self) -> None:
        self._fold()
        self._count_rollout(self.locals.get("actions") if self._stepping else None)
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
        self.guard.save(state_of(self.model), metrics=metrics, background=self.background_saves)
        self.rewards.clear()

    def _on_training_end(self) -> None:
        self.guard.wait_for_saves()  # learn() returns with every checkpoint committed (or its error raised)


__all__ = ["GuardCallback", "restore", "resume", "state_of"]
