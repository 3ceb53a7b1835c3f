"""Corruption: flipped bytes in a data file or the manifest are reported by verify and refused by load."""

from __future__ import annotations

import io
import json
import os
import pickle
import sqlite3
from pathlib import Path

import blake3
import numpy as np
import pytest
import torch

from support import run_cli
from trainguard import CheckpointStore, CorruptCheckpoint, UnsafeCheckpoint
from trainguard.checkpoints.codecs import read_state


def hash_bytes(data: bytes) -> str:
    """The manifest's hash format, computed the way an attacker would: with the blake3 package itself."""
    return f"blake3:{blake3.blake3(data).hexdigest()}"


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def saved(sqlite_store: CheckpointStore) -> tuple[CheckpointStore, str]:
    lease = sqlite_store.registry.acquire(sqlite_store.run, ttl=60)
    state = {"w": np.linspace(0, 1, 10_000, dtype=np.float32), "meta": {"features": 12}}
    record = sqlite_store.save(state, episode=13475, lease=lease)
    return sqlite_store, record.name


@pytest.mark.parametrize("file", ["tensors.safetensors", "tree.json", "MANIFEST.json"])
def test_flipped_byte_is_reported_by_verify_and_refused_by_load(
    saved: tuple[CheckpointStore, str], file: str
) -> None:
    store, name = saved
    target = store.root / name / file
    _flip(target, offset=len(target.read_bytes()) // 2)

    report = store.verify(name)
    assert not report.ok and report.problems[0].file == str(target)
    with pytest.raises(CorruptCheckpoint) as raised:
        store.load(name)
    assert raised.value.file == str(target) and "does not match" in raised.value.reason

    cli = run_cli("ckpt", "verify", store.run, "--store", str(store.root))
    assert cli.returncode == 1
    assert f"CORRUPT  {name}: {target}" in cli.stdout
    as_json = json.loads(run_cli("ckpt", "verify", store.run, "--store", str(store.root), "--json").stdout)
    assert as_json["ok"] is False and as_json["results"][0]["problems"][0]["file"] == str(target)


def test_truncated_missing_and_extra_files_are_reported(saved: tuple[CheckpointStore, str]) -> None:
    store, name = saved
    directory = store.root / name
    (directory / "tensors.safetensors").write_bytes((directory / "tensors.safetensors").read_bytes()[:100])
    (directory / "tree.json").unlink()
    (directory / "dropped_in.pth").write_bytes(b"?")
    reasons = {Path(p.file).name: p.reason for p in store.verify(name).problems}
    assert reasons == {
        "tensors.safetensors": reasons["tensors.safetensors"],
        "tree.json": "missing",
        "dropped_in.pth": "not listed in the manifest",
    }
    assert reasons["tensors.safetensors"].startswith("size 100 bytes")


def test_intact_checkpoint_verifies_with_exit_0(saved: tuple[CheckpointStore, str]) -> None:
    store, name = saved
    cli = run_cli("ckpt", "verify", store.run, "--store", str(store.root))
    assert (cli.returncode, cli.stdout.strip()) == (0, f"ok       {name}")


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    if container == "torch-zip":
        torch.save({"model": _RunsCode(marker)}, buffer)
    else:
        pickle.dump({"model": _RunsCode(marker)}, buffer)
    with pytest.raises(
        UnsafeCheckpoint, match=r"(?i)refused by torch's weights_only loader: .*unsupported"
    ) as raised:
        read_state("evil", {"state.pt": bytearray(buffer.getvalue())})
    assert isinstance(raised.value, CorruptCheckpoint)
    assert not marker.exists()


def test_forged_hashes_still_do_not_let_a_pickle_run(tmp_path: Path, run_name: str) -> None:
    # Worst case: an attacker replaced state.pt *and* rewrote the manifest and the registry row to match.
    marker = tmp_path / "code-ran"
    with CheckpointStore(tmp_path / "s", run=run_name, format="torch") as store:
        lease = store.registry.acquire(run_name, ttl=60)
        record = store.save({"w": torch.ones(3)}, episode=1, lease=lease)
        directory = store.root / record.name
        evil = io.BytesIO()
        torch.save({"w": _RunsCode(marker)}, evil)
        (directory / "state.pt").write_bytes(evil.getvalue())
        manifest = json.loads((directory / "MANIFEST.json").read_text())
        manifest["files"][0].update(bytes=len(evil.getvalue()), hash=hash_bytes(evil.getvalue()))
        text = json.dumps(manifest).encode()
        (directory / "MANIFEST.json").write_bytes(text)
        # ...through the database file itself, as anyone with write access to the store could.
        database = sqlite3.connect(store.root / ".trainguard" / "registry.db")
        try:
            with database:  # commits
                database.execute(
                    "UPDATE tg_checkpoints SET manifest_hash = ? WHERE name = ?",
                    (hash_bytes(text), record.name),
                )
        finally:
            database.close()
        assert store.verify(record.name).ok  # the forgery is consistent...
        with pytest.raises(UnsafeCheckpoint):
            store.load(record.name)  # ...and still refused by the weights_only loader
    assert not marker.exists()
