"""Acquire a run's lease, print the token, exit without releasing (a crashed holder)."""

import os
import sys

from trainguard import Registry

registry = Registry.open(sys.argv[1])
lease = registry.acquire(sys.argv[2], ttl=3600)
print(lease.token, flush=True)
os._exit(0)  # no release, no cleanup: like a crash
