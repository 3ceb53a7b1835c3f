"""Durable file operations, each a named step of the commit protocol.

Every operation that can fail raises :class:`StepFailed` naming its step, so a failed save reports *where*
it failed ("fsync", "rename", ...) and the commit code can decide what is safe to undo. The names of the
syscalls used here (``os.write``, ``os.fsync``, ``os.replace``...) are the fault-injection seams of the
tests.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePath

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


# Below the store root nothing is followed: a symlink planted as `.trash`, `.staging` or a checkpoint's name
# must not turn a removal or a move into one somewhere else. Every component under the root is opened with
# O_NOFOLLOW, and the operation is done relative to the descriptor of the directory that holds the entry.
_NOFOLLOW_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)


@contextmanager
def directory_fd(root: Path, relative: PurePath) -> Iterator[int]:
    """A descriptor of ``root / relative`` (``root`` itself may be a symlink, nothing below it may)."""
    fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in relative.parts:
            inner = os.open(part, _NOFOLLOW_DIR, dir_fd=fd)
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def _below(root: Path, path: Path) -> PurePath:
    relative = PurePath(os.path.relpath(path, root))
    if not relative.parts or relative.parts[0] == os.pardir:
        raise ValueError(f"{path} is not under the store {root}")
    return relative


def entry_exists(path: Path, *, root: Path) -> bool:
    """Does ``path`` exist (as anything, a symlink included), judged without following symlinks?"""
    relative = _below(root, path)
    try:
        with directory_fd(root, relative.parent) as fd:
            os.stat(relative.name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            return True  # a symlink or a file where a directory was expected: something is there
        raise
    return True


def move_dir(
    source: Path, target: Path, *, root: Path, step: str = "rename", fsync_step: str = "store-fsync"
) -> None:
    """Atomically move a directory inside the store to a name that must not exist yet, then fsync both
    parents; no symlink below ``root`` is followed."""
    src, dst = _below(root, source), _below(root, target)
    try:
        with directory_fd(root, src.parent) as src_fd, directory_fd(root, dst.parent) as dst_fd:
            try:
                os.stat(dst.name, dir_fd=dst_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                raise StepFailed(step, target, FileExistsError(f"{target} already exists"))
            try:
                os.rename(src.name, dst.name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            except OSError as error:
                raise StepFailed(step, source, error) from error
            _fsync_fd(dst_fd, target.parent, fsync_step)
            if src.parent != dst.parent:
                _fsync_fd(src_fd, source.parent, fsync_step)
    except OSError as error:  # opening a directory on the way: missing, or a symlink (ELOOP)
        raise StepFailed(step, source, error) from error


def _fsync_fd(fd: int, path: Path, step: str) -> None:
    try:
        os.fsync(fd)
    except OSError as error:
        raise StepFailed(step, path, error) from error


def make_dir(path: Path, *, root: Path, step: str = "stage", exist_ok: bool = False) -> None:
    """Create a directory inside the store (its parent reached without following symlinks), and make its
    entry durable: without the parent's fsync a crash can lose a new directory *with everything later
    moved or written into it* - a staging directory whose checkpoint the registry then commits (found by
    stress/crash_states.py)."""
    relative = _below(root, path)
    try:
        with directory_fd(root, relative.parent) as fd:
            try:
                os.mkdir(relative.name, 0o755, dir_fd=fd)
            except FileExistsError:
                if not exist_ok:
                    raise
                os.close(os.open(relative.name, _NOFOLLOW_DIR, dir_fd=fd))  # a directory, not a symlink
                return
            os.fsync(fd)
    except OSError as error:
        raise StepFailed(step, path, error) from error


def remove_tree(path: Path, *, root: Path) -> None:
    """Delete an entry of the store and everything in it, following no symlink (a symlink is removed as
    the link it is). Missing is fine; other failures are left for the next recovery."""
    relative = _below(root, path)
    try:
        with directory_fd(root, relative.parent) as fd:
            try:
                is_dir = stat.S_ISDIR(os.stat(relative.name, dir_fd=fd, follow_symlinks=False).st_mode)
            except FileNotFoundError:
                return
            if is_dir:
                shutil.rmtree(relative.name, dir_fd=fd, ignore_errors=True)
            else:
                os.unlink(relative.name, dir_fd=fd)
    except OSError:
        return  # a parent gone or a symlink on the way: nothing of ours to delete there


__all__ = [
    "PIPELINE_CHUNK",
    "Chunk",
    "StepFailed",
    "directory_fd",
    "entry_exists",
    "fsync_dir",
    "make_dir",
    "move_dir",
    "new_durable_file",
    "remove_tree",
    "write_all",
    "write_file",
    "write_small_file",
]
