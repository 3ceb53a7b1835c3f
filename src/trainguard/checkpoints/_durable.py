"""Durable file operations, each a named step of the commit protocol.

Every operation that can fail raises :class:`StepFailed` naming its step, so a failed save reports *where*
it failed ("fsync", "rename", ...) and the commit code can decide what is safe to undo. The names of the
syscalls used here (``os.write``, ``os.fsync``, ``os.replace``...) are the fault-injection seams of the
tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from trainguard._os.hashing import format_digest, new_hasher

# Chunks handed to the hashing thread: large enough to amortise the hand-off, small enough that hashing
# chunk i overlaps writing chunk i+1 (both release the GIL).
PIPELINE_CHUNK = 8 << 20


class StepFailed(Exception):
    def __init__(self, step: str, path: str | os.PathLike[str], cause: BaseException) -> None:
        self.step = step
        self.path = os.fspath(path)
        self.cause = cause
        super().__init__(f"{step} {self.path}: {cause}")


def write_all(fd: int, view: memoryview) -> None:
    """``os.write`` until every byte is written (a write may be partial)."""
    while view:
        written = os.write(fd, view)
        view = view[written:]


@contextmanager
def new_durable_file(path: Path, *, step: str = "write") -> Iterator[int]:
    """Create ``path`` (it must not exist) and yield its descriptor; fsync it when the block succeeds."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as error:
        raise StepFailed(step, path, error) from error
    try:
        yield fd
        try:
            os.fsync(fd)
        except OSError as error:
            raise StepFailed("fsync", path, error) from error
    finally:
        os.close(fd)


# A chunk is a byte view plus a tag that ``inspect`` receives with it (e.g. the dtype of a tensor's bytes).
Chunk = tuple[memoryview, object]


def _slices(chunks: Iterable[Chunk]) -> Iterable[Chunk]:
    # PIPELINE_CHUNK is a multiple of every element size, so slices of one tensor stay element-aligned.
    for chunk, tag in chunks:
        for start in range(0, len(chunk), PIPELINE_CHUNK):
            yield chunk[start : start + PIPELINE_CHUNK], tag


def write_file(
    path: Path,
    chunks: Iterable[Chunk],
    *,
    inspect: Callable[[memoryview, object], None] | None = None,
    step: str = "write",
) -> tuple[int, str]:
    """Create ``path`` (it must not exist), write the chunks, hash them, fsync. Returns (size, digest).

    Hashing (and ``inspect``, e.g. a finite-values check) runs on a helper thread one chunk behind the
    writer, so a large state costs about as much as writing it.
    """
    hasher = new_hasher()
    size = 0

    def consume(piece: memoryview, tag: object) -> None:
        hasher.update(piece)
        if inspect is not None:
            inspect(piece, tag)

    with new_durable_file(path, step=step) as fd, ThreadPoolExecutor(1, "trainguard-hash") as pool:
        pending: Future[None] | None = None
        try:
            for piece, tag in _slices(chunks):
                if pending is not None:
                    pending.result()
                pending = pool.submit(consume, piece, tag)
                write_all(fd, piece)
                size += len(piece)
            if pending is not None:
                pending.result()
        except OSError as error:
            raise StepFailed(step, path, error) from error
    return size, format_digest(hasher)


def write_small_file(path: Path, data: bytes, *, step: str) -> str:
    """Write and fsync a small file (manifest, reason record); returns its digest."""
    _, digest = write_file(path, [(memoryview(data), None)], step=step)
    return digest


def fsync_dir(path: Path, *, step: str = "dir-fsync") -> None:
    """Make a directory's entries (created, renamed files) durable."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as error:
        raise StepFailed(step, path, error) from error
    try:
        os.fsync(fd)
    except OSError as error:
        raise StepFailed(step, path, error) from error
    finally:
        os.close(fd)


def move_dir(source: Path, target: Path, *, step: str = "rename", fsync_step: str = "store-fsync") -> None:
    """Atomically move a directory to a name that must not exist yet, then fsync both parents."""
    if target.exists():
        raise StepFailed(step, target, FileExistsError(f"{target} already exists"))
    try:
        os.rename(source, target)
    except OSError as error:
        raise StepFailed(step, source, error) from error
    fsync_dir(target.parent, step=fsync_step)
    if source.parent != target.parent:
        fsync_dir(source.parent, step=fsync_step)


def make_dir(path: Path, *, step: str = "stage") -> None:
    try:
        path.mkdir(parents=False, exist_ok=False)
    except OSError as error:
        raise StepFailed(step, path, error) from error


__all__ = [
    "PIPELINE_CHUNK",
    "Chunk",
    "StepFailed",
    "fsync_dir",
    "make_dir",
    "move_dir",
    "new_durable_file",
    "write_all",
    "write_file",
    "write_small_file",
]
