"""Revoke a run's lease from another process; print the revoked token."""

import sys

from trainguard import Registry

with Registry.open(sys.argv[1]) as registry:
    revoked = registry.revoke(sys.argv[2], sys.argv[3])
print(revoked.token if revoked else 0)
