"""Small files replaced atomically: a reader sees the old content or the new, never half a file."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, text: str, *, durable: bool = True) -> None:
    """Write ``text`` to a temporary file named after this process, fsync it, rename it over ``path`` and
    fsync the directory: after a crash ``path`` holds the old content or the new, never a torn file.
    ``durable=False`` skips the fsyncs, for files rewritten every heartbeat that nothing needs after a
    crash (readers see old or new, never half, either way)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = text.encode()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    if not durable:
        return
    directory = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class HeldFile:
    """A small file written atomically and then held open for as long as this object lives.

    An open descriptor on a file under a run's store is something the kernel shows (``/proc/PID/fd``) and a
    registry client cannot forge: it is how a Guard or a launcher proves to the watchdog that it belongs to
    the run (trainguard.supervise._membership).
    """

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        write_atomically(path, text)
        self._fd: int | None = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self, *, if_text: str) -> None:
        """Close, and remove the file if it still says ``if_text`` (another process may have replaced it)."""
        self.close()
        try:
            if self.path.read_text() == if_text:
                self.path.unlink()
        except FileNotFoundError:
            pass


_CHUNK = 16 << 20


class TooLarge(ValueError):
    """A file longer than its reader allows (``/dev/zero`` given as a config must not exhaust memory)."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        super().__init__(f"{path} is larger than {limit} bytes")


def read_limited(path: Path, limit: int) -> bytes:
    """A file's bytes, reading at most ``limit`` of them; :class:`TooLarge` if there are more (a device
    or a huge file given where a small text file belongs). OSError as ``open``/``read`` raise it."""
    chunks, total = [], 0
    with open(path, "rb") as handle:
        # In chunks: read(n) allocates n bytes up front, whatever the file's size.
        while total <= limit and (chunk := handle.read(min(_CHUNK, limit + 1 - total))):
            chunks.append(chunk)
            total += len(chunk)
    if total > limit:
        raise TooLarge(path, limit)
    return b"".join(chunks)


__all__ = ["HeldFile", "TooLarge", "read_limited", "write_atomically"]
