"""The commit protocol on object storage (issue 15, in progress: save and verified load; retention, pins,
quarantine, recovery and the CLI do not use it yet).

    1. check: the lease is live, the name unused (as on disk)
    2. stage: every object under ``<prefix>/.staging/<name>.<writer>-t<token>-<random>/`` - a prefix no
       one else writes, never overwritten (``If-None-Match``), never renamed (S3 cannot)
    3. upload: tensors (safetensors) and tree (JSON), hashed in order while the parts go up in parallel
    4. manifest: staged too, before the decision - a writer that dies after step 5 leaves what recovery
       needs to index the checkpoint
    5. the registry decides on the manifest's hash, under the lease's token: the one point of commit
    6. index: the manifest written to ``<prefix>/<name>/MANIFEST.json`` with ``If-None-Match``; it names
       where its objects stay (``origin.objects``): data is never copied
    A refusal leaves the staged objects where they are, with a ``REFUSED`` note beside them (evidence;
    nothing is deleted outside retention).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from trainguard._os.hashing import hash_bytes
from trainguard.checkpoints._bucket import Bucket, Uploaded
from trainguard.checkpoints._commit import check_fresh, save_request
from trainguard.checkpoints._durable import Chunk
from trainguard.checkpoints.codecs import FileRecord, check_finite_chunk, encode_state, read_state
from trainguard.checkpoints.layout import STAGING, StagingName
from trainguard.checkpoints.manifest import MANIFEST_FILE, Manifest
from trainguard.errors import (
    CheckpointRejected,
    CheckpointWriteError,
    CommitFenced,
    CommitRefused,
    CorruptCheckpoint,
)
from trainguard.registry import CheckpointRecord, CheckpointState, Lease, Registry

REFUSED_NOTE = "REFUSED.json"


class ObjectStore:
    """A run's checkpoints in a bucket, committed by the registry (see the module's doc)."""

    def __init__(self, bucket: Bucket, registry: Registry, run: str) -> None:
        self.bucket, self.registry, self.run = bucket, registry, run
        self._last: str | None = None  # the next save's parent

    def save(
        self,
        state: object,
        *,
        lease: Lease,
        episode: int,
        name: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> CheckpointRecord:
        request = save_request(
            self.run, state, episode=episode, lease=lease, metrics=metrics, name=name, parent=self._last
        )
        check_fresh(self.registry, self.run, request)  # 1.
        # 2-3. a staging prefix of this writer's own, the objects hashed on their way up
        writer = self.registry.identity
        staging = self.bucket.address.key(STAGING, StagingName.new(request.name, writer, lease.token))
        files = self._upload_state(staging, state)
        # 4. the manifest, staged before the decision
        manifest = Manifest(
            run=self.run,
            name=request.name,
            episode=request.episode,
            token=lease.token,
            format="safetensors",
            files=tuple(files),
            parent=request.parent,
            metrics=dict(request.metrics),
            created_at=time.time(),
            writer=writer.as_dict(),
            origin={"objects": staging},
        )
        body = manifest.to_bytes()
        if not self.bucket.put_new(f"{staging}/{MANIFEST_FILE}", body).done:
            raise _occupied(staging, "manifest")
        # 5. the registry decides
        record = CheckpointRecord(
            run=self.run,
            name=request.name,
            episode=request.episode,
            token=lease.token,
            manifest_hash=hash_bytes(body),
            parent=request.parent,
            fingerprint=None,
            metrics=dict(request.metrics),
            bytes=manifest.total_bytes,
            created_at=manifest.created_at,
        )
        details = {**writer.as_dict(), "staging": staging}
        verdict = lease.while_held(
            lambda: self.registry.commit_checkpoint(record, writer=details), what="commit"
        )
        if not verdict.accepted:
            note = json.dumps({"reason": verdict.reason, "token": lease.token, "fenced": verdict.fenced})
            self.bucket.put_new(f"{staging}/{REFUSED_NOTE}", note.encode())  # evidence, beside the objects
            if verdict.fenced:
                lease.lost_reason = verdict.reason
                raise CommitFenced(self.run, request.name, lease.token, verdict.reason)
            raise CommitRefused(self.run, request.name, lease.token, verdict.reason)
        # 6. from here the checkpoint exists; the index makes it readable (recovery redoes this step)
        index = self.bucket.address.key(request.name, MANIFEST_FILE)
        indexed = self.bucket.put_new(index, body)
        if not indexed.done and self._read(index) != body:
            raise CheckpointWriteError(
                "index", index, FileExistsError(f"{index} holds another manifest"), committed=True
            )
        self._last = request.name
        return self.registry.checkpoint(self.run, request.name)

    def _upload_state(self, staging: str, state: object) -> list[FileRecord]:
        files = []
        for encoded in encode_state(state):  # the same files a save on disk writes
            sent = self.bucket.upload(f"{staging}/{encoded.path}", _finite(encoded.chunks))
            if not isinstance(sent, Uploaded):
                raise _occupied(staging, "upload")
            files.append(FileRecord(encoded.path, sent.size, sent.digest, encoded.codec))
        return files

    def _read(self, key: str) -> bytes:
        return bytes(self.bucket.client.get_object(Bucket=self.bucket.address.bucket, Key=key)["Body"].read())

    # -- reading --------------------------------------------------------------------------------------

    def manifest(self, name: str) -> tuple[CheckpointRecord, Manifest]:
        """The committed checkpoint's record and manifest (its hash checked against the registry's)."""
        record = self.registry.checkpoint(self.run, name)
        if record.state is not CheckpointState.COMMITTED:
            raise CheckpointRejected(name, f"is {record.state.value}: only committed checkpoints load")
        index = self.bucket.address.key(name, MANIFEST_FILE)
        body = self._read(index)
        if hash_bytes(body) != record.manifest_hash:
            raise CorruptCheckpoint(name, index, "the manifest's hash differs from the registry's record")
        return record, Manifest.from_bytes(body)

    def load(self, name: str) -> Any:
        """The checkpoint's state: every object fetched, size and hash verified, then decoded."""
        _, manifest = self.manifest(name)
        objects = str((manifest.origin or {}).get("objects", ""))
        staging_root = self.bucket.address.key(STAGING)
        if not objects.startswith(staging_root + "/") or ".." in objects:
            raise CorruptCheckpoint(
                name, MANIFEST_FILE, f"its objects are not in this store's staging: {objects!r}"
            )
        files = {
            f.path: self.bucket.read_verified(name, f"{objects}/{f.path}", f.bytes, f.hash)
            for f in manifest.files
        }
        return read_state(name, files)


def _occupied(key: str, step: str) -> CheckpointWriteError:
    # A fresh staging prefix holds nothing: an object already there means someone else writes in it.
    return CheckpointWriteError(step, key, FileExistsError(f"{key}: an object was already there"))


def _finite(chunks: list[Chunk]) -> Iterator[memoryview]:
    """The file's chunks, each tensor checked for NaN/inf before it is sent (as on disk)."""
    for piece, tag in chunks:
        check_finite_chunk(piece, tag)
        yield piece


__all__ = ["REFUSED_NOTE", "ObjectStore"]
