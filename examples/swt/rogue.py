"""The incident's rogue trainer, for the drill: detached (double fork + setsid, re-parented away from
whoever started it), holding the token of a lease it no longer owns, trained on a changed feature file,
writing a checkpoint every half second - like the process hidden in a VM for three days.

    python -m examples.swt.rogue REGISTRY STORE RUN TOKEN FEATURES PIDFILE [SECONDS [FIRST_EPISODE]]
"""

from __future__ import annotations

import contextlib
import os
import sys
import time


def main() -> None:
    url, store, run, token, features, pidfile = sys.argv[1:7]
    seconds = float(sys.argv[7]) if len(sys.argv) > 7 else 600.0
    first_episode = int(sys.argv[8]) if len(sys.argv) > 8 else 13476
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)

    import numpy as np

    from trainguard import CheckpointStore, Lease, TrainguardError
    from trainguard.fingerprint import compute
    from trainguard.registry import ProcessIdentity

    with open(pidfile + ".tmp", "w") as handle:
        handle.write(f"{os.getpid()} {ProcessIdentity.current().start_ticks}\n")
    os.replace(pidfile + ".tmp", pidfile)
    wrong = compute([features])
    rng = np.random.default_rng(0)
    with CheckpointStore(store, run=run, registry=url) as checkpoints:
        episode = first_episode
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            stale = Lease(checkpoints.registry, run, int(token), 3600, checkpoints.registry.identity)
            state = {"policy": {"w": rng.normal(size=256).astype(np.float32)}}
            with contextlib.suppress(TrainguardError):  # refused, again: a rogue does not read errors
                checkpoints.save(
                    state,
                    episode=episode,
                    lease=stale,
                    metrics={"reward": 0.0, "actions": {"HOLD": 1000}},
                    features=wrong,
                )
            episode += 1
            time.sleep(0.5)


if __name__ == "__main__":
    main()
