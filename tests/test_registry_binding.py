"""A store and its registry belong to each other (issue 10, defect 6): a registry deleted or replaced under a
running Guard stops it with a clear reason; a store with committed checkpoints is never handed to an empty
registry (that would start a new lineage: token 1, budgets from 0); `trainguard registry rebuild` restores
the registry from the store's signed manifests."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from support import run_cli
from trainguard import CheckpointStore, Guard, LeaseLost, Registry, RegistryMismatch, StopReason
from trainguard.checkpoints import Signing, generate_key
from trainguard.checkpoints.layout import QUARANTINE

REGISTRY = Path(".trainguard") / "registry.db"


def _train(store: Path, key: Path, episodes: int) -> list[str]:
    guard = Guard(
        run="r",
        store=str(store),
        max_episodes=episodes,
        signing__key=str(key),
        install_signal_handlers=False,
    )
    with guard:
        for episode in guard.episodes():
            guard.save({"w": np.full(4, episode, dtype=np.float32)}, metrics={"reward": float(episode)})
    with CheckpointStore.open_existing(store, run="r", read_only=True) as reader:
        return [r.name for r in reader.checkpoints()]


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_registry_deleted_or_replaced_under_a_running_guard_stops_it(tmp_path: Path, how: str) -> None:
    store = tmp_path / "store"
    guard = Guard(
        run="r", store=str(store), max_episodes=10_000, heartbeat_interval=0.1, install_signal_handlers=False
    )
    saved_after: list[int] = []
    with guard:
        for episode in guard.episodes():
            if episode == 3:
                database = store / REGISTRY
                if how == "deleted":
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{database}{suffix}").unlink(missing_ok=True)
                else:
                    shutil.copy(database, tmp_path / "copy.db")
                    os.replace(tmp_path / "copy.db", database)
                deadline = time.monotonic() + 10
            if episode > 3:
                try:
                    guard.save({"w": np.zeros(2, dtype=np.float32)})
                    saved_after.append(episode)
                except LeaseLost:
                    pass  # what a save must say once the registry is gone
                assert time.monotonic() < deadline, "the Guard kept running on a registry that is gone"
            time.sleep(0.02)
    assert guard.stop_reason is StopReason.LEASE_LOST and guard.fenced
    assert guard.stop is not None and f"registry file {store / REGISTRY} was {how}" in guard.stop.detail
    assert saved_after == [], "a checkpoint was committed into a registry that is gone"


def test_an_empty_registry_is_refused_and_rebuilt_from_signed_manifests(tmp_path: Path) -> None:
    key, public = generate_key(tmp_path / "keys" / "sign.key")
    store = tmp_path / "store"
    names = _train(store, key, episodes=4)
    with CheckpointStore(store, run="r", signing=Signing.from_paths(key)) as writer:
        writer.quarantine(names[1], reason="looked odd")
        old_token = writer.registry.run("r").last_token
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store / REGISTRY}{suffix}").unlink(missing_ok=True)

    with pytest.raises(RegistryMismatch, match="not the registry it was written with"):
        CheckpointStore(store, run="r")
    (store / ".trainguard" / "store.json").unlink()  # no binding left either: the checkpoints still tell
    with pytest.raises(RegistryMismatch, match="holding committed checkpoints of run 'r'"):
        CheckpointStore(store, run="r")
    config = tmp_path / "guard.yaml"
    config.write_text(f"run: r\nstore: {store}\n")
    launched = run_cli("run", "-c", str(config), "--", "true")
    assert launched.returncode == 2 and "trainguard registry rebuild --store" in launched.stderr

    forged = store / names[0] / "tensors.safetensors"  # one checkpoint's bytes were tampered with meanwhile
    forged.write_bytes(forged.read_bytes()[:-4] + b"\x00\x00\x80\x7f")
    rebuilt = run_cli(
        "registry",
        "rebuild",
        "--store",
        str(store),
        "--public-key",
        str(public),
        "--reason",
        "db lost",
        "--json",
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    report = json.loads(rebuilt.stdout)
    assert sorted(report["restored"]["r"]) == sorted(set(names) - {names[0]})
    assert [s["directory"] for s in report["skipped"]] == [str(store / names[0])]

    with CheckpointStore(store, run="r", signing=Signing.from_paths(key)) as writer:
        restored = {r.name: r.state.value for r in writer.checkpoints(states=None)}
        assert restored == {names[1]: "quarantined", names[2]: "committed", names[3]: "committed"}
        assert writer.load("latest").name == names[3]
        assert writer.registry.run("r").episodes_spent >= 4
        lease = writer.registry.acquire("r", ttl=30)
        assert lease.token > old_token  # no token is ever handed out twice
        lease.release()
        assert writer.recovery.quarantined_unregistered == [names[0]]  # the forged one is set aside
    assert (store / QUARANTINE / f"{names[0]}.unregistered").is_dir()


def test_a_rebuild_never_overwrites_a_registry_that_knows_the_run(tmp_path: Path) -> None:
    key, public = generate_key(tmp_path / "keys" / "sign.key")
    store = tmp_path / "store"
    _train(store, key, episodes=2)
    again = run_cli(
        "registry", "rebuild", "--store", str(store), "--public-key", str(public), "--reason", "x"
    )
    assert again.returncode == 2 and "a rebuild only fills an empty registry" in again.stderr
    unsigned = run_cli("registry", "rebuild", "--store", str(store), "--reason", "x")
    assert unsigned.returncode == 2 and "signed manifests" in unsigned.stderr
    with Registry.open(str(store / REGISTRY), mode="read") as registry:
        assert registry.run("r").episodes_spent == 2
