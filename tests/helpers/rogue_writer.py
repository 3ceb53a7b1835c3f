"""A detached rogue trainer: double fork + setsid (re-parented away from whoever started it), then it
commits into a store with the token it was given every 0.5 s, for a minute, ignoring every refusal.
Writes "pid start_time" to the file given once it is detached."""

import contextlib
import os
import sys
import time

import numpy as np
import psutil

url, root, run, token, pidfile = sys.argv[1:6]
if os.fork() != 0:
    os._exit(0)
os.setsid()
if os.fork() != 0:
    os._exit(0)
devnull = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(devnull, fd)

from trainguard import CheckpointStore, Lease, TrainguardError  # noqa: E402 - after detaching

with open(pidfile + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {psutil.Process().create_time()}\n")
os.replace(pidfile + ".tmp", pidfile)
with CheckpointStore(root, run=run, registry=url) as store:
    deadline = time.monotonic() + 60
    episode = 13476
    while time.monotonic() < deadline:
        stale = Lease(store.registry, run, int(token), 3600, store.registry.identity)
        with contextlib.suppress(TrainguardError):  # refused, again: a rogue does not care
            store.save({"w": np.full(16, episode, dtype=np.float32)}, episode=episode, lease=stale)
        episode += 1
        time.sleep(0.5)
