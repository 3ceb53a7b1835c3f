"""Fork server for the crash-consistency campaign.

Imports once, then on each "go SEED" line forks a writer that saves checkpoints in a loop until it is
SIGKILLed by the test; "reap PID" waits for it. Forking keeps a kill cycle at a few milliseconds instead of
a fresh interpreter's import time, so the suite can afford hundreds of kills. The registry is opened in the
child, after the fork: no database connection ever crosses it.

argv: store (a directory or an s3:// URL), run, report file[, registry URL]. The writer appends "episode
name" to the report file after each save returns: the newest line is a commit the writer was told about,
which must survive any kill. On an s3:// store (endpoint and keys from the AWS variables) some states are
10 MiB, so uploads span several multipart parts.
"""

import os
import random
import sys
import tempfile

import numpy as np

from trainguard import CheckpointStore, retention


def writer(root: str, run: str, report: str, seed: int, registry: str | None) -> None:
    rng = random.Random(seed)
    sizes = (256, 4096, 65536, 262144) + ((2_621_440,) if root.startswith("s3://") else ())
    with CheckpointStore(root, run=run, registry=registry, retention_policy=retention.keep_last(3)) as store:
        # The previous writer's process is dead: its lease is not live, no takeover needed.
        lease = store.registry.acquire(run, ttl=30)
        latest = store.latest()
        episode = latest.episode + 1 if latest else 1
        fd = os.open(report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        print(f"ready {os.getpid()}", flush=True)
        while True:
            size = rng.choice(sizes)
            state = {"w": np.full(size, episode, dtype=np.float32), "meta": {"episode": episode}}
            record = store.save(state, episode=episode, lease=lease, metrics={"size": size})
            os.write(fd, f"{record.episode} {record.name}\n".encode())
            episode += 1


def warm_up(root: str) -> None:
    """Import everything a save touches (lazily imported modules included) before the first fork, so each
    writer reaches its save loop in milliseconds instead of re-importing in every child."""
    with tempfile.TemporaryDirectory() as scratch, CheckpointStore(scratch, run="warm-up") as store:
        lease = store.registry.acquire("warm-up", ttl=30)
        store.load(store.save({"w": np.zeros(4, dtype=np.float32)}, episode=1, lease=lease).name)
    if root.startswith("s3://"):
        import boto3

        # Loads botocore's service model into the default session, which the children inherit; the
        # client itself never connects, so no socket crosses the fork.
        boto3.client("s3")


def main() -> None:
    root, run, report = sys.argv[1:4]
    registry = sys.argv[4] if len(sys.argv) > 4 else None
    warm_up(root)
    print("warm", flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "go":
            pid = os.fork()
            if pid == 0:
                try:
                    writer(root, run, report, int(argument), registry)
                finally:
                    os._exit(1)
            print(f"started {pid}", flush=True)
        elif command == "reap":
            _, status = os.waitpid(int(argument), 0)
            print(f"reaped {status}", flush=True)
        elif command == "quit":
            return


if __name__ == "__main__":
    main()
