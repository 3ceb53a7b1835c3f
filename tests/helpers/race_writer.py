"""One side of the fencing race: take the run over now and then, and keep committing with whatever token
this process last had - also after it went stale, like a process that does not know it was replaced.

argv: registry URL, store root, run, attempts, seed, start-file. Prints a JSON list of [token, outcome].
"""

import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from trainguard import CheckpointStore, CommitFenced, Lease

url, root, run, attempts, seed, start_file = sys.argv[1:7]
rng = random.Random(int(seed))
with CheckpointStore(root, run=run, registry=url) as store:
    deadline = time.monotonic() + 60
    while not Path(start_file).exists():  # both writers start together
        if time.monotonic() > deadline:
            sys.exit("start file never appeared")
        time.sleep(0.001)
    token = 0
    outcomes = []
    for attempt in range(int(attempts)):
        if token == 0 or rng.random() < 0.08:
            token = store.registry.acquire(run, ttl=60, takeover=True, reason=f"race writer {seed}").token
        # A fresh handle: this process ignores whatever it may already know about losing the lease.
        stale_or_not = Lease(store.registry, run, token, 60, store.registry.identity)
        try:
            store.save(
                {"x": np.full(8, attempt, dtype=np.int64)},
                episode=attempt,
                lease=stale_or_not,
                name=f"w{seed}-{attempt:05d}",
            )
            outcomes.append([token, "committed"])
        except CommitFenced:
            outcomes.append([token, "fenced"])
print(json.dumps(outcomes))
