"""A guarded trainer that misbehaves on request, for the watchdog tests.

--ignore-budget   keep going (and allocating) after the guard says stop; its heartbeat thread lives on
--ignore-sigterm  SIGTERM does nothing (only SIGKILL ends it)
--hang            stop the whole process (SIGSTOP) at episode 3: no more heartbeats
--stall           at episode 3 the loop sleeps; the guard's heartbeat thread keeps beating
--slow-save S     the save at episode 2 takes S seconds more (its validation step sleeps); the episode then
                  works on for 0.5 s, so heartbeats between the save and the episode's end are seen
--allocate-mb N   allocate N MB more every episode
"""

import argparse
import os
import signal
import time
from typing import Any

import numpy as np

import trainguard as tg

parser = argparse.ArgumentParser()
parser.add_argument("config")
parser.add_argument("--ignore-budget", action="store_true")
parser.add_argument("--ignore-sigterm", action="store_true")
parser.add_argument("--die-on-sigterm", action="store_true", help="no guard handler: default SIGTERM")
parser.add_argument("--hang", action="store_true")
parser.add_argument("--stall", action="store_true")
parser.add_argument("--slow-save", type=float, default=0.0)
parser.add_argument("--allocate-mb", type=int, default=0)
args = parser.parse_args()

if args.slow_save:
    from unittest import mock

    from trainguard.checkpoints.codecs import validate_staged

    def slow_validate(*a: Any, **k: Any) -> None:
        time.sleep(args.slow_save)
        validate_staged(*a, **k)

    # The commit protocol's validation step, slowed for the rest of this process (a fault-injection seam).
    mock.patch("trainguard.checkpoints._commit.validate_staged", slow_validate).start()

hoard: list[np.ndarray] = []


def episode_body(guard: tg.Guard, episode: int) -> None:
    if args.allocate_mb:
        hoard.append(np.ones(args.allocate_mb << 18, dtype=np.float32))  # touched: counts in RSS
    if args.slow_save and episode == 2:
        print("saving", flush=True)
        guard.save({"w": np.zeros(4)}, episode=episode)
        print("saved", flush=True)
        time.sleep(0.5)
    if episode == 3 and args.hang:
        print("hanging", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    if episode == 3 and args.stall:
        print("stalling", flush=True)
        time.sleep(3600)
    time.sleep(0.05)


handlers = not (args.ignore_sigterm or args.die_on_sigterm)
with tg.Guard.from_config(args.config, install_signal_handlers=handlers) as guard:
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"started {os.getpid()}", flush=True)
    for episode in guard.episodes():
        guard.tick()
        episode_body(guard, episode)
    print(f"guard says stop: {guard.stop}", flush=True)
    if args.ignore_budget:
        episode = guard.episode or 0
        while True:  # what a runaway does
            episode += 1
            episode_body(guard, episode)
print("exited cleanly", flush=True)
