"""A Stable-Baselines3 trainer that knows nothing of trainguard (tests/test_legacy_sb3.py).

It is the shape of the incident's trainer: SB3's own CheckpointCallback writes ``model_<N>_steps.zip`` into
its folder, it resumes from the newest file it finds there, and Ctrl-C (KeyboardInterrupt) saves a final
model before it exits. Usage: sb3_trainer.py FOLDER TOTAL_TIMESTEPS.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import gymnasium as gym
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback

folder, total = Path(sys.argv[1]), int(sys.argv[2])
with open(folder.parent / "starts.log", "a") as log:
    log.write(f"{os.getpid()}\n")  # proves the child ran (a refused start never gets here)


class Pace(BaseCallback):
    """A real environment is slower than CartPole: a few milliseconds a step."""

    def _on_step(self) -> bool:
        time.sleep(0.004)
        return True


saved = sorted(folder.glob("model_*_steps.zip"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
if saved:
    model = PPO.load(saved[-1], env=gym.make("CartPole-v1"), device="cpu")
    print(f"resumed from {saved[-1].name} at {model.num_timesteps} steps", flush=True)
else:
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
checkpoints = CheckpointCallback(save_freq=100, save_path=str(folder), name_prefix="model")
try:
    model.learn(total, callback=CallbackList([checkpoints, Pace()]), reset_num_timesteps=not saved)
except KeyboardInterrupt:
    final = folder / f"model_{model.num_timesteps}_steps.zip"
    model.save(final)
    print(f"interrupted: final save {final.name}", flush=True)
    sys.exit(0)
print(f"finished at {model.num_timesteps} steps", flush=True)
