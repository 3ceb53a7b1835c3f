"""A store whose reserved directories are symlinks must never make trainguard delete or move files outside
it (issue 10, defect 1): such a store is refused before anything happens, every delete and move below the
root follows no symlink, and read paths never recover or delete."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from support import run_cli
from trainguard import CheckpointState, CheckpointStore, UnsafeStore
from trainguard.checkpoints.layout import STAGING, TRASH

STATE = {"w": np.arange(16, dtype=np.float32)}


def _victim(tmp_path: Path) -> Path:
    """Somebody else's directory: files and an old subdirectory (older than any staging grace period)."""
    victim = tmp_path / "victim"
    (victim / "old-subdir").mkdir(parents=True)
    (victim / "precious.txt").write_text("do not delete")
    (victim / "old-subdir" / "data.bin").write_bytes(b"\x00" * 64)
    old = time.time() - 3600
    os.utime(victim / "old-subdir", (old, old))
    return victim


def _contents(directory: Path) -> list[str]:
    # SQLite's -shm index and an empty -wal may appear when a WAL database is read: not a change (the
    # database's own bytes are compared instead).
    return sorted(
        str(p.relative_to(directory)) for p in directory.rglob("*") if not p.name.endswith(("-shm", "-wal"))
    )


def _store_with_one_checkpoint(root: Path) -> str:
    with CheckpointStore(root, run="r") as store:
        lease = store.registry.acquire("r", ttl=60)
        name = store.save(STATE, episode=1, lease=lease).name
        lease.release()
    return name


def test_a_symlinked_trash_is_refused_and_verify_deletes_nothing_outside(tmp_path: Path) -> None:
    victim, root = _victim(tmp_path), tmp_path / "store"
    before = _contents(victim)
    name = _store_with_one_checkpoint(root)
    shutil.rmtree(root / name)  # the committed checkpoint's directory is gone...
    (root / TRASH).symlink_to(victim, target_is_directory=True)  # ...and .trash points elsewhere

    result = run_cli("ckpt", "verify", "r", "--store", str(root))

    assert result.returncode == 1, result.stderr
    assert f"{TRASH} is a symbolic link" in result.stderr and "Traceback" not in result.stderr
    assert _contents(victim) == before
    with pytest.raises(UnsafeStore) as raised:
        CheckpointStore(root, run="r")
    assert raised.value.entry == TRASH
    assert _contents(victim) == before


def test_a_symlinked_staging_is_refused_by_every_open(tmp_path: Path) -> None:
    victim, root = _victim(tmp_path), tmp_path / "store"
    before = _contents(victim)
    _store_with_one_checkpoint(root)
    shutil.rmtree(root / STAGING)
    (root / STAGING).symlink_to(victim, target_is_directory=True)

    opens: list[Callable[[], CheckpointStore]] = [
        lambda: CheckpointStore(root, run="r", foreign_grace=0),
        lambda: CheckpointStore.open_existing(root, run="r", recover=True),
        lambda: CheckpointStore.open_existing(root, run="r", read_only=True),
    ]
    for open_store in opens:
        with pytest.raises(UnsafeStore, match="is a symbolic link"):
            open_store()
    assert _contents(victim) == before
    listed = run_cli("ckpt", "ls", "r", "--store", str(root))
    assert listed.returncode == 1 and f"{STAGING} is a symbolic link" in listed.stderr
    assert _contents(victim) == before


def test_symlinks_below_the_root_are_moved_as_links_never_followed(tmp_path: Path) -> None:
    """Links planted where the store deletes and moves - as an evicted checkpoint's directory, inside
    .trash, as an unregistered entry - are handled as the links they are; their targets survive."""
    victim, root = _victim(tmp_path), tmp_path / "store"
    before = _contents(victim)
    with CheckpointStore(root, run="r") as store:
        lease = store.registry.acquire("r", ttl=60)
        name = store.save(STATE, episode=1, lease=lease).name
        store.registry.set_checkpoint_state("r", name, CheckpointState.EVICTED, reason="test")
        lease.release()
    shutil.rmtree(root / name)
    (root / name).symlink_to(victim, target_is_directory=True)  # the evicted name now points elsewhere
    (root / TRASH).mkdir()
    (root / TRASH / "planted").symlink_to(victim, target_is_directory=True)
    (root / "stray").symlink_to(victim, target_is_directory=True)

    with CheckpointStore(root, run="r") as store:
        report = store.recovery

    assert _contents(victim) == before
    assert f"evicted {name}" in report.finished and "emptied .trash" in report.finished
    assert not os.path.lexists(root / name) and os.listdir(root / TRASH) == []
    assert report.quarantined_unregistered == ["stray"]
    assert (root / ".quarantine" / "stray.unregistered").is_symlink()


def test_read_paths_never_recover_or_delete(tmp_path: Path) -> None:
    root = tmp_path / "store"
    name = _store_with_one_checkpoint(root)
    (root / TRASH).mkdir()
    (root / TRASH / "left-by-a-crash").mkdir()
    shutil.rmtree(root / name)
    listing, database = _contents(root), (root / ".trainguard" / "registry.db").read_bytes()

    result = run_cli("ckpt", "verify", "r", "--store", str(root))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert run_cli("ckpt", "ls", "r", "--store", str(root)).returncode == 0
    with CheckpointStore.open_existing(root, run="r", read_only=True) as reader:
        assert not reader.verify(name).ok
    assert _contents(root) == listing  # nothing deleted, nothing created, nothing recovered
    assert (root / ".trainguard" / "registry.db").read_bytes() == database
