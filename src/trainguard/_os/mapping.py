"""Verified memory maps: a checkpoint file mapped (not copied) and hashed in place, and the file's identity
taken before and after, so a change at any time after verification is noticed at the next use.

Why a map: reading a GiB into fresh anonymous memory costs a page fault per page (0.6-3.5 s here), while a
map of a file in the page cache costs only the page-table entries. Why private and writable
(``MAP_PRIVATE``, ``PROT_READ|PROT_WRITE``): tensors built on it may be written in place by the user (an
optimizer step) - those writes stay in the process (copy on write) and never reach the file.

What it closes and what it does not. Each file is hashed through the mapping after the identity (device,
inode, size, mtime, ctime) was taken, and the identity is taken again after hashing: a file replaced or
written while it was verified is refused. After that, the map still reads the page cache for every page not
yet written by the process, so a writer with access to the store that rewrites the file *in place* would
change what the map shows; any such write moves the file's ctime (which no user can set back), and
``changed()`` - one ``stat`` of the path - notices it. ``LoadedCheckpoint.state``
checks at every access and re-verifies (or refuses) a changed file; tensors taken out before the change and
kept are not re-checked (copy them, or load with ``mapped=False`` for a private copy). A file replaced by
rename (or moved away) does not affect the map: it keeps the verified inode, and the next check hashes
the map again and finds it unchanged. Truncating a mapped file makes access past the
new end fault (SIGBUS), as for any map (``torch.load(mmap=True)`` too).
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import sys
import threading
import weakref
from dataclasses import dataclass

import blake3
import numpy as np

from trainguard._os.hashing import format_digest
from trainguard._os.libc import libc

_MADV_POPULATE_READ = 22  # Linux 5.14: fill the page tables from the page cache without breaking COW
_PARALLEL_FROM = 16 << 20  # smaller files hash faster on one thread than they take to fan out


@dataclass(frozen=True)
class FileIdentity:
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, stat: os.stat_result) -> FileIdentity:
        return cls(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class ChangedWhileVerified(OSError):
    """The file's identity changed between the start and the end of its verification."""


class VerifiedMap:
    """One file, mapped and hashed; ``data`` is the mapped bytes (a uint8 array). No descriptor is kept: a
    process holding files open under a store looks like a writer to the watchdog's scan, and a serving
    process must never look like one."""

    def __init__(self, path: str, identity: FileIdentity, data: np.ndarray, digest: str) -> None:
        self.path = path
        self.identity: FileIdentity | None = identity  # None: the path is gone (the map still holds it)
        self.data = data
        self.digest = digest

    def _now(self) -> FileIdentity | None:
        try:
            return FileIdentity.of(os.stat(self.path))
        except FileNotFoundError:
            return None  # moved away (retention, quarantine): the map keeps the verified inode

    def changed(self) -> bool:
        """Whether the file at the path has been written, truncated, replaced, removed or had its metadata
        changed since verification."""
        return self._now() != self.identity

    def rehash(self) -> tuple[str, FileIdentity | None]:
        """The digest of what the map shows now (after ``changed()``: is it still the verified content?),
        and the identity it was taken under - to be accepted (``identity = ...``) only if it matches."""
        before = self._now()
        digest = _hash(self.data)
        if self._now() != before:
            raise ChangedWhileVerified(f"{self.path} changed while it was re-verified")
        return digest, before


def _hash(data: np.ndarray) -> str:
    threads = blake3.blake3.AUTO if data.nbytes >= _PARALLEL_FROM else 1
    hasher = blake3.blake3(max_threads=threads)  # releases the GIL; AUTO uses every core
    hasher.update(data.data)  # the array's own memoryview: no copy
    return format_digest(hasher)


def map_and_hash(path: str | os.PathLike[str]) -> VerifiedMap:
    """Map ``path`` privately and hash the mapped bytes; raises ChangedWhileVerified if the file changed
    meanwhile."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        identity, data, digest = _map(fd, os.fspath(path))
    finally:
        os.close(fd)  # the map stays valid without it
    return VerifiedMap(os.fspath(path), identity, data, digest)


def _mapping_libc() -> ctypes.CDLL:
    c = libc()
    c.mmap.restype = ctypes.c_void_p
    c.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    c.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    c.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return c


_LIBC = _mapping_libc() if sys.platform.startswith("linux") else None
_MAP_FAILED = ctypes.c_void_p(-1).value


def _map_private(fd: int, size: int) -> np.ndarray:
    """``mmap(MAP_PRIVATE, PROT_READ|PROT_WRITE)`` through libc, not Python's ``mmap`` module: that one keeps
    a duplicate of the descriptor for as long as the map lives (before Python 3.13), and a process holding
    files open under a store looks like a writer to the watchdog. Unmapped when the last view is gone."""
    if _LIBC is None:  # elsewhere: Python's map (it keeps a descriptor; the watchdog is Linux-only anyway)
        return np.frombuffer(mmap.mmap(fd, size, access=mmap.ACCESS_COPY), dtype=np.uint8)
    address = _LIBC.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    if address is None or address == _MAP_FAILED:
        error = ctypes.get_errno()
        raise OSError(error, f"mmap: {os.strerror(error)}")
    if _LIBC.madvise(address, size, _MADV_POPULATE_READ) != 0:
        _LIBC.madvise(address, size, mmap.MADV_WILLNEED)  # an older kernel: the hash faults pages in
    memory = (ctypes.c_uint8 * size).from_address(address)
    weakref.finalize(memory, _LIBC.munmap, address, size)
    # The array (and every tensor built on it) keeps ``memory`` alive, and with it the map.
    data: np.ndarray = np.frombuffer(memoryview(memory).cast("B"), dtype=np.uint8)
    return data


class _Verified:
    """Digests this process computed, by the identity the file had while it was hashed: a file whose
    identity has not moved since (no write, truncation or replacement: each moves the ctime, which no user
    can set back) holds the bytes that were hashed, so re-loading it needs no second pass over them - the
    same rule ``LoadedCheckpoint.state`` applies at every access. Bounded; per process, never on disk."""

    def __init__(self, size: int = 4096) -> None:
        self._digests: collections.OrderedDict[FileIdentity, str] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, identity: FileIdentity) -> str | None:
        with self._lock:
            digest = self._digests.get(identity)
            if digest is not None:
                self._digests.move_to_end(identity)
            return digest

    def put(self, identity: FileIdentity, digest: str) -> None:
        with self._lock:
            self._digests[identity] = digest
            while len(self._digests) > self._size:
                self._digests.popitem(last=False)


VERIFIED = _Verified()


def _map(fd: int, path: str) -> tuple[FileIdentity, np.ndarray, str]:
    identity = FileIdentity.of(os.fstat(fd))
    data = np.empty(0, dtype=np.uint8) if identity.size == 0 else _map_private(fd, identity.size)
    known = VERIFIED.get(identity)
    digest = known if known is not None else _hash(data)
    if FileIdentity.of(os.fstat(fd)) != identity:
        raise ChangedWhileVerified(f"{path} changed while it was verified")
    if known is None:
        VERIFIED.put(identity, digest)
    return identity, data, digest


__all__ = ["VERIFIED", "ChangedWhileVerified", "FileIdentity", "VerifiedMap", "map_and_hash"]
