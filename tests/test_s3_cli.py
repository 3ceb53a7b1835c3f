"""The operator's commands on an s3:// store (issue 15), as a user runs them: `ckpt ls/verify/pin/quarantine/
release/prune`, `promote`, `recover` and `incident scan`, against a SeaweedFS server the test starts, with the
endpoint and keys in the usual AWS variables and a SQLite registry on local disk. Every command that touched
the bucket says what it cost (requests, bytes) on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from s3_server import SeaweedS3, moto_s3

from guard_support import run_worker, worker, write_config
from support import spawned
from trainguard import CheckpointStore
from trainguard.checkpoints.layout import StagingName
from trainguard.registry import CheckpointState, ProcessIdentity

RUN = "ops"


@pytest.fixture
def s3(
    seaweed_server: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SeaweedS3, str, str]]:
    """The session's SeaweedFS server, bucket "ops", a prefix of this test's own."""
    with contextlib.suppress(Exception):  # the first test of the session creates it
        seaweed_server.client().create_bucket(Bucket="ops")
    for variable, value in {**seaweed_server.env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(variable, value)
    yield seaweed_server, f"s3://ops/{uuid.uuid4().hex[:10]}/run", f"sqlite:///{tmp_path / 'registry.db'}"


def _prefix(url: str) -> str:
    return url.removeprefix("s3://ops/")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainguard", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ,
        check=False,
    )


def _saved(url: str, registry: str) -> list[str]:
    with CheckpointStore(url, run=RUN, registry=registry) as store:
        lease = store.registry.acquire(RUN)
        names = [
            store.save(
                {"w": np.full(1000, i, dtype=np.float32)},
                episode=i,
                lease=lease,
                metrics={"reward": float(i), "actions": {"buy": 40, "sell": 40, "hold": 40}},
            ).name
            for i in range(1, 5)
        ]
        lease.release()
    return names


def test_the_operators_commands_work_on_an_s3_store(s3: tuple[SeaweedS3, str, str]) -> None:
    server, url, registry = s3
    one, two, three, four = _saved(url, registry)
    where = ["--store", url, "--registry", registry]
    listed = _cli("ckpt", "ls", RUN, *where, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [c["name"] for c in json.loads(listed.stdout)["checkpoints"]] == [one, two, three, four]
    assert "object storage:" in listed.stderr and "ListObjectsV2" not in listed.stderr  # costs, by operation
    assert _cli("ckpt", "verify", RUN, *where).returncode == 0
    # An object changed behind the store's back: verify names it, exit 1.
    client = server.client()
    with CheckpointStore.open_existing(url, run=RUN, registry=registry, read_only=True) as store:
        tensors = f"{store.manifest(two).origin['objects']}/tensors.safetensors"  # type: ignore[index]
    body = bytearray(client.get_object(Bucket="ops", Key=tensors)["Body"].read())
    body[-1] ^= 1
    client.put_object(Bucket="ops", Key=tensors, Body=bytes(body))
    verified = _cli("ckpt", "verify", RUN, two, *where)
    assert verified.returncode == 1 and tensors in verified.stdout + verified.stderr, verified
    assert "GetObject" in verified.stderr and "bytes received" in verified.stderr
    # Pin, quarantine, release.
    assert _cli("ckpt", "pin", RUN, one, *where, "--reason", "the baseline").returncode == 0
    assert _cli("ckpt", "quarantine", RUN, two, *where, "--reason", "corrupt").returncode == 0
    assert _cli("ckpt", "quarantine", RUN, three, *where, "--reason", "looks odd").returncode == 0
    refused = _cli("ckpt", "release", RUN, two, *where)
    assert refused.returncode != 0 and "cannot be released" in refused.stderr, refused
    assert _cli("ckpt", "release", RUN, three, *where, "--reason", "checked").returncode == 0
    # Promote through the gates: the live pointer object moves with it.
    promoted = _cli("promote", RUN, four, *where, "--json")
    assert promoted.returncode == 0 and json.loads(promoted.stdout)["promoted"], promoted.stdout
    live = json.loads(client.get_object(Bucket="ops", Key=f"{_prefix(url)}/LIVE.json")["Body"].read())
    assert live["checkpoint"] == four
    # Retention: keep the newest; the pinned, the live one and the quarantined stay.
    pruned = _cli("ckpt", "prune", RUN, *where, "--keep-last", "1", "--json")
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["evicted"] == [three]
    listed = client.list_objects_v2(Bucket="ops", Prefix=f"{_prefix(url)}/").get("Contents", [])
    keys = [o["Key"] for o in listed]
    assert not any(f"/{three}/" in k or f"/{three}." in k for k in keys if "/.quarantine/" not in k)
    # The incident drill: back to the last good, everything after it quarantined, nothing deleted.
    recovered = _cli("recover", RUN, *where, "--last-good", one, "--reason", "drill", "--json")
    assert recovered.returncode == 0, recovered.stderr
    outcome = json.loads(recovered.stdout)
    assert outcome["files_before"] == outcome["files_after"] > 0  # nothing deleted
    live = json.loads(client.get_object(Bucket="ops", Key=f"{_prefix(url)}/LIVE.json")["Body"].read())
    assert live["checkpoint"] == one
    with CheckpointStore.open_existing(url, run=RUN, registry=registry, read_only=True) as store:
        assert store.record(four).state is CheckpointState.QUARANTINED
        assert float(store.load(one).state["w"][0]) == 1.0


def test_incident_scan_names_what_the_registry_never_committed(s3: tuple[SeaweedS3, str, str]) -> None:
    server, url, registry = s3
    _saved(url, registry)
    client = server.client()
    rogue = f"{_prefix(url)}/rogue/MANIFEST.json"
    client.put_object(Bucket="ops", Key=rogue, Body=b"{}")  # a writer that is not trainguard
    dead = ProcessIdentity.current()
    dead_name = StagingName.new("ep00000009-t1", _with_pid(dead, 1), 1)
    client.put_object(Bucket="ops", Key=f"{_prefix(url)}/.staging/{dead_name}/tensors.safetensors", Body=b"x")
    refused_name = StagingName.new("ep00000010-t1", dead, 1)
    client.put_object(Bucket="ops", Key=f"{_prefix(url)}/.staging/{refused_name}/REFUSED.json", Body=b"{}")
    scanned = _cli("incident", "scan", url, "--registry", registry, "--json")
    assert scanned.returncode == 1, scanned.stderr
    found = json.loads(scanned.stdout)["stores"][0]
    assert found["unregistered"] == ["rogue"]
    assert found["dead_staging"] == [dead_name] and found["refused_staging"] == [refused_name]
    clean = _cli("incident", "scan", "s3://ops/elsewhere", "--registry", registry, "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout)["stores"] == []


def _with_pid(identity: ProcessIdentity, start_ticks: int) -> ProcessIdentity:
    """This host, but a process that is not alive (pid 1 never started at tick 1 after boot)."""
    from dataclasses import replace

    return replace(identity, pid=1, start_ticks=start_ticks)


def test_a_guarded_run_on_an_s3_store_keeps_its_budget_across_restarts(
    s3: tuple[SeaweedS3, str, str], tmp_path: Path
) -> None:
    """The Guard (in the trainer's process) and `trainguard run` with `store: s3://...` in the config:
    the episode budget holds over three starts, checkpoints land in the bucket and load verified."""
    _, url, registry = s3
    config = write_config(
        tmp_path,
        "guarded",
        store=url,
        registry=registry,
        limits={"max_episodes": 25},
        checkpoints={"every_episodes": 5, "keep_last": 2},
    )
    starts = [run_worker(config, "--resume", "--episodes-per-run", "10") for _ in range(2)]
    launched = _cli("run", "-c", str(config), "--", *worker(config, "--resume", "--episodes-per-run", "10"))
    assert launched.returncode == 3, launched.stderr  # a guard rule (the budget) ended the run
    assert [len(s["episodes"]) for s in starts] == [10, 10]
    assert starts[1]["resumed"] == 10
    with CheckpointStore.open_existing(url, run="guarded", registry=registry, read_only=True) as store:
        info = store.registry.run_info("guarded")
        assert info is not None and info.episodes_spent == 25
        kept = store.checkpoints()
        assert kept[-1].episode == 25 and len(kept) <= 3  # keep_last 2 (+ the resume source)
        assert all(store.verify(r.name).ok for r in kept)
        assert float(store.load(kept[-1].name).state["w"][0]) == 25.0


def test_a_bucket_that_cannot_be_used_is_one_line_and_exit_2(
    s3: tuple[SeaweedS3, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = f"sqlite:///{tmp_path / 'other.db'}"

    def refused(store: str, said: str) -> None:
        done = _cli("run", "--run", "r", "--store", store, "--registry", registry, "--", "true")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and said in lines[0], done.stderr

    with monkeypatch.context() as patched:
        patched.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")  # SeaweedFS checks every signature
        refused("s3://ops/p", "access denied with these credentials")
    with moto_s3() as moto:  # SeaweedFS creates a bucket on first write; S3 and moto answer NoSuchBucket
        patched_env = moto.env()
        with monkeypatch.context() as patched:
            for variable, value in patched_env.items():
                patched.setenv(variable, value)
            refused("s3://no-such-bucket/p", "the bucket does not exist (NoSuchBucket)")


def test_stop_signals_the_guarded_trainer_of_an_s3_run(
    s3: tuple[SeaweedS3, str, str], tmp_path: Path
) -> None:
    """`trainguard stop` finds an s3:// run's trainer through the local workdir its Guard keeps (pid file,
    binding): revokes the lease and SIGTERMs it; the trainer stops gracefully."""
    _, url, registry = s3
    config = write_config(tmp_path, "stoppable", store=url, registry=registry)
    with spawned(worker(config, "--episode-seconds", "0.05"), stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("episode "), "the trainer did not start"
        where = ["--store", url, "--registry", registry]
        stop = _cli("stop", "stoppable", *where, "--reason", "drill", "--grace", "5s")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert "lease revoked" in stop.stdout and f"{proc.pid} SIGTERM" in stop.stdout, stop.stdout
        proc.wait(timeout=60)
        assert proc.returncode == 0
