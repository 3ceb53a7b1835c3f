"""A training loop under a Guard, driven by the tests through flags; prints one line per episode and a
JSON summary after the Guard has exited."""

import argparse
import json
import sys
import threading
import time

import numpy as np

import trainguard as tg

parser = argparse.ArgumentParser()
parser.add_argument("config")
parser.add_argument(
    "--episodes-per-run", type=int, default=0, help="break after this many (0: until stopped)"
)
parser.add_argument("--episode-seconds", type=float, default=0.0)
parser.add_argument("--tick-seconds", type=float, default=0.005)
parser.add_argument("--save-every-episode", action="store_true")
parser.add_argument("--save-first", type=int, default=0, help="save each of the first N episodes only")
parser.add_argument("--allocate-mb", type=int, default=0, help="allocate this much more memory every episode")
parser.add_argument("--resume", action="store_true")
parser.add_argument(
    "--child-allocate-mb", type=int, default=0, help="start a child process holding this much"
)
parser.add_argument("--linger", type=float, default=0.0, help="seconds to stay alive after the Guard exited")
args = parser.parse_args()

episodes: list[int] = []
saved: list[str] = []
save_errors: list[str] = []
summary: dict[str, object] = {"episodes": episodes, "saved": saved, "save_errors": save_errors}
hoard = []
child = None
if args.child_allocate_mb:
    import subprocess

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time; b = bytearray({args.child_allocate_mb} << 20); "
            "b[::4096] = b'x' * len(b[::4096]); print('allocated', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().startswith("allocated")
guard = tg.Guard.from_config(args.config)
with guard:
    if args.resume:
        restored = guard.resume()
        summary["resumed"] = restored.episode if restored else None
    for episode in guard.episodes():
        print(f"episode {episode}", flush=True)
        deadline = time.monotonic() + args.episode_seconds
        while True:
            if not guard.tick():
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(args.tick_seconds)
        if args.allocate_mb:
            hoard.append(np.ones(args.allocate_mb << 18, dtype=np.float32))  # touched: counts in RSS
        episodes.append(episode)
        early = len(episodes) <= args.save_first
        if args.save_every_episode or early or guard.should_checkpoint(episode):
            try:
                result = guard.save(
                    {"w": np.full(16, episode, dtype=np.float32)}, metrics={"episode": episode}
                )
                saved.append(result.name)
                print(f"saved {episode}", flush=True)
            except tg.LeaseLost as error:
                save_errors.append(str(error))
        if args.episodes_per_run and len(episodes) >= args.episodes_per_run:
            break
    summary["loop_ended_at"] = time.time()
if child is not None:
    child.kill()
    child.wait()
summary.update(
    stop_reason=guard.stop_reason.value if guard.stop_reason else None,
    stop_detail=guard.stop.detail if guard.stop else None,
    fenced=guard.fenced,
    stopped_at=time.time(),
    threads=sorted(t.name for t in threading.enumerate()),
)
print("SUMMARY " + json.dumps(summary), flush=True)
time.sleep(args.linger)  # like a trainer tearing down after training: the launcher is still watching
sys.exit(0)
