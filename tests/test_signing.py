"""Signed manifests (issue 10, defect 3): with write access to the store *and* the registry, an attacker
can rewrite a checkpoint's tensors and every hash that pins them - but not sign the new manifest. A store
that checks signatures refuses the forgery on load, verify (exit 1), promote and the live load."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from support import run_cli
from trainguard import CheckpointStore, ConfigError, InvalidArgument, SignatureRejected, live
from trainguard._os.hashing import hash_file
from trainguard.checkpoints import Signing
from trainguard.checkpoints.manifest import MANIFEST_FILE
from trainguard.checkpoints.signing import PUBLIC_KEY_ENV, SIGNATURE_FILE, generate_key

GOOD = {"policy": {"w": np.full(8, 0.5, dtype=np.float32)}}
POISON = np.full(8, 666.0, dtype=np.float32)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """A key pair made by the command line, outside the store."""
    private = tmp_path / "keys" / "sign.key"
    made = run_cli("key", "init", str(private), "--json")
    assert made.returncode == 0, made.stderr
    body = json.loads(made.stdout)
    assert stat.S_IMODE(os.stat(body["key"]).st_mode) == 0o600
    return Path(body["key"]), Path(body["public_key"])


def _signed_store(root: Path, key: Path, public: Path) -> str:
    signing = Signing.from_paths(key, public)
    with CheckpointStore(root, run="r", signing=signing) as store:
        lease = store.registry.acquire("r", ttl=60)
        record = store.save(GOOD, episode=1, lease=lease)
        store.registry.set_live_pointer("r", record.name, reason="good")
        lease.release()
    assert (root / record.name / SIGNATURE_FILE).is_file()
    return record.name


def _forge(root: Path, name: str, *, drop_signature: bool = False) -> None:
    """What an attacker with write access to the store and the registry (and no private key) can do:
    poison the tensors, recompute their hash and size in the manifest, recompute the manifest's hash in the
    registry's row."""
    directory = root / name
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    entry = next(f for f in manifest["files"] if f["path"].endswith(".safetensors"))
    tensors = directory / entry["path"]
    tensors.unlink()
    save_file({"policy/w": POISON}, str(tensors))
    entry["bytes"], entry["hash"] = hash_file(tensors)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if drop_signature:
        (directory / SIGNATURE_FILE).unlink()
    _, manifest_hash = hash_file(directory / MANIFEST_FILE)
    with sqlite3.connect(root / ".trainguard" / "registry.db") as db:
        db.execute("UPDATE tg_checkpoints SET manifest_hash = ? WHERE name = ?", (manifest_hash, name))


def test_a_forgery_is_real_without_a_public_key(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """The threat, shown: nothing checks signatures, the forgery verifies and loads the attacker's weights."""
    root = tmp_path / "store"
    name = _signed_store(root, *keys)
    _forge(root, name)
    with CheckpointStore.open_existing(root, run="r", signing=Signing()) as reader:
        assert reader.verify(name).ok
        np.testing.assert_array_equal(reader.load(name).state["policy"]["w"], POISON)


def test_a_forged_checkpoint_is_refused_by_load_verify_promote_and_live(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    root = tmp_path / "store"
    name = _signed_store(root, *keys)
    _forge(root, name)
    _, public = keys
    checking = Signing.from_paths(public_key=public)

    with CheckpointStore.open_existing(root, run="r", signing=checking) as reader:
        with pytest.raises(SignatureRejected, match="does not match the manifest"):
            reader.load(name)
        report = reader.verify(name)
        assert not report.ok and report.problems[0].file.endswith(SIGNATURE_FILE)
    env = {PUBLIC_KEY_ENV: str(public)}
    verified = run_cli("ckpt", "verify", "r", name, "--store", str(root), env=env)
    assert verified.returncode == 1 and "does not match the manifest" in verified.stdout + verified.stderr
    promoted = run_cli("promote", "r", name, "--store", str(root), "--reason", "try it", env=env)
    assert promoted.returncode == 1, promoted.stdout + promoted.stderr
    assert "integrity" in promoted.stdout and "unchanged" in promoted.stdout
    url = f"sqlite:///{root / '.trainguard' / 'registry.db'}"
    with pytest.raises(SignatureRejected):
        live.load("r", registry=url, signing=checking)
    os.environ[PUBLIC_KEY_ENV] = str(public)
    try:
        with pytest.raises(SignatureRejected):  # the live loader's default: the environment's key
            live.load("r", registry=url)
    finally:
        del os.environ[PUBLIC_KEY_ENV]


def test_a_forgery_without_its_signature_is_refused_where_signatures_are_required(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    root = tmp_path / "store"
    name = _signed_store(root, *keys)
    _forge(root, name, drop_signature=True)
    _, public = keys
    with CheckpointStore.open_existing(root, run="r", signing=Signing.from_paths(public_key=public)) as lax:
        assert lax.verify(name).ok  # an unsigned checkpoint passes where signatures are optional...
    required = Signing.from_paths(public_key=public, required=True)
    strict = CheckpointStore.open_existing(root, run="r", signing=required)
    with strict, pytest.raises(SignatureRejected, match="signed checkpoints are required"):
        strict.load(name)  # ...and is refused where they are required
    config = tmp_path / "serve.yaml"
    config.write_text(f"run: r\nstore: {root}\nsigning: {{public_key: {public}, required: true}}\n")
    verified = run_cli("ckpt", "verify", "r", name, "-c", str(config))
    assert verified.returncode == 1 and "required" in verified.stdout + verified.stderr


def test_another_keys_signature_is_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    root = tmp_path / "store"
    name = _signed_store(root, *keys)
    _, other_public = generate_key(tmp_path / "other" / "sign.key")
    other = CheckpointStore.open_existing(root, run="r", signing=Signing.from_paths(public_key=other_public))
    with other, pytest.raises(SignatureRejected, match="signed by key"):
        other.load(name)
    with CheckpointStore.open_existing(root, run="r", signing=Signing.from_paths(public_key=keys[1])) as s:
        assert s.load(name).state["policy"]["w"][0] == 0.5  # the genuine one loads


def test_key_handling_is_refused_clearly(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    os.chmod(private, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        Signing.from_paths(private)
    os.chmod(private, 0o600)
    with pytest.raises(ConfigError, match="not a PEM public key"):
        Signing.from_paths(public_key=private)
    with pytest.raises(ConfigError, match=r"needs signing\.public_key"):
        Signing.from_paths(required=True)
    # A writer where signatures are required needs the private key; the save is refused, nothing written.
    root = tmp_path / "store"
    with CheckpointStore(
        root, run="r", signing=Signing.from_paths(public_key=public, required=True)
    ) as store:
        lease = store.registry.acquire("r", ttl=60)
        with pytest.raises(InvalidArgument, match="needs the private key"):
            store.save(GOOD, episode=1, lease=lease)
        assert store.checkpoints() == [] and os.listdir(root / ".staging") == []
    again = run_cli("key", "init", str(private))
    assert again.returncode == 2 and "never overwritten" in again.stderr
