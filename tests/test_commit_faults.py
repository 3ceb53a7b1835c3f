"""Make each step of the commit fail in turn, at the syscall seams the store uses, and check the state after.

After every failure: the error names the failing step; no committed checkpoint is torn (every committed one
verifies and loads); the next open leaves no staging directory behind; a failure *after* the registry
decided (rename, store fsync) loses nothing - the checkpoint is rolled forward and loads.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainguard import CheckpointStore, CheckpointWriteError, Registry, RegistryError
from trainguard.checkpoints.layout import STAGING
from trainguard.registry import EventKind

STATE = {"policy": {"w": np.arange(4096, dtype=np.float32)}, "meta": {"lr": 3e-4}}

_real_write, _real_fsync, _real_rename, _real_mkdir = os.write, os.fsync, os.rename, os.mkdir


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _is_dir(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def _eio(*_args: object) -> OSError:
    return OSError(errno.EIO, "injected I/O error")


def fail_write_of(suffix: str) -> Callable[[int, Any], int]:
    def fake(fd: int, data: Any) -> int:
        if _fd_path(fd).endswith(suffix):
            raise _eio()
        return _real_write(fd, data)

    return fake


def fail_fsync(*, directory: bool, under_staging: bool) -> Callable[[int], None]:
    def fake(fd: int) -> None:
        path = _fd_path(fd)
        if _is_dir(fd) == directory and ((f"/{STAGING}/" in path) == under_staging):
            raise _eio()
        _real_fsync(fd)

    return fake


def _full(path: Any, dir_fd: int | None) -> str:
    # The store moves and creates relative to directory descriptors (it follows no symlink below its root).
    return os.path.join(_fd_path(dir_fd), os.fspath(path)) if dir_fd is not None else os.fspath(path)


def fail_rename_out_of_staging(source: Any, target: Any, **kwargs: Any) -> None:
    if f"/{STAGING}/" in _full(source, kwargs.get("src_dir_fd")):
        raise _eio()
    _real_rename(source, target, **kwargs)


def fail_mkdir_in_staging(path: Any, *args: Any, **kwargs: Any) -> None:
    if f"/{STAGING}/" in _full(path, kwargs.get("dir_fd")):
        raise _eio()
    _real_mkdir(path, *args, **kwargs)


def fail_store_fsync(fd: int) -> None:
    # The fsync of the store directory after the rename (its path does not contain .staging).
    if _is_dir(fd) and f"/{STAGING}" not in _fd_path(fd):
        raise _eio()
    _real_fsync(fd)


# (step reported, syscall patched, fake, whether the registry had already decided)
FAULTS = [
    ("stage", "mkdir", fail_mkdir_in_staging, False),
    ("write", "write", fail_write_of("tensors.safetensors"), False),
    ("fsync", "fsync", fail_fsync(directory=False, under_staging=True), False),
    ("manifest", "write", fail_write_of("MANIFEST.json"), False),
    ("dir-fsync", "fsync", fail_fsync(directory=True, under_staging=True), False),
    ("rename", "rename", fail_rename_out_of_staging, True),
    ("store-fsync", "fsync", fail_store_fsync, True),
]


def _assert_nothing_torn(store: CheckpointStore) -> None:
    for record in store.checkpoints():
        assert store.verify(record.name).ok, record.name
        assert store.load(record.name).state["policy"]["w"].shape == (4096,)


@pytest.mark.parametrize(("step", "syscall", "fake", "decided"), FAULTS, ids=[f[0] for f in FAULTS])
def test_failure_at_each_step(
    tmp_path: Path,
    run_name: str,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    syscall: str,
    fake: Callable[..., Any],
    decided: bool,
) -> None:
    root = tmp_path / "store"
    with CheckpointStore(root, run=run_name) as store:
        lease = store.registry.acquire(run_name, ttl=60)
        good = store.save(STATE, episode=1, lease=lease)
        with monkeypatch.context() as patch:
            patch.setattr(f"trainguard.checkpoints._durable.os.{syscall}", fake)
            with pytest.raises(CheckpointWriteError) as raised:
                store.save(STATE, episode=2, lease=lease)
        error = raised.value
        assert error.step == step
        assert f"step {step!r}" in str(error) and "injected I/O error" in str(error)
        assert error.committed is decided
        assert error.errno == errno.EIO  # still an OSError callers can inspect
        _assert_nothing_torn(store)
        assert store.load(good.name).episode == 1

    with CheckpointStore(root, run=run_name) as reopened:  # the next open: recovery
        assert os.listdir(root / STAGING) == []
        episodes = [r.episode for r in reopened.checkpoints()]
        assert episodes == ([1, 2] if decided else [1])
        _assert_nothing_torn(reopened)
        rolled = [
            e.checkpoint
            for e in reopened.registry.events(run_name, kinds=[EventKind.CHECKPOINT_ROLLED_FORWARD])
        ]
        # After a failed rename the first reader rolled it forward; a failed fsync after the rename had
        # nothing left to roll.
        assert rolled == (["ep00000002-t1"] if step == "rename" else [])


def test_registry_failure_before_commit_leaves_nothing(
    tmp_path: Path, run_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CheckpointStore(tmp_path / "s", run=run_name) as store:
        # A short lease: a failing registry is retried while the lease is held, then the save gives up.
        lease = store.registry.acquire(run_name, ttl=2)
        store.save(STATE, episode=1, lease=lease)

        def unreachable(*_a: object, **_k: object) -> None:
            raise RegistryError(store.registry.url, "database error: server closed the connection")

        monkeypatch.setattr(store.registry, "commit_checkpoint", unreachable)
        with pytest.raises(CheckpointWriteError) as raised:
            store.save(STATE, episode=2, lease=lease)
        assert raised.value.step == "registry" and not raised.value.committed
        assert os.listdir(store.root / STAGING) == []
        assert [r.episode for r in store.checkpoints()] == [1]


def test_registry_failure_after_commit_is_discovered_and_rolled_forward(
    tmp_path: Path, run_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The transaction committed but the client saw an error (connection lost after COMMIT was sent):
    # the store asks the registry again and finishes the checkpoint instead of discarding it.
    with CheckpointStore(tmp_path / "s", run=run_name) as store:
        lease = store.registry.acquire(run_name, ttl=60)
        real_commit = Registry.commit_checkpoint

        def commit_then_fail(*args: Any, **kwargs: Any) -> None:
            real_commit(store.registry, *args, **kwargs)
            raise RegistryError(store.registry.url, "database error: connection reset after COMMIT")

        monkeypatch.setattr(store.registry, "commit_checkpoint", commit_then_fail)
        record = store.save(STATE, episode=2, lease=lease)
        assert store.load(record.name).episode == 2
        assert os.listdir(store.root / STAGING) == []


def test_a_crash_between_commit_and_rename_is_read_in_place_and_rolled_forward_by_a_writer(
    tmp_path: Path, run_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CheckpointStore(tmp_path / "s", run=run_name) as store:
        lease = store.registry.acquire(run_name, ttl=60)
        monkeypatch.setattr("trainguard.checkpoints._durable.os.rename", fail_rename_out_of_staging)
        with pytest.raises(CheckpointWriteError) as raised:
            store.save(STATE, episode=3, lease=lease)
        assert raised.value.committed
        monkeypatch.undo()
        staged = os.listdir(store.root / STAGING)
        assert len(staged) == 1
        # A reader finds the committed row with its files still staged: it reads them there (hashes checked)
        # and moves nothing - readers never write.
        with CheckpointStore.open_existing(store.root, run=run_name, read_only=True) as reader:
            loaded = reader.load("latest")
            assert reader.verify("latest").ok
        assert loaded.episode == 3 and not (store.root / loaded.name).exists()
        assert os.listdir(store.root / STAGING) == staged
        # A writer's open rolls it forward.
        with CheckpointStore(store.root, run=run_name) as writer:
            assert writer.recovery.rolled_forward == [loaded.name]
        assert (store.root / loaded.name).is_dir() and os.listdir(store.root / STAGING) == []
