"""Readers never write (issue 10, defects 10 and 15): serving from another mount does not rewrite the run's
recorded store, a read-only store can be listed, verified and served, and a command that only looks never
creates a registry - a missing one is exit 2 naming it, not an empty registry that reports "nothing found"."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from support import run_cli
from trainguard import CheckpointStore, Registry, RegistryError, RegistryNotFound, live
from trainguard.registry import EventKind

STATE = {"w": np.arange(8, dtype=np.float32)}


def _train(store: Path, registry: str | None = None) -> str:
    with CheckpointStore(store, run="r", registry=registry) as checkpoints:
        lease = checkpoints.registry.acquire("r", ttl=60)
        name = checkpoints.save(STATE, episode=1, lease=lease).name
        checkpoints.registry.set_live_pointer("r", name, reason="test")
        lease.release()
    return name


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs the test fills and then remounts read-only (root only: CI runs as root)."""
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
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


def test_serving_from_another_mount_does_not_rewrite_the_recorded_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    train_store, serving_mount = tmp_path / "train", tmp_path / "serving"
    name = _train(train_store, url)
    shutil.copytree(train_store, serving_mount)

    loaded = live.load("r", registry=url, store=serving_mount)

    assert loaded.name == name
    with Registry.open(url) as registry:
        assert registry.run("r").store == str(train_store.resolve())
        assert registry.events("r", kinds=[EventKind.STORE_MOVED]) == []


def test_a_read_only_store_can_be_listed_verified_and_served(tmp_path: Path, read_only_mount: Path) -> None:
    store = read_only_mount / "store"
    name = _train(store)
    remount = ["mount", "-o", "remount,ro", str(read_only_mount)]
    subprocess.run(remount, check=True, capture_output=True, timeout=30)
    with pytest.raises(OSError):
        (store / "probe").write_text("x")  # really read-only

    listed = run_cli("ckpt", "ls", "r", "--store", str(store))
    assert listed.returncode == 0 and name in listed.stdout, listed.stderr
    verified = run_cli("ckpt", "verify", "r", "--store", str(store))
    assert verified.returncode == 0, verified.stderr
    url = f"sqlite:///{store / '.trainguard' / 'registry.db'}"
    assert live.load("r", registry=url).name == name
    status = run_cli("status", "--registry", url)
    assert status.returncode == 0, status.stderr


def test_incident_scan_of_a_store_without_a_registry_creates_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "ep1.pth").write_bytes(b"legacy")

    result = run_cli("incident", "scan", str(store))

    assert result.returncode == 2, result.stdout
    assert "no such registry file" in result.stderr and "Traceback" not in result.stderr
    assert sorted(os.listdir(store)) == ["ep1.pth"]
    missing = run_cli("incident", "scan", str(tmp_path / "nonexistent"))
    assert missing.returncode == 2 and not (tmp_path / "nonexistent").exists()


def test_status_of_a_typo_registry_is_exit_2_and_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "typo" / "x.db"

    result = run_cli("status", "--registry", str(typo))

    assert result.returncode == 2
    assert str(typo) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "typo").exists()
    for command in (["ps"], ["report", "r", "-o", str(tmp_path / "r.html")], ["ckpt", "ls", "r"]):
        assert run_cli(*command, "--registry", str(typo)).returncode == 2, command
    assert not (tmp_path / "typo").exists()
    with pytest.raises(RegistryNotFound):
        Registry.open(str(typo), mode="read")


def test_a_postgres_database_without_a_registry_is_not_created_by_a_reader(pg_session_url: str) -> None:
    """A reader never installs the schema: a fresh database stays empty; one with a registry is readable and
    refuses writes."""
    import psycopg

    prefix, name = pg_session_url.rsplit("/", 1)[0], f"trainguard_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_session_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with pytest.raises(RegistryNotFound, match="no schema"):
            Registry.open(f"{prefix}/{name}", mode="read")
        with psycopg.connect(f"{prefix}/{name}") as conn:
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)
    finally:
        with psycopg.connect(pg_session_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    Registry.open(pg_session_url).close()  # a writer's open installs the schema
    with Registry.open(pg_session_url, mode="read") as reader:
        reader.runs()
        with pytest.raises(RegistryError, match="read-only transaction"):
            reader.ensure_run(f"ro-{uuid.uuid4().hex[:6]}")
