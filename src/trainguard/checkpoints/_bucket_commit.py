"""The commit protocol on object storage (docs/design.md, "Object storage"):
    1. check: the lease is live, the name unused, the budget (as on disk)
    2. stage: every object under a staging prefix that names the writer and token - no one else writes
       there, nothing is overwritten (``If-None-Match``)
    3. upload: tensors (safetensors) and tree (JSON), hashed in order while the parts go up in parallel
    4. manifest (and signature) staged before the decision: a writer that dies after step 5 leaves what
       recovery needs to index the checkpoint
    5. the registry decides on the manifest's hash, under the lease's token: the one point of commit
    6. index: the manifest written to ``<name>/MANIFEST.json`` with ``If-None-Match``; it names where its
       objects stay (``origin.objects``)
A refusal leaves the staged objects with a ``REFUSED.json`` note beside them; recovery moves them to
quarantine once their writer is gone. Nothing is deleted but by retention.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from trainguard._os.hashing import hash_bytes
from trainguard.checkpoints import _bucket_recovery as recovery
from trainguard.checkpoints._bucket import Uploaded
from trainguard.checkpoints._commit import SaveRequest, check_commit, check_fresh
from trainguard.checkpoints._durable import Chunk
from trainguard.checkpoints.codecs import FileRecord, check_finite_chunk, encode_state
from trainguard.checkpoints.layout import StagingName
from trainguard.checkpoints.manifest import MANIFEST_FILE, Manifest
from trainguard.checkpoints.signing import SIGNATURE_FILE, signature_bytes
from trainguard.errors import (
    CheckpointRejected,
    CheckpointWriteError,
    CommitFenced,
    CommitRefused,
    TrainguardError,
)
from trainguard.registry import CheckpointRecord

if TYPE_CHECKING:
    from trainguard.checkpoints._bucket_store import BucketStore


def commit(store: BucketStore, request: SaveRequest) -> CheckpointRecord:
    """Commit ``request.state`` into the bucket store under ``request.lease``; raises as
    ``CheckpointStore.save``."""
    lease, state = request.lease, request.state
    check_commit(store._context, request)  # 1.
    try:  # before a byte is uploaded, as the registry itself would answer at step 5
        check_fresh(store.registry, store.run, request)
    except CheckpointRejected:
        exists = f"a checkpoint named {request.name!r} already exists"
        raise CommitRefused(store.run, request.name, lease.token, exists) from None
    # 2-3. a staging prefix of this writer's own, the objects hashed on their way up
    writer = store.registry.identity
    staging = store.key(".staging", StagingName.new(request.name, writer, lease.token))
    try:
        files = _upload_state(store, staging, state)
    except (ValueError, TypeError) as error:  # NaN/inf, an unsupported value: nothing was decided
        raise CheckpointRejected(request.name, str(error)) from error
    except TrainguardError:
        raise
    except Exception as error:  # the server or the network: nothing was decided
        raise CheckpointWriteError("upload", staging, error) from error
    # 4. the manifest (and signature), staged before the decision
    manifest = Manifest(
        run=store.run,
        name=request.name,
        episode=request.episode,
        token=lease.token,
        format="safetensors",
        files=tuple(files),
        parent=request.parent,
        fingerprint=request.fingerprint,
        metrics=dict(request.metrics),
        created_at=time.time(),
        writer=writer.as_dict(),
        code_hash=request.code_hash,
        config_hash=request.config_hash,
        features=request.features,
        origin={**(request.origin or {}), "objects": staging},
    )
    body = manifest.to_bytes()
    signed = signature_bytes(store._context.signing.key, body) if store._context.signing.key else None
    try:
        _put_staged(store, staging, MANIFEST_FILE, body)
        if signed is not None:
            _put_staged(store, staging, SIGNATURE_FILE, signed)
    except TrainguardError:
        raise
    except Exception as error:
        raise CheckpointWriteError("manifest", staging, error) from error
    # 5. the registry decides
    record = CheckpointRecord(
        run=store.run,
        name=request.name,
        episode=request.episode,
        token=lease.token,
        manifest_hash=hash_bytes(body),
        parent=request.parent,
        fingerprint=request.fingerprint,
        metrics=dict(request.metrics),
        bytes=manifest.total_bytes,
        created_at=manifest.created_at,
    )
    details = {**writer.as_dict(), "staging": staging}
    verdict = lease.while_held(
        lambda: store.registry.commit_checkpoint(record, writer=details), what="commit"
    )
    if not verdict.accepted:
        note = {"reason": verdict.reason, "token": lease.token, "fenced": verdict.fenced}
        store.bucket.put_new(f"{staging}/{recovery.REFUSED_NOTE}", json.dumps(note).encode())
        if verdict.fenced:
            lease.lost_reason = verdict.reason
            raise CommitFenced(store.run, request.name, lease.token, verdict.reason)
        raise CommitRefused(store.run, request.name, lease.token, verdict.reason)
    # 6. from here the checkpoint exists; the index makes it readable (recovery redoes this step)
    try:
        recovery.index(store, request.name, body, signed)
    except Exception as error:  # decided: it loads from its staged manifest, recovery indexes it
        raise CheckpointWriteError("index", store.key(request.name), error, committed=True) from error
    return store.registry.checkpoint(store.run, request.name)


def _put_staged(store: BucketStore, staging: str, name: str, body: bytes) -> None:
    if not store.bucket.put_new(f"{staging}/{name}", body).done:
        raise _occupied(staging, name)


def _upload_state(store: BucketStore, staging: str, state: object) -> list[FileRecord]:
    files = []
    finite = store._context.validation.finite
    for encoded in encode_state(state):  # the same files a save on disk writes
        sent = store.bucket.upload(f"{staging}/{encoded.path}", _checked(encoded.chunks, finite))
        if not isinstance(sent, Uploaded):
            raise _occupied(staging, encoded.path)
        files.append(FileRecord(encoded.path, sent.size, sent.digest, encoded.codec))
    return files


def _occupied(staging: str, name: str) -> CheckpointWriteError:
    # A fresh staging prefix holds nothing: an object already there means someone else writes in it.
    key = f"{staging}/{name}"
    return CheckpointWriteError("upload", key, FileExistsError(f"{key}: an object was already there"))


def _checked(chunks: list[Chunk], finite: bool) -> Iterator[memoryview]:
    """The file's chunks, each tensor checked for NaN/inf before it is sent (as on disk)."""
    for piece, tag in chunks:
        if finite:
            check_finite_chunk(piece, tag)
        yield piece


__all__ = ["commit"]
