"""The recording half of ``crash_states.py``: run a scenario on a store while every file system operation
the store makes is logged, in order, with snapshots of the SQLite registry after every transaction.

Runs in a child process (``crash_states.py --record SCENARIO DIR``), so that when the states are explored
every writer named in a staging directory is dead - as after a crash.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

RUN = "r"
# save: one save into a store holding a checkpoint (CI); full: saves, a retention eviction, quarantines, a
# release and a recovery that rolls a committed-but-staged checkpoint forward; save-without-dir-fsync: a
# deliberately broken protocol the explorer must catch.
SCENARIOS = ("save", "full", "save-without-dir-fsync")
_PATCHED = ("open", "write", "fsync", "close", "rename", "replace", "mkdir", "unlink", "rmdir")


class Recorder:
    """Patches ``os`` so that every file system operation under ``root`` is logged, in order (including
    ``shutil.rmtree``'s and every ``dir_fd``-relative one: paths are resolved through ``/proc/self/fd``)."""

    def __init__(self, root: Path, registry: Path, out: Path) -> None:
        self.root, self.registry, self.out = root, registry, out
        self.ops: list[dict[str, Any]] = []
        self.fds: dict[int, list[Any]] = {}  # fd -> [relative path, offset]
        self.snapshots = 0
        self.real: dict[str, Any] = {}

    def where(self, path: Any, dir_fd: int | None) -> str | None:
        full = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), os.fsdecode(path)) if dir_fd else path
        full = os.path.abspath(os.fsdecode(full))
        root = str(self.root)
        if full == root:
            return ""  # the store's root: its fsyncs make renames into final places durable
        if not full.startswith(root + os.sep):
            return None
        return full[len(root) + 1 :]

    def note(self, op: dict[str, Any]) -> None:
        self.ops.append(op)

    def snapshot_registry(self) -> None:
        self.snapshots += 1
        name = f"registry-{self.snapshots}.db"
        with sqlite3.connect(self.registry) as source, sqlite3.connect(self.out / name) as target:
            source.backup(target)
        self.note({"op": "registry", "snapshot": name})

    # -- the patched calls ------------------------------------------------------------------------

    def open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        fd: int = self.real["open"](path, flags, mode, dir_fd=dir_fd)
        if (where := self.where(path, dir_fd)) is not None:
            self.fds[fd] = [where, 0]
            if flags & os.O_CREAT:
                self.note({"op": "create", "path": where})
        return fd

    def write(self, fd: int, data: Any) -> int:
        written: int = self.real["write"](fd, data)
        if fd in self.fds:
            where, offset = self.fds[fd]
            chunk = base64.b64encode(bytes(memoryview(data)[:written])).decode()
            self.note({"op": "write", "path": where, "offset": offset, "data": chunk})
            self.fds[fd][1] = offset + written
        return written

    def fsync(self, fd: int) -> None:
        self.real["fsync"](fd)
        if fd in self.fds:
            self.note({"op": "fsync", "path": self.fds[fd][0]})

    def close(self, fd: int) -> None:
        self.fds.pop(fd, None)
        self.real["close"](fd)

    def _moved(self, call: str, src: Any, dst: Any, src_dir_fd: int | None, dst_dir_fd: int | None) -> None:
        self.real[call](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        a, b = self.where(src, src_dir_fd), self.where(dst, dst_dir_fd)
        if a is not None and b is not None:
            self.note({"op": "rename", "src": a, "dst": b})

    def rename(
        self, src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
    ) -> None:
        self._moved("rename", src, dst, src_dir_fd, dst_dir_fd)

    def replace(
        self, src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
    ) -> None:
        self._moved("replace", src, dst, src_dir_fd, dst_dir_fd)

    def _named(self, call: str, op: str, path: Any, dir_fd: int | None, *args: Any) -> None:
        self.real[call](path, *args, dir_fd=dir_fd)
        if (where := self.where(path, dir_fd)) is not None:
            self.note({"op": op, "path": where})

    def mkdir(self, path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        self._named("mkdir", "mkdir", path, dir_fd, mode)

    def unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        self._named("unlink", "unlink", path, dir_fd)

    def rmdir(self, path: Any, *, dir_fd: int | None = None) -> None:
        self._named("rmdir", "rmdir", path, dir_fd)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self.real = {name: getattr(os, name) for name in _PATCHED}
        for name in _PATCHED:
            setattr(os, name, getattr(self, name))
        try:
            yield
        finally:
            for name, function in self.real.items():
                setattr(os, name, function)


def _state(episode: int) -> dict[str, Any]:
    return {"policy": {"w": np.arange(6, dtype=np.float32) + episode}, "step": episode}


def record(scenario: str, out: Path) -> None:
    """Run ``scenario`` on a new store under ``out`` and write ``out/trace.json`` (in a child process)."""
    from trainguard import CheckpointStore
    from trainguard.checkpoints import retention
    from trainguard.registry import Registry

    root, registry = out / "store", out / "registry.db"
    url = f"sqlite:///{registry}"
    expected: dict[str, list[float]] = {}

    def save(store: Any, lease: Any, episode: int) -> None:
        expected[f"ep{episode:08d}-t{lease.token}"] = _state(episode)["policy"]["w"].tolist()
        store.save(_state(episode), episode=episode, lease=lease)

    # The initial state: a store with one checkpoint, copied as it is on disk (after a sync).
    with CheckpointStore(root, run=RUN, registry=url) as store:
        lease = store.registry.acquire(RUN, ttl=3600)
        save(store, lease, 1)
    os.sync()
    shutil.copytree(root, out / "initial", symlinks=True)
    recorder = Recorder(root, registry, out)
    recorder.snapshot_registry()
    original = Registry._transaction

    @contextlib.contextmanager
    def transaction(self: Any, *, durable: bool = True) -> Iterator[Any]:
        with original(self, durable=durable) as conn:
            yield conn
        recorder.snapshot_registry()  # committed: from here on the registry has decided

    Registry._transaction = transaction  # type: ignore[method-assign]
    policy = retention.keep_last(2) if scenario == "full" else retention.keep_all
    with recorder.recording():
        if scenario == "save-without-dir-fsync":
            # The explorer's own check: a protocol missing one fsync barrier (the staging directory's entry)
            # must be caught. Skipped for real, and so never recorded: the trace has no barrier there.
            os.fsync = _skipping_fsync_of(root / ".staging", os.fsync)
        with CheckpointStore(root, run=RUN, registry=url, retention_policy=policy) as store:
            save(store, lease, 2)
            if scenario == "full":
                save(store, lease, 3)  # retention evicts episode 1 (registry, then .trash)
                store.quarantine(f"ep{2:08d}-t{lease.token}", reason="drill")
                store.quarantine(f"ep{3:08d}-t{lease.token}", reason="drill")
                store.release(f"ep{3:08d}-t{lease.token}", reason="drill over")
                # A save whose rename into place fails: committed, left staged for recovery to roll forward.
                real_rename = os.rename
                os.rename = _fail_out_of_staging(real_rename)
                with contextlib.suppress(Exception):
                    save(store, lease, 4)
                os.rename = real_rename
        if scenario == "full":
            with CheckpointStore(root, run=RUN, registry=url, foreign_grace=0):
                pass  # recovery: rolls episode 4 forward
    (out / "trace.json").write_text(json.dumps({"ops": recorder.ops, "expected": expected}))


def _skipping_fsync_of(directory: Path, real: Any) -> Any:
    def fake(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") != str(directory):
            real(fd)

    return fake


def _fail_out_of_staging(real: Any) -> Any:
    def fake(src: Any, dst: Any, **kwargs: Any) -> None:
        directory = os.readlink(f"/proc/self/fd/{kwargs['src_dir_fd']}") if "src_dir_fd" in kwargs else ""
        into = os.readlink(f"/proc/self/fd/{kwargs['dst_dir_fd']}") if "dst_dir_fd" in kwargs else ""
        if directory.endswith("/.staging") and into and not into.endswith(".quarantine"):
            raise OSError(5, "injected: the rename into place fails")
        real(src, dst, **kwargs)

    return fake
