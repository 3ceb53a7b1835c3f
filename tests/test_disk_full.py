"""Disk full for real: a store on a 2 MiB tmpfs mounted by the test (root in CI; skipped elsewhere)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from trainguard import CheckpointStore, CheckpointWriteError
from trainguard.checkpoints.layout import STAGING


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30, check=False)


def test_save_on_a_full_disk_fails_clearly_and_keeps_earlier_checkpoints(tiny_filesystem: Path) -> None:
    root = tiny_filesystem / "store"
    with CheckpointStore(root, run="full") as store:
        lease = store.registry.acquire("full", ttl=60)
        small = {"w": np.arange(16_000, dtype=np.float32)}  # 64 kB
        earlier = [store.save(small, episode=e, lease=lease).name for e in (1, 2)]
        huge = {"w": np.ones(1_000_000, dtype=np.float32)}  # 4 MB on a 2 MiB filesystem
        with pytest.raises(CheckpointWriteError) as raised:
            store.save(huge, episode=3, lease=lease)
        error = raised.value
        assert error.errno == errno.ENOSPC and error.step == "write"
        assert "No space left on device" in str(error) and "nothing committed" in str(error)
        assert os.listdir(root / STAGING) == []  # the partial file was removed, freeing the space
        assert [r.name for r in store.checkpoints()] == earlier
        for name in earlier:
            assert store.verify(name).ok
            assert np.array_equal(store.load(name).state["w"], small["w"])
        # The store keeps working once there is room again.
        assert store.save(small, episode=4, lease=lease).episode == 4
