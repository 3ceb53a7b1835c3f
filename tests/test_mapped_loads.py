"""Verified loads on a private map (issue 12): what is served is what was verified - a file changed on disk
after its load is re-verified at the next use of the state and refused when its content moved."""

from __future__ import annotations

import errno
import gc
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from support import run_cli
from trainguard import CheckpointStore, CorruptCheckpoint, live
from trainguard._os import mapping
from trainguard.checkpoints.codecs import TENSORS_FILE

W = np.arange(1 << 16, dtype=np.float32)
T = torch.ones(1024, dtype=torch.float32)
STATE = {"w": W, "t": T}


def _saved(tmp_path: Path) -> tuple[CheckpointStore, str, Path]:
    store = CheckpointStore(tmp_path / "store", run="mapped")
    lease = store.registry.acquire("mapped", ttl=60)
    name = store.save(STATE, episode=1, lease=lease).name
    lease.release()
    return store, name, tmp_path / "store" / name / TENSORS_FILE


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rewrite_last_bytes(path: Path) -> None:
    """A writer with access to the store changing the file in place (same inode), after verification."""
    with open(path, "r+b") as handle:
        handle.seek(-8, os.SEEK_END)
        handle.write(b"\x7f" * 8)


def test_a_verified_load_is_a_map_and_serves_the_verified_values(tmp_path: Path) -> None:
    store, name, _ = _saved(tmp_path)
    with store:
        loaded = store.load(name)
        assert loaded.mapped
        state = loaded.state
        assert np.array_equal(state["w"], W) and torch.equal(state["t"], T)
        state["t"].add_(1)  # writes stay in the process (copy on write), never reach the file
        assert torch.equal(store.load(name).state["t"], T)


def test_a_file_rewritten_in_place_after_the_load_is_refused_at_the_next_use(tmp_path: Path) -> None:
    store, name, tensors = _saved(tmp_path)
    with store:
        loaded = store.load(name)
        assert np.array_equal(loaded.state["w"], W)
        _rewrite_last_bytes(tensors)
        with pytest.raises(CorruptCheckpoint, match="changed on disk after it was verified") as refused:
            loaded.state  # noqa: B018 - the access is what is checked
        assert refused.value.exit_code == 1
        with pytest.raises(CorruptCheckpoint, match="changed on disk after it was verified"):
            loaded.check()
        with pytest.raises(CorruptCheckpoint, match="does not match the manifest"):
            store.load(name)  # and a new load refuses it too


def test_a_touched_but_unchanged_file_is_re_verified_and_served(tmp_path: Path) -> None:
    store, name, tensors = _saved(tmp_path)
    with store:
        loaded = store.load(name)
        os.utime(tensors, ns=(1, 1))  # metadata moved, content did not
        assert np.array_equal(loaded.state["w"], W)  # hashed again through the map: same bytes


def test_a_file_replaced_by_rename_does_not_change_what_was_verified(tmp_path: Path) -> None:
    store, name, tensors = _saved(tmp_path)
    with store:
        loaded = store.load(name)
        forged = tensors.with_name("forged")
        forged.write_bytes(tensors.read_bytes()[:-8] + b"\x7f" * 8)
        os.replace(forged, tensors)  # a new inode under the old name; the map keeps the verified one
        assert np.array_equal(loaded.state["w"], W)


def test_a_private_copy_is_immune_to_later_writes(tmp_path: Path) -> None:
    store, name, tensors = _saved(tmp_path)
    with store:
        copied = store.load(name, mapped=False)
        assert not copied.mapped
        _rewrite_last_bytes(tensors)
        assert torch.equal(copied.state["t"], T)


def test_a_file_changed_while_it_is_verified_is_refused_and_nothing_leaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, name, tensors = _saved(tmp_path)
    real_hash = mapping._hash

    def hash_while_written(data: np.ndarray) -> str:
        digest = real_hash(data)
        if data.nbytes > 1000:
            os.utime(tensors, ns=(2, 2))  # the seam: the file changes between the two fstat calls
        return digest

    with store:
        before = _open_fds()
        monkeypatch.setattr(mapping, "_hash", hash_while_written)
        with pytest.raises(CorruptCheckpoint, match="changed while it was verified"):
            store.load(name)
        assert _open_fds() == before  # every descriptor opened for the load was closed


def test_the_live_model_refuses_a_live_checkpoint_changed_on_disk(tmp_path: Path) -> None:
    store, name, tensors = _saved(tmp_path)
    url = f"sqlite:///{tmp_path / 'store' / '.trainguard' / 'registry.db'}"
    with store:
        store.registry.set_live_pointer("mapped", name, reason="test")
    serving = live.LiveModel("mapped", registry=url)
    try:
        serving.refresh()
        assert np.array_equal(serving.state["w"], W)
        _rewrite_last_bytes(tensors)
        with pytest.raises(CorruptCheckpoint, match="changed on disk after it was verified"):
            serving.state  # noqa: B018
        with pytest.raises(CorruptCheckpoint):
            live.load("mapped", registry=url).state  # noqa: B018
    finally:
        serving.close()


def test_loads_close_their_descriptors_when_dropped(tmp_path: Path) -> None:
    store, name, _ = _saved(tmp_path)
    with store:
        before = _open_fds()
        for _ in range(20):
            store.load(name).state  # noqa: B018
        gc.collect()
        assert _open_fds() <= before + 1


def test_a_process_serving_a_loaded_checkpoint_never_looks_like_a_writer_to_the_watchdog(
    tmp_path: Path,
) -> None:
    """The watchdog's scan names processes holding files open under a store; a serving process (the live
    system, `promote`'s evaluator) keeps its maps, never a descriptor: rogue_action: kill would stop it."""
    store, name, _ = _saved(tmp_path)
    with store:
        loaded = store.load(name)
        assert loaded.state is not None
        held = [
            link
            for fd in os.listdir("/proc/self/fd")
            if (link := os.path.realpath(f"/proc/self/fd/{fd}")).startswith(str(tmp_path / "store" / name))
        ]
        assert held == []
        scan = run_cli("incident", "scan", str(tmp_path / "store"), "--json")
        assert json.loads(scan.stdout)["stores"][0]["suspects"] == []


def test_a_reload_of_an_unchanged_file_is_not_hashed_again_and_a_changed_one_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, name, tensors = _saved(tmp_path)
    hashed: list[int] = []
    real_hash = mapping._hash

    def counting(data: np.ndarray) -> str:
        hashed.append(data.nbytes)
        return real_hash(data)

    monkeypatch.setattr(mapping, "_hash", counting)
    with store:
        store.load(name)
        first = len(hashed)
        assert first >= 2  # tensors and tree, hashed once each
        store.load(name)
        assert len(hashed) == first  # same identity (inode, size, mtime, ctime): the digest is known
        _rewrite_last_bytes(tensors)
        with pytest.raises(CorruptCheckpoint, match="does not match the manifest"):
            store.load(name)
        assert len(hashed) == first + 1  # the rewritten file was hashed again, and refused


def test_a_file_system_that_cannot_map_falls_back_to_a_private_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, name, _ = _saved(tmp_path)

    def no_mmap(fd: int, size: int) -> np.ndarray:
        raise OSError(errno.ENODEV, "mmap: No such device")  # what some FUSE and network mounts answer

    monkeypatch.setattr(mapping, "_map_private", no_mmap)
    monkeypatch.setattr(mapping, "VERIFIED", mapping._Verified())  # nothing known: every file is read
    with store:
        loaded = store.load(name)
        assert not loaded.mapped and np.array_equal(loaded.state["w"], W)
