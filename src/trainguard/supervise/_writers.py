"""Who wrote each file: the writers a ``/proc`` scan misses.

A trainer that opens a checkpoint, writes it and closes it within milliseconds is never seen holding it in
``/proc/*/fd``. The kernel can say who wrote it:

- **fanotify** (needs ``CAP_SYS_ADMIN``: the watchdog's systemd unit runs as root): a mark on the mount of
  each watched directory; every ``FAN_CLOSE_WRITE`` event carries the writer's pid and an open descriptor
  of the file (its path). Nothing is missed while the monitor runs, however short the write.
- **inotify** (anyone, as a fallback): ``IN_CLOSE_WRITE``/``IN_MOVED_TO`` name the file but not the writer;
  the candidates are the processes whose working directory or open files are under the directory at the
  moment the event is read - a writer that has already moved on is not named. ``how`` says which.

The events are read by a helper process (``python -m trainguard.supervise._writers DIR...``), never by the
process that asked: each fanotify event hands over a descriptor of the written file, and closing *any*
descriptor of a file drops every POSIX lock the process holds on it - SQLite's locks on the registry
(which lives under the store) included, and a watchdog that writes the registry would corrupt it. The
helper looks at each writer as its event arrives, while it still runs (so a trainer's last save before it
exits is still identified by its marker, cgroup, parents), and sends one JSON line per write; a reader
thread collects them and ``drain()`` hands over what was seen since the last call.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import psutil

from trainguard._os.libc import libc
from trainguard.supervise._linux import PR_SET_PDEATHSIG, _prctl
from trainguard.supervise._procs import Evidence, describe

# <sys/fanotify.h>
_FAN_CLOSE_WRITE = 0x08
_FAN_EVENT_ON_CHILD = 0x08000000
_FAN_CLOEXEC, _FAN_NONBLOCK, _FAN_CLASS_NOTIF = 0x01, 0x02, 0x00
_FAN_MARK_ADD, _FAN_MARK_MOUNT = 0x01, 0x10
_FAN_NOFD = -1
_AT_FDCWD = -100
_EVENT = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
# <sys/inotify.h>
_IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE, _IN_ISDIR = 0x08, 0x80, 0x100, 0x40000000
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000
_INOTIFY = struct.Struct("=iIII")  # wd, mask, cookie, len


@dataclass(frozen=True)
class Write:
    """A file closed after writing, under a watched directory."""

    path: str
    at: float
    how: str  # "fanotify": ``pid`` is the writer; "inotify": ``candidates`` are who it may have been
    pid: int | None = None
    writer: Evidence | None = None  # the writer as it is now (None: already gone, or unknown)
    candidates: list[Evidence] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "at": self.at,
            "how": self.how,
            "pid": self.pid,
            "writer": self.writer.as_dict() if self.writer else None,
            "candidates": [c.as_dict() for c in self.candidates],
        }


def _under(path: str, directories: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in directories)


class _EventSource:
    """The kernel side, in the helper process: fanotify, else inotify; ``read()`` returns the writes
    queued since the last call."""

    def __init__(self, directories: list[str], *, fanotify: bool = True) -> None:
        self.directories = directories
        self.fd = -1
        self.how = "none"
        self.limitation = ""
        self._watches: dict[int, str] = {}
        self._skip = os.getpid()  # the helper's own reads of event descriptors are not writes
        try:
            self._start_fanotify(fanotify)
        except OSError as error:
            self.limitation = (
                f"fanotify unavailable ({os.strerror(error.errno or 0)}; it needs CAP_SYS_ADMIN): inotify "
                "names the files written but not their writers - only processes holding files or sitting "
                "under the directory when the events are read can be named"
            )
            self._start_inotify()

    def read(self) -> list[Write]:
        return self._drain_fanotify() if self.how == "fanotify" else self._drain_inotify()

    def _start_fanotify(self, wanted: bool) -> None:
        if not wanted:
            raise OSError(errno.EPERM, "fanotify not requested")
        c = libc()
        fd = c.fanotify_init(_FAN_CLASS_NOTIF | _FAN_CLOEXEC | _FAN_NONBLOCK, os.O_RDONLY | os.O_LARGEFILE)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "fanotify_init")
        for directory in self.directories:
            # A mount mark sees every file below the directory, however deep; events are filtered by path.
            if (
                c.fanotify_mark(
                    fd, _FAN_MARK_ADD | _FAN_MARK_MOUNT, _FAN_CLOSE_WRITE, _AT_FDCWD, directory.encode()
                )
                < 0
            ):
                code = ctypes.get_errno()
                os.close(fd)
                raise OSError(code, "fanotify_mark")
        self.fd, self.how = fd, "fanotify"

    def _start_inotify(self) -> None:
        fd = libc().inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            self.limitation += "; inotify unavailable too: no writes can be seen"
            return
        self.fd, self.how = fd, "inotify"
        for directory in self.directories:
            for root, _dirs, _files in os.walk(directory):
                self._watch(root)

    def _watch(self, directory: str) -> None:
        mask = _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
        wd = libc().inotify_add_watch(self.fd, directory.encode(), mask)
        if wd >= 0:
            self._watches[wd] = directory

    def _read(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as error:
                if error.errno == errno.EINTR:
                    continue
                raise
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _drain_fanotify(self) -> list[Write]:
        data, offset, writes = self._read(), 0, []
        now = time.time()
        while offset + _EVENT.size <= len(data):
            length, _vers, _res, _meta, _mask, fd, pid = _EVENT.unpack_from(data, offset)
            offset += max(length, _EVENT.size)
            if fd == _FAN_NOFD or fd < 0:
                continue
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = ""
            finally:
                os.close(fd)
            if pid == self._skip or not _under(path, self.directories):
                continue
            writes.append(Write(path, now, "fanotify", pid, _evidence(pid, path)))
        return writes

    def _drain_inotify(self) -> list[Write]:
        data, offset, writes = self._read(), 0, []
        now = time.time()
        candidates: dict[str, list[Evidence]] = {}
        while offset + _INOTIFY.size <= len(data):
            wd, mask, _cookie, length = _INOTIFY.unpack_from(data, offset)
            raw = data[offset + _INOTIFY.size : offset + _INOTIFY.size + length]
            offset += _INOTIFY.size + length
            directory = self._watches.get(wd)
            if directory is None:
                continue
            path = os.path.join(directory, raw.rstrip(b"\0").decode(errors="replace"))
            if mask & _IN_CREATE and mask & _IN_ISDIR:
                self._watch(path)  # a new subdirectory: watch it too
            elif mask & (_IN_CLOSE_WRITE | _IN_MOVED_TO) and not mask & _IN_ISDIR:
                if directory not in candidates:  # one /proc walk per directory per batch, not per event
                    candidates[directory] = _candidates(directory)
                writes.append(Write(path, now, "inotify", candidates=candidates[directory]))
        return writes


def _evidence(pid: int, path: str) -> Evidence | None:
    try:
        return describe(psutil.Process(pid), files=[path])
    except psutil.Error:
        return None  # a writer that has exited: its pid is all there is


def _candidates(directory: str) -> list[Evidence]:
    """Processes that hold files or sit under ``directory`` now (what inotify cannot say)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            held = [f.path for f in proc.open_files() if _under(f.path, [directory])]
            cwd = proc.cwd()
        except psutil.Error:
            continue
        if held or _under(cwd, [directory]):
            try:
                found.append(describe(proc, files=held, cwd=cwd))
            except psutil.Error:
                continue
    return found


def _evidence_from(body: dict[str, object] | None) -> Evidence | None:
    if body is None:
        return None
    names = {f.name for f in fields(Evidence)}
    return Evidence(**{k: v for k, v in body.items() if k in names})  # type: ignore[arg-type]


def _write_from(body: dict[str, object]) -> Write:
    candidates = body.get("candidates") or []
    assert isinstance(candidates, list)
    return Write(
        path=str(body["path"]),
        at=float(body["at"]),  # type: ignore[arg-type]
        how=str(body["how"]),
        pid=body.get("pid"),  # type: ignore[arg-type]
        writer=_evidence_from(body.get("writer")),  # type: ignore[arg-type]
        candidates=[e for e in (_evidence_from(c) for c in candidates) if e is not None],
    )


class WriteMonitor:
    """Writes under ``directories`` (and below them), by writer, read by a helper process; ``how`` says
    which kernel facility sees them and so what can be named (``limitation``: what it cannot)."""

    def __init__(self, directories: list[Path], *, fanotify: bool = True) -> None:
        self.directories = sorted({str(Path(d).resolve()) for d in directories})
        self.how = "none"
        self.limitation = ""
        self._seen: list[Write] = []
        self._lock = threading.Lock()
        self._helper: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        if not self.directories:
            return
        flags = [] if fanotify else ["--no-fanotify"]
        self._helper = subprocess.Popen(
            [sys.executable, "-m", "trainguard.supervise._writers", *flags, "--", *self.directories],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._helper.stdout is not None
        ready = json.loads(self._helper.stdout.readline() or "{}")  # the marks are in place once it answers
        self.how, self.limitation = ready.get("how", "none"), ready.get("limitation", "helper did not start")
        self._reader = threading.Thread(target=self._collect, name="trainguard-writes", daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        helper = self._helper
        assert helper is not None and helper.stdout is not None
        for line in helper.stdout:
            write = _write_from(json.loads(line))
            with self._lock:
                self._seen.append(write)

    def drain(self) -> list[Write]:
        """Every write seen since the last call."""
        with self._lock:
            writes, self._seen = self._seen, []
        return writes

    def close(self) -> None:
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.terminate()
            try:
                helper.wait(timeout=5)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if helper is not None and helper.stdout is not None:
            helper.stdout.close()

    @property
    def running(self) -> bool:
        return self._helper is not None and self._helper.poll() is None

    def __enter__(self) -> WriteMonitor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _serve(directories: list[str], *, fanotify: bool) -> None:
    """The helper: announce how it watches, then one JSON line per write until stdout closes or TERM."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # never outlive the watchdog that asked
    source = _EventSource(directories, fanotify=fanotify)
    print(json.dumps({"how": source.how, "limitation": source.limitation}), flush=True)
    if source.fd < 0:
        return
    while True:
        ready, _, _ = select.select([source.fd], [], [], 1.0)
        if ready:
            for write in source.read():
                print(json.dumps(write.as_dict()), flush=True)


def main(argv: list[str]) -> int:
    fanotify = "--no-fanotify" not in argv
    directories = argv[argv.index("--") + 1 :] if "--" in argv else []
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        _serve(directories, fanotify=fanotify)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = ["Write", "WriteMonitor"]
