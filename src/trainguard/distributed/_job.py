"""One lease per job: the Guard lives on the coordinating rank, its token and its stop decisions on all.

A job of N ranks is one run: one lease, one fencing token, one budget. Rank 0 (``coordinator``) enters the
Guard - it acquires (or adopts from ``trainguard run``) the lease, renews it, charges the budget once for
the job. The other ranks learn the token, the run and the store from it over the job's process group.
Every decision to stop (the budget, a lost lease, a signal on any rank) is agreed with one ``all_reduce``
so that every rank leaves the loop at the same episode: a rank that stopped alone would leave the others
blocked in their next collective. Saves go through :class:`~trainguard.distributed.Writer`; a save the
registry fences stops every rank (they all receive the coordinator's refusal from DCP).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator, Mapping
from enum import IntEnum
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from trainguard.checkpoints import LATEST, CheckpointStore
from trainguard.distributed._reader import Reader
from trainguard.distributed._writer import Writer
from trainguard.errors import CommitFenced, LeaseLost, StateConflict
from trainguard.guard import Guard, StopReason
from trainguard.registry import CheckpointRecord


class Verdict(IntEnum):
    """What the ranks agreed, the largest of what each rank saw (all_reduce MAX)."""

    GO = 0
    DONE = 1  # the coordinator's Guard stopped: budget, no improvement, operator
    SIGNALLED = 2  # a rank received SIGTERM/SIGINT: stop at this episode boundary
    FENCED = 3  # the job's lease is lost: nothing more may be committed


class JobGuard:
    """``with JobGuard(lambda: Guard.from_config(path)) as job:`` on every rank of a job.

    ``guard`` builds the Guard; it is called on the coordinator only. ``group``: the process group
    (default: the world). Then ``for episode in job.episodes():`` - the same episodes on every rank, ending
    on every rank together - and ``job.save(state, episode)`` (collective) when ``job.should_checkpoint``."""

    def __init__(self, guard: Any, *, group: dist.ProcessGroup | None = None, coordinator: int = 0) -> None:
        if not dist.is_initialized():
            raise StateConflict("torch.distributed", "not initialised", "init_process_group() comes first")
        self._make_guard = guard
        self.group = group
        self.rank = dist.get_rank(group)
        self.coordinator_rank = coordinator
        self.coordinator = self.rank == coordinator
        self.guard: Guard | None = None
        self.run = ""
        self.root = Path()
        self.token = 0
        self.registry_url = ""
        self.start_episode = 1
        self.every_episodes: int | None = None
        self.verdict = Verdict.GO
        self._signalled = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        facts: dict[str, Any] = {}
        error: BaseException | None = None
        if self.coordinator:
            try:
                guard = self._make_guard()
                self.guard = guard.__enter__()
                facts = {
                    "run": guard.run,
                    "root": str(guard.store.root),
                    "registry": guard.registry_url,
                    "token": guard.lease.token,
                    "start": guard.next_episode,
                    "every": guard.config.checkpoints.every_episodes,
                }
            except BaseException as failed:  # every rank must hear of it, or they wait for facts forever
                error, facts = failed, {"error": f"{type(failed).__name__}: {failed}"}
        facts = self._broadcast(facts)
        if error is not None:
            raise error
        if "error" in facts:
            raise StateConflict("the job's Guard", facts["error"], "the coordinating rank could not start it")
        self.run, self.root, self.token = facts["run"], Path(facts["root"]), int(facts["token"])
        self.registry_url = str(facts["registry"])
        self.start_episode, self.every_episodes = int(facts["start"]), facts["every"]
        if not self.coordinator:  # the coordinator's Guard already turns signals into a graceful stop
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous[number] = signal.signal(number, self._on_signal)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        if self.guard is not None:
            self.guard.__exit__(kind, error, trace)

    def _on_signal(self, number: int, _frame: FrameType | None) -> None:
        self._signalled = True

    # -- agreement -----------------------------------------------------------------------------------

    def _broadcast(self, facts: dict[str, Any]) -> dict[str, Any]:
        """``facts`` from the coordinator to every rank, as JSON bytes (nothing unpickled)."""
        data = json.dumps(facts).encode() if self.coordinator else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, self.coordinator_rank, group=self.group)
        buffer = torch.zeros(int(size.item()), dtype=torch.uint8)
        if self.coordinator:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buffer, self.coordinator_rank, group=self.group)
        return dict(json.loads(bytes(buffer.numpy())))

    def agree(self, local: Verdict) -> Verdict:
        """The job's verdict: the gravest any rank saw (one all_reduce). Every rank must call it."""
        if self._signalled:
            local = max(local, Verdict.SIGNALLED)
        if self.guard is not None and self.guard.fenced:
            local = Verdict.FENCED
        votes = torch.tensor([int(local)], dtype=torch.int64)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX, group=self.group)
        self.verdict = max(self.verdict, Verdict(int(votes.item())))
        if self.verdict is not Verdict.GO and self.guard is not None and self.guard.stop is None:
            self.guard.request_stop(_reason(self.verdict), f"agreed by the job's ranks: {self.verdict.name}")
        return self.verdict

    def episodes(self) -> Iterator[int]:
        """The job's episodes, the same on every rank; the loop ends on every rank at the same boundary."""
        episode = self.start_episode
        local = Verdict.GO
        if self.guard is not None and self.guard.stop is not None:
            local = Verdict.DONE
        while self.agree(local) is Verdict.GO:
            yield episode
            if self.guard is not None and not self.guard.complete_episode():
                local = Verdict.FENCED if self.guard.fenced else Verdict.DONE
            episode += 1

    def should_checkpoint(self, episode: int) -> bool:
        """The Guard's cadence, the same answer on every rank (``checkpoints.every_episodes``)."""
        every = self.every_episodes
        return every is not None and every > 0 and episode % every == 0

    # -- loads and saves -----------------------------------------------------------------------------

    def load(self, state: dict[str, Any], name: str = LATEST) -> str | None:
        """Load ``name`` (default: the newest committed checkpoint) into ``state`` in place on every rank
        (collective; DCP reshards), every shard verified first; its name, or None when the run has no
        checkpoint yet (then ``state`` is left as it is). Each rank reads through a read-only store."""
        with CheckpointStore.open_existing(
            self.root, run=self.run, registry=self.registry_url or None, read_only=True
        ) as store:
            present = torch.tensor([int(bool(store.checkpoints()))], dtype=torch.int64)
            dist.all_reduce(present, op=dist.ReduceOp.MIN, group=self.group)  # all ranks load, or none
            if name == LATEST and not present.item():
                return None
            reader = Reader(store, name)
            dcp_load(state, storage_reader=reader, process_group=self.group)
            return reader.name

    def writer(self, episode: int, **options: Any) -> Writer:
        """This rank's DCP writer for the save of ``episode``: the coordinator commits with the job's
        store and lease, the others write into the staging directory the coordinator names."""
        if self.guard is not None:
            return Writer(self.guard.store, self.guard.lease, episode=episode, **options)
        return Writer(self.root, token=self.token, episode=episode, **options)

    def save(
        self,
        state: dict[str, Any],
        episode: int,
        *,
        metrics: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> CheckpointRecord | None:
        """``dcp.save`` through the fenced store (collective). Returns the record on the coordinator. A
        save the registry fences raises ``CommitFenced`` on every rank and stops the job."""
        writer = self.writer(episode, metrics=metrics, extra=extra)
        try:
            dcp_save(state, storage_writer=writer, process_group=self.group)
        except CheckpointException as failed:
            writer.abandon()  # the coordinator's staging directory of a save that will not commit
            fenced = [e for e in failures_of(failed) if isinstance(e, LeaseLost)]  # the coordinator's refusal
            if fenced:
                self.verdict = Verdict.FENCED
                if isinstance(fenced[0], CommitFenced):
                    raise fenced[0] from failed
                raise CommitFenced(self.run, writer.name or "?", self.token, str(fenced[0])) from failed
            raise
        return writer.committed


def failures_of(error: BaseException) -> list[BaseException]:
    """The errors behind DCP's ``CheckpointException`` (it keeps (exception, traceback) per failed rank),
    or ``[error]`` for any other error."""
    if not isinstance(error, CheckpointException):
        return [error]
    return [e[0] if isinstance(e, tuple) else e for e in error.failures.values()]


def _reason(verdict: Verdict) -> StopReason:
    # DONE reaches here only when the coordinator's Guard has no stop of its own, which cannot happen
    # (it votes DONE because it stopped); SIGNAL is the graceful stop that lets the episode finish.
    return StopReason.LEASE_LOST if verdict is Verdict.FENCED else StopReason.SIGNAL


__all__ = ["JobGuard", "Verdict", "failures_of"]
