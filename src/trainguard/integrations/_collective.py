"""The few collectives the integrations agree with, each a no-op without a process group (one process):
every rank must reach the same decision at the same step, or the others wait in a collective forever."""

from __future__ import annotations

from typing import Any

import torch


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def agreed_max(verdict: int) -> int:
    """The largest of every rank's ``verdict`` (go < stop < fenced: the strictest wins), on every rank."""
    if not distributed():
        return verdict
    vote = torch.tensor([verdict])
    torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MAX)
    return int(vote.item())


def from_rank_zero(value: Any) -> Any:
    """Rank 0's ``value``, on every rank (pickled between the job's own processes)."""
    if not distributed():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gathered(value: Any) -> list[Any]:
    """Every rank's ``value``, by rank, on every rank."""
    if not distributed():
        return [value]
    every: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, value)
    return every


def barrier() -> None:
    if distributed():
        torch.distributed.barrier()


__all__ = ["agreed_max", "barrier", "distributed", "from_rank_zero", "gathered"]
