"""The DCP writer and reader in one process (DCP without a process group): what they refuse and what a
refusal leaves behind. The multi-rank behaviour is tests/test_distributed.py."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import torch
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from trainguard.checkpoints import CheckpointStore
from trainguard.checkpoints.layout import quarantine_root, staging_root
from trainguard.distributed import Reader, Writer, failures_of
from trainguard.errors import CheckpointRejected, CorruptCheckpoint, InvalidArgument, LeaseLost

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _state(seed: int = 0) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(16, 8, generator=generator), "b": torch.randn(3, generator=generator).half()}


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with CheckpointStore(tmp_path / "store", run="one") as opened:
        yield opened


def test_round_trip_with_extra_state_and_a_clear_refusal_from_store_load(store: CheckpointStore) -> None:
    lease = store.registry.acquire("one", ttl=30)
    writer = Writer(store, lease, episode=4, extra={"scheduler": {"last_epoch": 4}})
    dcp_save(_state(), storage_writer=writer)
    assert writer.committed is not None and writer.committed.name == "ep00000004-t1"
    target = {key: torch.zeros_like(value) for key, value in _state().items()}
    reader = Reader(store)
    dcp_load(target, storage_reader=reader)
    assert all(torch.equal(target[k], v) for k, v in _state().items())
    assert reader.extra == {"scheduler": {"last_epoch": 4}}
    with pytest.raises(InvalidArgument, match="DCP"):
        store.load("ep00000004-t1")


def test_non_tensor_state_and_saves_without_collectives_are_refused(store: CheckpointStore) -> None:
    lease = store.registry.acquire("one", ttl=30)
    with pytest.raises(CheckpointException) as failed:
        dcp_save({**_state(), "epoch": 3}, storage_writer=Writer(store, lease, episode=1))
    assert isinstance(failures_of(failed.value)[0], InvalidArgument) and "'epoch'" in str(
        failures_of(failed.value)[0]
    )
    with pytest.raises(InvalidArgument, match="use_collectives"):
        dcp_save(_state(), storage_writer=Writer(store, lease, episode=1), use_collectives=False)
    assert store.checkpoints() == [] and not any(staging_root(store.root).iterdir())


class _TakenOverWhileWriting(Writer):
    """Another incarnation takes the run over while this one is writing its shards."""

    def write_data(self, plan: Any, planner: Any) -> Any:
        assert self.store is not None
        self.store.registry.acquire("one", ttl=30, takeover=True)
        return super().write_data(plan, planner)


def test_a_save_fenced_after_its_writes_commits_nothing_and_keeps_the_files_as_evidence(
    store: CheckpointStore,
) -> None:
    lease = store.registry.acquire("one", ttl=30)
    with pytest.raises(CheckpointException) as failed:
        dcp_save(_state(), storage_writer=_TakenOverWhileWriting(store, lease, episode=2))
    assert isinstance(failures_of(failed.value)[0], LeaseLost)  # CommitFenced: the registry's verdict
    assert store.checkpoints() == []
    assert not any(staging_root(store.root).iterdir())
    evidence = list(quarantine_root(store.root).iterdir())
    assert any((entry / "shard-00000.bin").exists() for entry in evidence if entry.is_dir())


class _LosesItsRecord(Writer):
    def write_data(self, plan: Any, planner: Any) -> Any:
        done = super().write_data(plan, planner)
        (staging_root(self.root) / plan.storage_data.staging / "rank-00000.json").unlink()
        return done


def test_a_rank_without_a_record_commits_nothing(store: CheckpointStore) -> None:
    lease = store.registry.acquire("one", ttl=30)
    with pytest.raises(CheckpointException) as failed:
        dcp_save(_state(), storage_writer=_LosesItsRecord(store, lease, episode=2))
    error = failures_of(failed.value)[0]
    assert isinstance(error, CheckpointRejected) and "rank 0 left no record" in str(error)
    assert store.checkpoints() == [] and not any(staging_root(store.root).iterdir())


def test_a_shard_changed_on_disk_is_refused_at_load(store: CheckpointStore) -> None:
    lease = store.registry.acquire("one", ttl=30)
    writer = Writer(store, lease, episode=1)
    dcp_save(_state(), storage_writer=writer)
    assert writer.committed is not None
    shard = store.root / writer.committed.name / "shard-00000.bin"
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF
    shard.write_bytes(bytes(data))
    target = {key: torch.zeros_like(value) for key, value in _state().items()}
    with pytest.raises(CheckpointException) as failed:
        dcp_load(target, storage_reader=Reader(store))
    assert isinstance(failures_of(failed.value)[0], CorruptCheckpoint)
    assert all(not value.any() for value in target.values())  # nothing of the changed file was served


def test_an_async_save_commits_when_its_future_completes(store: CheckpointStore) -> None:
    from torch.distributed.checkpoint.state_dict_saver import async_save

    lease = store.registry.acquire("one", ttl=30)
    writer = Writer(store, lease, episode=6)
    future = async_save(_state(), storage_writer=writer)  # DCP stages a copy, then writes on a thread
    assert isinstance(future, Future)
    future.result(timeout=60)
    assert writer.committed is not None and [r.name for r in store.checkpoints()] == ["ep00000006-t1"]
    assert store.verify("ep00000006-t1").ok
    target = {key: torch.zeros_like(value) for key, value in _state().items()}
    dcp_load(target, storage_reader=Reader(store))
    assert all(torch.equal(target[k], v) for k, v in _state().items())
