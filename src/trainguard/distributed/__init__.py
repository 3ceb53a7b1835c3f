"""Multi-rank training: ``torch.distributed.checkpoint`` saves and loads through the fenced store, and one
lease per job (see docs/design.md, "Distributed saves").

    writer = trainguard.distributed.Writer(store, lease, episode=step)       # the coordinating rank
    writer = trainguard.distributed.Writer(store_root, token=token, episode=step)   # the others
    dcp.save(state, storage_writer=writer)
    dcp.load(state, storage_reader=trainguard.distributed.Reader(store, "latest"))
"""

from __future__ import annotations

from trainguard.errors import MissingDependency

try:
    import torch.distributed.checkpoint  # noqa: F401 - the dependency this package is built on
except ImportError as error:  # an optional integration: say which extra brings it
    raise MissingDependency("torch", "torch", "trainguard.distributed") from error

from trainguard.distributed._job import JobGuard, Verdict, failures_of
from trainguard.distributed._reader import Reader
from trainguard.distributed._writer import Writer

__all__ = ["JobGuard", "Reader", "Verdict", "Writer", "failures_of"]
