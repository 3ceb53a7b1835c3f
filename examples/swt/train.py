"""Train the agent under trainguard:

    trainguard run -c examples/swt/guard.yaml -- python -m examples.swt.train


Run directly (``python -m examples.swt.train``) it guards itself with the same config.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from examples.swt import agent
from examples.swt.env import SwtEnv
from examples.swt.spec import Spec
from trainguard import Guard
from trainguard.integrations.sb3 import GuardCallback, resume

CONFIG = Path(__file__).resolve().parent / "guard.yaml"


class TimedGuardCallback(GuardCallback):
    """The SB3 callback, timed: how much of the training thread trainguard takes (the demo's overhead
    figure in benchmarks/README.md)."""

    time_in_guard = 0.0

    def _on_step(self) -> bool:
        started = time.perf_counter()
        try:
            return super()._on_step()
        finally:
            self.time_in_guard += time.perf_counter() - started


def main() -> int:
    started = time.perf_counter()
    with Guard.from_config(os.environ.get("TRAINGUARD_CONFIG") or CONFIG) as guard:
        features = Path(str(guard.config.features[0]))
        base = guard.config.source.parent if guard.config.source else Path.cwd()
        spec = Spec.load(features if features.is_absolute() else base / features)
        training, _ = spec.prices()
        env = agent.vector_env(lambda: SwtEnv(training, spec), n_envs=4, seed=guard.steps)
        model = agent.build(env, seed=0)
        restored = resume(model, guard)
        if restored is not None:
            print(f"resumed from {restored.name} (episode {restored.episode})", flush=True)
        callback = TimedGuardCallback(guard, action_names=spec.actions)
        model.learn(
            total_timesteps=10**12,
            callback=callback,
            reset_num_timesteps=restored is None,
            progress_bar=False,
        )
    wall = time.perf_counter() - started
    print(f"stopped: {guard.stop}", flush=True)
    last = guard.last_checkpoint.name if guard.last_checkpoint else "-"
    print(f"last episode: {guard.episode}; last checkpoint: {last}")
    print(
        f"time in trainguard calls on the training thread: {callback.time_in_guard:.2f}s of {wall:.1f}s "
        f"({100 * callback.time_in_guard / wall:.1f}%)",
        flush=True,
    )
    busy = guard.monitor_seconds
    print(
        f"time in the guard's monitor thread (heartbeats, renewals, sampling): "
        f"{busy:.2f}s ({100 * busy / wall:.1f}%, on another thread)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
