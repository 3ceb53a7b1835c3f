"""Crash consistency on an s3:// store (issue 15), on a SeaweedFS server the test starts: the saver
SIGKILLed at random moments 110 times (``stress/crash_consistency.py``, ``stress/crash_bucket.py``); and the
server itself killed (``kill -9`` of ``weed``) in the middle of a save and again after the registry decided.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from s3_server import SeaweedS3, seaweed_s3

from crash_consistency import run_campaign
from trainguard import CheckpointStore
from trainguard.registry import CheckpointState

KILLS = 110


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedS3]:
    with seaweed_s3(tmp_path / "seaweed") as running:
        running.client().create_bucket(Bucket="crash")
        for variable, value in {**running.env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}.items():
            monkeypatch.setenv(variable, value)
        yield running


@pytest.mark.timeout(600)
def test_every_kill_of_the_saver_leaves_a_consistent_bucket(
    seaweed_server: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with contextlib.suppress(Exception):  # another test of the session may have made it
        seaweed_server.client().create_bucket(Bucket="crash")
    for variable, value in {**seaweed_server.env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(variable, value)
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    result = run_campaign(
        tmp_path, KILLS, seed=20261129, max_delay=0.4, store=f"s3://crash/{tmp_path.name}", registry=registry
    )
    assert result.failures == []
    assert result.kills == KILLS
    # The campaign must have exercised the interesting paths, or it proved nothing.
    assert result.newest_episode > KILLS // 4, "savers rarely got a checkpoint committed"
    assert result.recovered_staging > 0, "no kill landed while a checkpoint was being staged"
    assert result.checkpoints_verified > KILLS


# A saver that stops at a chosen step ("part": its third multipart part of the tensors; "index": after the
# registry decided, before the index is written), says so, and goes on when the test has killed the server.
_SAVER = """
import sys
import numpy as np
from trainguard import CheckpointStore
from trainguard.checkpoints import _bucket, _bucket_recovery

def pause(what):
    print(what, flush=True)
    sys.stdin.readline()

if sys.argv[3] == "index":
    real_index = _bucket_recovery.index
    def index(*args, **kwargs):
        pause("decided")
        return real_index(*args, **kwargs)
    _bucket_recovery.index = index
else:
    real_part = _bucket.Bucket._part
    def part(self, key, upload, number, data):
        if number == 3 and key.endswith("tensors.safetensors"):
            pause("uploading")
        return real_part(self, key, upload, number, data)
    _bucket.Bucket._part = part
with CheckpointStore(sys.argv[1], run="crash", registry=sys.argv[2]) as store:
    lease = store.registry.acquire("crash", reason="saver")
    try:
        store.save({"w": np.full(6_000_000, 7, dtype=np.float32)}, episode=7, lease=lease, name="victim")
    except Exception as error:
        print("failed", type(error).__name__, getattr(error, "committed", None), flush=True)
        sys.exit(3)
print("saved", flush=True)
"""


def _before(url: str, registry: str) -> None:
    with CheckpointStore(url, run="crash", registry=registry) as store:
        lease = store.registry.acquire("crash")
        store.save({"w": np.full(3_000_000, 1, dtype=np.float32)}, episode=1, lease=lease, name="before")
        lease.release()


def _kill_server_at(server: SeaweedS3, url: str, registry: str, step: str) -> str:
    """Run the saver to ``step``, SIGKILL the server there, let the saver go on (and fail), start the
    server again on the same data; the saver's last line."""
    saver = subprocess.Popen(
        [sys.executable, "-c", _SAVER, url, registry, step],
        env={**os.environ, "AWS_MAX_ATTEMPTS": "2"},  # fail soon against the killed server
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert saver.stdout is not None and saver.stdin is not None
        said = saver.stdout.readline().strip()  # blocks until the saver pauses (or dies: then "")
        assert said == ("decided" if step == "index" else "uploading"), (
            said,
            saver.stderr and saver.stderr.read(),
        )
        server.kill()  # kill -9 of weed, mid-save
        saver.stdin.write("go\n")
        saver.stdin.flush()
        out, err = saver.communicate(timeout=300)
        assert saver.returncode == 3, (out, err[-3000:])
    finally:
        if saver.poll() is None:
            saver.kill()
            saver.wait()
    server.start()
    return out.strip().splitlines()[-1]


@pytest.mark.timeout(600)
def test_the_server_killed_in_the_middle_of_a_save_loses_nothing_committed(
    server: SeaweedS3, tmp_path: Path
) -> None:
    url, registry = "s3://crash/mid-save", f"sqlite:///{tmp_path / 'registry.db'}"
    _before(url, registry)
    assert _kill_server_at(server, url, registry, "part") == "failed CheckpointWriteError False"
    with CheckpointStore.open_existing(url, run="crash", registry=registry, read_only=True) as reader:
        assert [r.name for r in reader.checkpoints(states=None)] == ["before"]  # nothing torn is visible
        assert reader.verify("before").ok and float(reader.load("before").state["w"][-1]) == 1.0
    with CheckpointStore(url, run="crash", registry=registry) as store:  # recovery
        assert store.recovery.failed == [] and store.recovery.rolled_forward == []
        assert store.verify("before").ok and [r.name for r in store.checkpoints()] == ["before"]
    client = server.client()
    listed = client.list_objects_v2(Bucket="crash", Prefix="mid-save/").get("Contents", [])
    # The tensors' upload never completed: no object of the victim exists, only its parts, which an
    # AbortIncompleteMultipartUpload lifecycle rule expires (trainguard deletes nothing it did not commit).
    assert [o["Key"] for o in listed if "victim" in o["Key"] and "tensors" in o["Key"]] == []
    uploads = client.list_multipart_uploads(Bucket="crash", Prefix="mid-save/.staging/victim.")
    assert [u["Key"].rsplit("/", 1)[1] for u in uploads.get("Uploads", [])] == ["tensors.safetensors"]


@pytest.mark.timeout(600)
def test_the_server_killed_after_the_registry_decided_loses_nothing_committed(
    server: SeaweedS3, tmp_path: Path
) -> None:
    url, registry = "s3://crash/decided", f"sqlite:///{tmp_path / 'registry.db'}"
    _before(url, registry)
    assert _kill_server_at(server, url, registry, "index") == "failed CheckpointWriteError True"
    with CheckpointStore.open_existing(url, run="crash", registry=registry, read_only=True) as reader:
        assert reader.record("victim").state is CheckpointState.COMMITTED
        assert float(reader.load("victim").state["w"][-1]) == 7.0  # found where it was staged
    with CheckpointStore(url, run="crash", registry=registry) as store:  # recovery writes the index
        assert store.recovery.rolled_forward == ["victim"]
        assert [r.name for r in store.checkpoints()] == ["before", "victim"]
        assert store.verify("victim").ok and store.verify("before").ok
