"""Content hashes: BLAKE3 (cryptographic, ~3 GB/s per core, releases the GIL while hashing)."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

import blake3
import numpy as np

ALGORITHM = "blake3"
_READ_CHUNK = 8 << 20


def new_hasher() -> blake3.blake3:
    return blake3.blake3()


def format_digest(hasher: blake3.blake3) -> str:
    return f"{ALGORITHM}:{hasher.hexdigest()}"


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    hasher = new_hasher()
    hasher.update(data)
    return format_digest(hasher)


def hash_file(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, digest) of a file, read in chunks so a large checkpoint is never held in memory twice."""
    hasher = new_hasher()
    size = 0
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(_READ_CHUNK)
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            hasher.update(view[:count])
            size += count
    return size, format_digest(hasher)


def read_and_hash(path: str | os.PathLike[str]) -> tuple[np.ndarray, str]:
    """Read a whole file into one buffer while hashing it: one pass for verify-then-decode.

    The buffer is ``np.empty`` (not a zero-filled bytearray: touching a GiB of fresh pages twice costs more
    than hashing it), and chunk i is hashed on a helper thread while chunk i+1 is read.
    """
    size = os.stat(path).st_size
    data = np.empty(size, dtype=np.uint8)
    view = data.data  # ndarray.data is the array's memoryview
    hasher = new_hasher()
    offset = 0
    with open(path, "rb", buffering=0) as handle, ThreadPoolExecutor(1, "trainguard-hash") as pool:
        pending: Future[object] | None = None
        while offset < size:
            count = handle.readinto(view[offset : offset + _READ_CHUNK])
            if not count:
                break
            if pending is not None:
                pending.result()
            pending = pool.submit(hasher.update, view[offset : offset + count])
            offset += count
        if pending is not None:
            pending.result()
    return data[:offset], format_digest(hasher)


__all__ = ["ALGORITHM", "format_digest", "hash_bytes", "hash_file", "new_hasher", "read_and_hash"]
