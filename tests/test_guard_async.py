"""Async saves: same bytes as sync saves, a snapshot taken at save(), one result type in both modes, errors
surfacing on the next call (once)."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainguard import CheckpointWriteError, Guard, LeaseLost, Registry

_real_fsync = os.fsync


def _fail_in_the_writer(fd: int) -> None:
    """os.fsync, failing in the background saver's thread only (the loop's own files still sync)."""
    if threading.current_thread().name == "trainguard-async-save":
        raise OSError(errno.EIO, "injected writer failure")
    _real_fsync(fd)


def _state(seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(32, 8)
    optim = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 32)).sum().backward()
    optim.step()
    return {
        "model": model.state_dict(),
        "optim": optim.state_dict(),
        "rng": np.arange(seed, seed + 10),
        "meta": {"episode_rewards": [1.5, float("nan")], "pair": ("EURUSD", 1)},
    }


def _data_files(root: Path, name: str) -> dict[str, bytes]:
    return {f: (root / name / f).read_bytes() for f in ("tensors.safetensors", "tree.json")}


def test_async_and_sync_saves_are_byte_identical(tmp_path: Path) -> None:
    names = {}
    for mode in ("sync", "async"):
        with Guard(run=mode, store=str(tmp_path / mode), async_=(mode == "async")) as guard:
            for episode in guard.episodes():
                result = guard.save(_state(episode), metrics={"loss": 0.5})
                assert result.name == f"ep{episode:08d}-t1"  # known at once, in either mode
                assert result.done() or mode == "async"  # a synchronous save is done when save() returns
                record = result.result(timeout=60)  # async: waits for the background commit
                assert (record.name, record.episode, record.metrics["loss"]) == (result.name, episode, 0.5)
                if episode == 3:
                    break
        assert guard.last_checkpoint is not None and guard.last_checkpoint.episode == 3  # set once written
        with Registry.open(f"sqlite:///{tmp_path / mode / '.trainguard' / 'registry.db'}") as registry:
            names[mode] = [r.name for r in registry.checkpoints(mode)]
    assert len(names["sync"]) == len(names["async"]) == 3
    for sync_name, async_name in zip(names["sync"], names["async"], strict=True):
        assert _data_files(tmp_path / "sync", sync_name) == _data_files(tmp_path / "async", async_name)


def test_async_save_is_a_snapshot_taken_at_save_time(tmp_path: Path) -> None:
    weights = torch.zeros(1 << 20)
    with Guard(run="snap", store=str(tmp_path / "s"), async_=True) as guard:
        for _episode in guard.episodes():
            guard.save({"w": weights})
            weights.add_(1.0)  # training goes on while the writer writes
            break
        record = guard.wait_for_saves()
        assert record is not None
        loaded = guard.store.load(record.name)
    assert float(loaded.state["w"].sum()) == 0.0 and float(weights.sum()) == float(1 << 20)


def test_writer_failure_surfaces_on_the_next_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = threading.Event()

    def fail_once_in_the_writer(fd: int) -> None:
        if threading.current_thread().name == "trainguard-async-save" and not failed.is_set():
            failed.set()
            raise OSError(errno.EIO, "injected writer failure")
        _real_fsync(fd)

    with Guard(run="fail", store=str(tmp_path / "s"), async_=True) as guard:
        monkeypatch.setattr("trainguard.checkpoints._durable.os.fsync", fail_once_in_the_writer)
        episodes = guard.episodes()
        next(episodes)
        guard.save({"w": np.ones(8)})  # returns at once; the failure happens in the background
        next(episodes)
        with pytest.raises(CheckpointWriteError, match="injected writer failure") as raised:
            guard.save({"w": np.ones(8)})
        # A save's first fsync makes its staging directory's entry durable (step "stage").
        assert raised.value.step == "stage" and failed.is_set()
        # The call that reported the failure did not take its own snapshot; the caller decides what next.
        guard.save({"w": np.ones(8)})
        episodes.close()
    with Registry.open(f"sqlite:///{tmp_path / 's/.trainguard/registry.db'}") as registry:
        assert [r.episode for r in registry.checkpoints("fail")] == [2]  # episode 1's save failed, 2's worked


def test_an_error_taken_from_the_result_is_not_raised_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Guard(run="seen", store=str(tmp_path / "s"), async_=True) as guard:
        with monkeypatch.context() as patch:
            patch.setattr("trainguard.checkpoints._durable.os.fsync", _fail_in_the_writer)
            episodes = guard.episodes()
            next(episodes)
            result = guard.save({"w": np.ones(8)})
            with pytest.raises(CheckpointWriteError, match="injected writer failure"):
                result.result(timeout=60)
        assert result.done() and "failed" in repr(result)
        next(episodes)
        second = guard.save({"w": np.ones(8)})  # the failure was reported once, by result()
        assert second.result(timeout=60).episode == 2
        assert guard.wait_for_saves() == second.result()
        episodes.close()


def test_writer_failure_of_the_last_save_surfaces_on_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        pytest.raises(CheckpointWriteError, match="injected writer failure"),
        Guard(run="exitfail", store=str(tmp_path / "s"), async_=True) as guard,
    ):
        monkeypatch.setattr("trainguard.checkpoints._durable.os.fsync", _fail_in_the_writer)
        for _episode in guard.episodes():
            guard.save({"w": np.ones(8)})
            break
    assert not any(t.name == "trainguard-async-save" for t in threading.enumerate())


def test_a_save_in_flight_when_the_lease_is_revoked_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, staged = threading.Event(), threading.Event()
    with Guard(run="inflight", store=str(tmp_path / "s"), async_=True) as guard:
        registry = guard.registry
        real_commit = registry.commit_checkpoint

        def commit_after_the_revocation(*args: Any, **kwargs: Any) -> Any:
            staged.set()
            gate.wait(30)
            return real_commit(*args, **kwargs)

        monkeypatch.setattr(registry, "commit_checkpoint", commit_after_the_revocation)
        episodes = guard.episodes()
        next(episodes)
        guard.save({"w": np.ones(8)})
        assert staged.wait(30)
        registry.revoke("inflight", "taken over while a save was in flight")
        gate.set()
        with pytest.raises(LeaseLost, match="stale fencing token"):
            guard.save({"w": np.ones(8)}, episode=1)
        assert guard.fenced
        episodes.close()
    with Registry.open(f"sqlite:///{tmp_path / 's/.trainguard/registry.db'}") as fresh:
        assert fresh.checkpoints("inflight") == []
        assert any(e.kind == "commit_refused" for e in fresh.events("inflight"))
