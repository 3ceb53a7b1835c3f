"""An S3 bucket as the fenced store uses it (``_bucket_store``): conditional writes, hashed transfers.

S3 has no rename and no multi-object transaction, and cannot check a fencing token: the registry stays the
point of commit. What the bucket gives is the second line: objects written once (``If-None-Match: *``: a
second writer of a key gets 412, never an overwrite), pointers moved by compare-and-swap (``If-Match``), and
every byte hashed (BLAKE3, as on disk) on its way up and again on its way down, so an object changed after
the registry recorded its hash is found, by name, before anything is decoded.

Why boto3: it is what S3 users already run (credentials, endpoints, retries from the usual AWS variables),
it exposes the conditional headers on ``put_object`` and ``complete_multipart_upload``, and its responses
carry the status codes the protocol decides on (412 condition failed, 409 a concurrent conflict: retry).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from trainguard._os.hashing import format_digest, new_hasher
from trainguard.errors import CheckpointWriteError, CorruptCheckpoint, InvalidArgument, MissingDependency
from trainguard.names import bucket_url

PART = 8 << 20  # multipart part size: above S3's 5 MiB minimum, small enough to keep several in flight
_CONFLICT_RETRIES = 5  # 409 ConditionalRequestConflict: another conditional write to the key is in flight


@dataclass(frozen=True)
class BucketAddress:
    """``s3://bucket/prefix``: where a store lives in object storage."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> BucketAddress:
        return cls(*bucket_url(url))

    def key(self, *parts: str) -> str:
        for part in parts:
            if not part or "/" in part or part in (".", ".."):
                raise InvalidArgument("object name", part, "must be one plain name (no '/', '.' or '..')")
        return "/".join([self.prefix, *parts] if self.prefix else parts)


@dataclass(frozen=True)
class Uploaded:
    key: str
    size: int
    digest: str  # BLAKE3 of the bytes as sent, computed while sending
    etag: str


@dataclass(frozen=True)
class Conditional:
    """The outcome of a conditional write - expected either way, so a value: ``done`` or why not."""

    done: bool
    etag: str | None = None
    reason: str | None = None


@dataclass
class Costs:
    """What a store's use of the bucket cost, in the units providers bill: requests by operation, bytes
    each way (counted by this process; another process's requests are its own)."""

    requests: Counter[str] = field(default_factory=Counter)
    bytes_sent: int = 0
    bytes_received: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": sum(self.requests.values()),
            "by_operation": dict(sorted(self.requests.items())),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
        }


class Bucket:
    def __init__(self, client: Any, address: BucketAddress) -> None:
        self.client, self.address = client, address
        self.costs = Costs()
        self._lock = threading.Lock()
        # Every API call botocore makes for us, counted once (its own retries are not billed twice).
        client.meta.events.register("after-call.s3", self._count)

    def _count(self, model: Any = None, **_: Any) -> None:
        with self._lock:
            self.costs.requests[getattr(model, "name", "unknown")] += 1

    def _sent(self, count: int) -> None:
        with self._lock:
            self.costs.bytes_sent += count

    def _received(self, count: int) -> None:
        with self._lock:
            self.costs.bytes_received += count

    @classmethod
    def connect(cls, url: str, *, endpoint: str | None = None) -> Bucket:
        """The bucket at ``url`` with boto3's usual configuration (``AWS_*`` variables, profiles);
        ``endpoint`` (or ``AWS_ENDPOINT_URL``) for a server that is not AWS."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError as error:
            raise MissingDependency("boto3", "s3", "an s3:// store") from error
        client = boto3.client(
            "s3",
            endpoint_url=endpoint or os.environ.get("AWS_ENDPOINT_URL"),
            # More patient than boto3's 3 attempts (unless AWS_MAX_ATTEMPTS says otherwise): a server
            # coming back from a restart answers 500/503 for seconds while its volumes register, and a
            # training run should ride that out.
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS") or 8)},
            ),
        )
        return cls(client, BucketAddress.parse(url))

    # -- writes -------------------------------------------------------------------------------------

    def put_new(self, key: str, data: bytes) -> Conditional:
        """Create ``key`` only if nothing is there (a second writer is refused, never overwrites)."""
        return self._conditional(lambda: self._put(key, data, IfNoneMatch="*"), key, "exists already")

    def swap(self, key: str, data: bytes, expected: str | None) -> Conditional:
        """Replace ``key`` only if it is still the version ``expected`` (its ETag; None: only if absent)."""
        condition = {"IfMatch": expected} if expected is not None else {"IfNoneMatch": "*"}
        return self._conditional(lambda: self._put(key, data, **condition), key, "changed since it was read")

    def _put(self, key: str, data: bytes, **condition: str) -> str:
        reply = self.client.put_object(Bucket=self.address.bucket, Key=key, Body=data, **condition)
        self._sent(len(data))
        return str(reply["ETag"])

    def copy(self, source: str, target: str) -> None:
        """A server-side copy (no byte passes through this process): how a quarantine "moves" objects."""
        bucket = self.address.bucket
        self.client.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": source})

    def delete(self, key: str) -> None:
        """Remove ``key`` (absent already: done). Only retention and the second half of a move call this."""
        self.client.delete_object(Bucket=self.address.bucket, Key=key)

    def _conditional(self, attempt: Any, key: str, why: str) -> Conditional:
        for _ in range(_CONFLICT_RETRIES):
            try:
                return Conditional(True, etag=attempt())
            except Exception as error:
                status = _status(error)
                if status == 412:
                    return Conditional(False, reason=f"{key}: {why}")
                if status != 409:  # 409: a concurrent conditional write; the next attempt decides
                    raise CheckpointWriteError("put", key, error) from error
        return Conditional(False, reason=f"{key}: concurrent writers kept conflicting")

    def upload(
        self, key: str, chunks: Iterable[bytes | memoryview], *, workers: int = 8
    ) -> Conditional | Uploaded:
        """Write a new object from ``chunks`` - parts uploaded in parallel, hashed in order as they go -
        only if ``key`` does not exist yet (then the parts are abandoned: a ``Conditional`` says why)."""
        bucket = self.address.bucket
        hasher, size = new_hasher(), 0
        upload = self.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        try:
            with ThreadPoolExecutor(workers) as pool:
                futures: list[Future[str]] = []
                for number, part in enumerate(_parts(chunks), start=1):
                    hasher.update(part)
                    size += len(part)
                    futures.append(pool.submit(self._part, key, upload, number, part))
                    if len(futures) > 2 * workers:  # bounded memory: at most 2 parts per worker in flight
                        futures[-2 * workers - 1].result()
                parts = [{"PartNumber": n, "ETag": f.result()} for n, f in enumerate(futures, start=1)]
            done = self._conditional(
                lambda: self.client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
                )["ETag"],
                key,
                "exists already",
            )
        except BaseException:
            # Best effort: with the server gone the abort fails too, and the parts stay until a lifecycle
            # rule (AbortIncompleteMultipartUpload) removes them; the original error is what happened.
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            raise
        if not done.done:
            self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            return done
        return Uploaded(key, size, format_digest(hasher), str(done.etag))

    def _part(self, key: str, upload: str, number: int, data: bytes) -> str:
        reply = self.client.upload_part(
            Bucket=self.address.bucket, Key=key, UploadId=upload, PartNumber=number, Body=data
        )
        self._sent(len(data))
        return str(reply["ETag"])

    # -- reads --------------------------------------------------------------------------------------

    def read_verified(self, name: str, key: str, size: int, digest: str, *, workers: int = 8) -> bytearray:
        """The object's bytes, fetched in parallel ranges, returned only if their size and hash are the
        ones recorded; CorruptCheckpoint names the object otherwise (changed or truncated after commit)."""
        buffer = bytearray(size)
        view = memoryview(buffer)

        def fetch(start: int) -> int:
            end = min(start + PART, size) - 1
            body = self.client.get_object(Bucket=self.address.bucket, Key=key, Range=f"bytes={start}-{end}")
            data = body["Body"].read()
            view[start : start + len(data)] = data
            self._received(len(data))
            return len(data)

        with ThreadPoolExecutor(workers) as pool:
            got = sum(pool.map(fetch, range(0, size, PART))) if size else 0
        actual = self.head(key)
        if got != size or actual is None or actual[0] != size:
            raise CorruptCheckpoint(
                name, key, f"{size} bytes recorded, the object has {actual and actual[0]}"
            )
        hasher = new_hasher()
        hasher.update(view)
        if format_digest(hasher) != digest:
            raise CorruptCheckpoint(
                name, key, "hash differs from the manifest: the object changed after commit"
            )
        return buffer

    def read(self, key: str) -> bytes | None:
        """A small object's bytes (a manifest, a pointer, a note), or None when there is none."""
        found = self.read_with_etag(key)
        return found[0] if found is not None else None

    def read_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """A pointer's bytes and the ETag a compare-and-swap of it must name (None: there is none)."""
        try:
            reply = self.client.get_object(Bucket=self.address.bucket, Key=key)
        except Exception as error:
            if _status(error) == 404:
                return None
            raise
        data = bytes(reply["Body"].read())
        self._received(len(data))
        return data, str(reply["ETag"])

    def head(self, key: str) -> tuple[int, str] | None:
        try:
            reply = self.client.head_object(Bucket=self.address.bucket, Key=key)
        except Exception as error:
            if _status(error) == 404:
                return None
            raise
        return int(reply["ContentLength"]), str(reply["ETag"])

    def keys(self, prefix: str) -> Iterator[Listed]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.address.bucket, Prefix=prefix
        )
        for page in pages:
            for entry in page.get("Contents", []):
                yield Listed(str(entry["Key"]), int(entry["Size"]), entry["LastModified"].timestamp())


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    modified: float  # seconds since the epoch, the server's clock


def _parts(chunks: Iterable[bytes | memoryview]) -> Iterator[bytes]:
    """Re-cut ``chunks`` into parts of PART bytes (the last may be shorter; an empty object is one part).
    Each byte is copied once, into its part: a large tensor is cut straight from its own memory."""
    pending = bytearray()
    sent = False
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        if pending:  # top up the part begun by earlier chunks
            taken = view[: PART - len(pending)]
            pending += taken
            view = view[len(taken) :]
            if len(pending) < PART:
                continue
            yield bytes(pending)
            pending, sent = bytearray(), True
        while len(view) >= PART:
            yield bytes(view[:PART])
            view, sent = view[PART:], True
        pending += view
    if pending or not sent:
        yield bytes(pending)


def unreachable(error: BaseException) -> str:
    """Why a bucket cannot be used, as one line for the user (a missing bucket, refused keys, no server)."""
    status = _status(error)
    code = getattr(error, "response", {}).get("Error", {}).get("Code") if status else None
    if status == 404:
        return f"cannot be used: the bucket does not exist ({code or 404})"
    if status == 403:
        return f"cannot be used: access denied with these credentials ({code or 403})"
    name = type(error).__name__
    if name == "NoCredentialsError":
        return "cannot be used: no AWS credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile)"
    return f"cannot be used: {name}: {error}"


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)) or None
    return None


__all__ = ["PART", "Bucket", "BucketAddress", "Conditional", "Costs", "Listed", "Uploaded", "unreachable"]
