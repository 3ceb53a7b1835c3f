"""The checkpoint store on real files: round trips, listing, pins, quarantine, retention, recovery."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from trainguard import (
    CheckpointRejected,
    CheckpointState,
    CheckpointStore,
    CommitFenced,
    CommitRefused,
    InvalidArgument,
    InvalidName,
    LeaseLost,
    Registry,
    RegistryNotFound,
    RunNotFound,
    StateConflict,
    retention,
)
from trainguard.checkpoints import Manifest, Validation
from trainguard.checkpoints.layout import QUARANTINE, STAGING, StagingName, reason_file
from trainguard.registry import ProcessIdentity


def _model_state() -> dict[str, object]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optim = torch.optim.Adam(model.parameters(), lr=3e-4)
    model(torch.randn(5, 8)).sum().backward()
    optim.step()
    return {
        "model": model.state_dict(),
        "optim": optim.state_dict(),
        "episode_rewards": [1.5, -2.0],
        "rng": np.random.default_rng(1).integers(0, 10, size=4),
        "note": "ok",
        "inf": float("inf"),
    }


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def test_round_trip_of_model_optimizer_and_metadata(store: CheckpointStore) -> None:
    state = _model_state()
    lease = store.registry.acquire(store.run, ttl=30)
    record = store.save(state, episode=100, lease=lease, metrics={"expectancy": 0.4})
    loaded = store.load(record.name)
    _assert_same(state, loaded.state)
    # Optimizer state keeps its integer keys: it can be fed straight back to load_state_dict.
    optim = torch.optim.Adam(
        torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).parameters()
    )
    optim.load_state_dict(loaded.state["optim"])
    assert loaded.manifest.episode == 100 and loaded.manifest.token == lease.token
    assert loaded.manifest.writer["pid"] == os.getpid()
    assert record.metrics == {"expectancy": 0.4}


def test_tensors_file_is_standard_safetensors(store: CheckpointStore) -> None:
    lease = store.registry.acquire(store.run, ttl=30)
    weights: dict[str, np.ndarray] = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.ones(3, dtype=np.int64),
    }
    record = store.save(weights, episode=1, lease=lease)
    read_by_library = load_file(str(store.root / record.name / "tensors.safetensors"))
    assert {k: v.tolist() for k, v in read_by_library.items()} == {k: v.tolist() for k, v in weights.items()}


def test_torch_format_round_trip(tmp_path: Path, run_name: str) -> None:
    with CheckpointStore(tmp_path / "s", run=run_name, format="torch") as store:
        lease = store.registry.acquire(run_name, ttl=30)
        state = _model_state()
        del state["rng"]
        record = store.save(state, episode=3, lease=lease)
        assert sorted(os.listdir(store.root / record.name)) == ["MANIFEST.json", "state.pt"]
        _assert_same(state, store.load(record.name).state)


def test_torch_format_refuses_at_save_what_it_could_not_load_safely(tmp_path: Path, run_name: str) -> None:
    # A datetime pickles as a call to its class: weights_only loading refuses it, so the validation step
    # refuses to commit a checkpoint nobody could load without trusting pickle. Numpy arrays and scalars of
    # numeric dtypes (training statistics) are on trainguard's allow-list and round-trip.
    with CheckpointStore(tmp_path / "s", run=run_name, format="torch") as store:
        lease = store.registry.acquire(run_name, ttl=30)
        with pytest.raises(CheckpointRejected, match=r"Unsupported global: GLOBAL datetime"):
            store.save({"when": datetime.datetime(2026, 1, 1)}, episode=1, lease=lease)
        with pytest.raises(CheckpointRejected, match="ObjectDType"):
            store.save({"objects": np.array([object()], dtype=object)}, episode=1, lease=lease)
        assert store.checkpoints() == []
        stats = {"rng": np.arange(3), "mean": np.float32(0.5)}
        loaded = store.load(store.save(stats, episode=2, lease=lease).name).state
        assert loaded["rng"].tolist() == [0, 1, 2] and loaded["mean"] == np.float32(0.5)


def test_list_latest_and_default_names(store: CheckpointStore) -> None:
    lease = store.registry.acquire(store.run, ttl=30)
    for episode in (5, 25, 15):
        store.save({"x": np.zeros(2)}, episode=episode, lease=lease)
    assert [r.episode for r in store.checkpoints()] == [5, 15, 25]
    latest = store.latest()
    assert latest is not None and latest.name == f"ep00000025-t{lease.token}"
    assert store.load("latest").episode == 25


def test_parent_chain_is_recorded(store: CheckpointStore) -> None:
    lease = store.registry.acquire(store.run, ttl=30)
    first = store.save({"x": np.zeros(1)}, episode=1, lease=lease)
    second = store.save({"x": np.zeros(1)}, episode=2, lease=lease)
    assert (first.parent, second.parent) == (None, first.name)


def test_stale_token_is_fenced_and_set_aside_as_evidence(store: CheckpointStore) -> None:
    stale = store.registry.acquire(store.run, ttl=30)
    store.registry.acquire(store.run, ttl=30, takeover=True, reason="test")
    with pytest.raises(CommitFenced) as raised:
        store.save({"x": np.ones(3)}, episode=7, lease=stale)
    assert isinstance(raised.value, LeaseLost) and isinstance(raised.value, CommitRefused)
    assert store.checkpoints() == []
    parked = list((store.root / QUARANTINE).glob("ep00000007-*"))
    directories = [p for p in parked if p.is_dir()]
    assert len(directories) == 1
    record = json.loads(reason_file(directories[0]).read_text())
    assert record["reason"] == "fenced" and record["token"] == stale.token
    manifest = json.loads((directories[0] / "MANIFEST.json").read_text())
    assert manifest["writer"]["pid"] == os.getpid()  # the evidence names its writer
    assert not os.listdir(store.root / STAGING)
    # The lease now knows it is lost: the next save fails fast without writing anything.
    with pytest.raises(LeaseLost):
        store.save({"x": np.ones(3)}, episode=8, lease=stale)


def test_budget_is_enforced_at_commit(store: CheckpointStore) -> None:
    store.registry.set_limits(store.run, {"max_episodes": 10})
    lease = store.registry.acquire(store.run, ttl=30)
    store.save({"x": np.ones(1)}, episode=10, lease=lease)
    with pytest.raises(CommitRefused, match="beyond the run's budget of 10"):
        store.save({"x": np.ones(1)}, episode=11, lease=lease)
    assert [r.episode for r in store.checkpoints()] == [10]
    assert any(e.kind == "commit_refused" for e in store.registry.events(store.run))


def test_non_finite_values_and_pickle_only_objects_are_rejected(store: CheckpointStore) -> None:
    lease = store.registry.acquire(store.run, ttl=30)
    bad = np.ones(1000, dtype=np.float32)
    bad[500] = np.nan
    with pytest.raises(CheckpointRejected, match="'w' has NaN/inf"):
        store.save({"w": bad}, episode=1, lease=lease)
    with pytest.raises(CheckpointRejected, match="cannot be stored without pickle"):
        store.save({"obj": object()}, episode=1, lease=lease)
    assert store.checkpoints() == [] and not os.listdir(store.root / STAGING)


def test_user_validator_can_refuse(tmp_path: Path, run_name: str) -> None:
    def no_negative_episode_reward(_staging: Path, manifest: Manifest) -> None:
        if manifest.metrics.get("reward", 0) < 0:
            raise ValueError("reward is negative")

    hooks = Validation(hooks=(no_negative_episode_reward,))
    with CheckpointStore(tmp_path / "s", run=run_name, validation=hooks) as store:
        lease = store.registry.acquire(run_name, ttl=30)
        with pytest.raises(CheckpointRejected, match="reward is negative"):
            store.save({"x": np.ones(1)}, episode=1, lease=lease, metrics={"reward": -1})
        store.save({"x": np.ones(1)}, episode=1, lease=lease, metrics={"reward": 1})
        assert len(store.checkpoints()) == 1


def test_pin_quarantine_and_release(store: CheckpointStore) -> None:
    lease = store.registry.acquire(store.run, ttl=30)
    record = store.save({"x": np.arange(4)}, episode=1, lease=lease)
    assert store.pin(record.name, reason="last good").pinned
    assert not store.unpin(record.name).pinned
    store.quarantine(record.name, reason="trained on wrong features")
    assert not (store.root / record.name).exists()
    parked = store.root / QUARANTINE / record.name
    assert (
        parked.is_dir()
        and json.loads(reason_file(parked).read_text())["reason"] == "trained on wrong features"
    )
    with pytest.raises(StateConflict, match="quarantined"):
        store.load(record.name)
    assert store.verify(record.name).ok  # quarantined, not damaged
    store.release(record.name)
    assert store.load(record.name).state["x"].tolist() == [0, 1, 2, 3]
    kinds = [e.kind for e in store.registry.events(store.run)]
    assert {
        "checkpoint_pinned",
        "checkpoint_unpinned",
        "checkpoint_quarantined",
        "checkpoint_released",
    } <= set(kinds)


def test_quarantine_needs_a_reason(store: CheckpointStore) -> None:
    lease = store.registry.acquire(store.run, ttl=30)
    record = store.save({"x": np.arange(1)}, episode=1, lease=lease)
    with pytest.raises(InvalidArgument, match="reason"):
        store.quarantine(record.name, reason=" ")


def test_retention_runs_after_commit_and_protects_pinned_live_resumed(tmp_path: Path, run_name: str) -> None:
    policy = retention.keep_last(2)
    with CheckpointStore(tmp_path / "s", run=run_name, retention_policy=policy) as store:
        lease = store.registry.acquire(run_name, ttl=30)
        names = [store.save({"x": np.ones(1)}, episode=e, lease=lease).name for e in range(1, 4)]
        assert [r.name for r in store.checkpoints()] == names[1:]
        assert not (store.root / names[0]).exists()
        store.pin(names[1])
        store.registry.set_live_pointer(run_name, names[2], reason="test")
        store.registry.set_resumed_from(run_name, names[2])
        later = [store.save({"x": np.ones(1)}, episode=e, lease=lease).name for e in range(4, 8)]
        kept = {r.name for r in store.checkpoints()}
        assert kept == {names[1], names[2], *later[-2:]}
        evicted = store.checkpoints(states=(CheckpointState.EVICTED,))
        assert {r.name for r in evicted} == {names[0], *later[:2]}
        assert all(not (store.root / r.name).exists() for r in evicted)


def test_bad_checkpoint_names_and_episodes_are_refused(store: CheckpointStore) -> None:
    lease = store.registry.acquire(store.run, ttl=30)
    for bad in ("../escape", "a/b", "", "x\x00", ".staging"):
        with pytest.raises(InvalidName):
            store.save({"x": np.ones(1)}, episode=1, lease=lease, name=bad)
    bad_episodes: list[Any] = [-1, 1.5, True]
    for bad_episode in bad_episodes:
        with pytest.raises(InvalidArgument, match="episode"):
            store.save({"x": np.ones(1)}, episode=bad_episode, lease=lease)
    assert not (store.root.parent / "escape").exists()
    with pytest.raises(InvalidName):
        store.load("../../etc/passwd")


def test_recovery_quarantines_a_directory_without_a_committed_row(store: CheckpointStore) -> None:
    rogue = store.root / "checkpoint_ep063050"
    rogue.mkdir()
    (rogue / "model.pth").write_bytes(b"written by something outside trainguard")
    report = store.recover()
    assert report.quarantined_unregistered == ["checkpoint_ep063050"]
    parked = store.root / QUARANTINE / "checkpoint_ep063050.unregistered"
    assert (parked / "model.pth").read_bytes().startswith(b"written by")  # kept as evidence
    assert json.loads(reason_file(parked).read_text())["reason"] == "unregistered"


def test_recovery_removes_staging_of_a_dead_writer_and_keeps_a_live_ones(store: CheckpointStore) -> None:
    me = ProcessIdentity.current()
    live = store.root / STAGING / StagingName.new("ep1", me, 1)
    dead_identity = ProcessIdentity(me.host, me.host_key, me.pid, me.start_ticks - 100_000, me.uid)
    dead = store.root / STAGING / StagingName.new("ep2", dead_identity, 1)
    for path in (live, dead):
        path.mkdir()
        (path / "tensors.safetensors").write_bytes(b"partial")
    report = store.recover()
    assert report.removed_staging == [dead.name]
    assert report.left_for_live_writer == [live.name]
    assert live.exists() and not dead.exists()


def test_store_registry_defaults_under_the_store(tmp_path: Path, run_name: str) -> None:
    with CheckpointStore(tmp_path / "s", run=run_name) as store:
        assert (tmp_path / "s" / ".trainguard" / "registry.db").exists()
        assert store.registry.run(run_name).store == str((tmp_path / "s").resolve())


def test_lease_of_another_run_is_refused(tmp_path: Path, run_name: str) -> None:
    with CheckpointStore(tmp_path / "s", run=run_name) as store:
        other = store.registry.acquire("other-run", ttl=30)
        with pytest.raises(InvalidArgument, match="another run"):
            store.save({"x": np.ones(1)}, episode=1, lease=other)


def test_cli_store_never_creates_a_run(tmp_path: Path) -> None:
    with pytest.raises(RegistryNotFound, match="no such registry file"):
        CheckpointStore(tmp_path, run="typo-run", create_run=False)
    assert os.listdir(tmp_path) == []  # no registry was created by looking
    CheckpointStore(tmp_path, run="real-run").close()
    with pytest.raises(RunNotFound, match="not in the registry"):
        CheckpointStore(tmp_path, run="typo-run", create_run=False)
    with Registry.open(f"sqlite:///{tmp_path / '.trainguard' / 'registry.db'}") as registry:
        assert registry.run_info("typo-run") is None
