"""The run's own cgroup (v2): every process the launcher starts, and everything they start, whatever they
do to their environment, session or parentage.

The launcher makes ``trainguard.<run>.t<token>`` under its own cgroup when the cgroup2 hierarchy is writable
(root, or a delegated subtree), and the child joins it between fork and exec. A process cannot leave a
cgroup it was put in without write access to another one, so a double-forked, ``setsid``, ``env -i``
descendant is still found - and the name says which run and token it belongs to. Where cgroups cannot be
made, the launcher records the descendants it sees instead (see ``_descendants``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_PREFIX = "trainguard."
_NAME = re.compile(r"^trainguard\.(?P<run>.+)\.t(?P<token>\d+)$")
DISABLE = "TRAINGUARD_CGROUP"  # "off": never make cgroups (tests of the fallback; hosts that forbid them)


def cgroup_name(run: str, token: int) -> str:
    return f"{_PREFIX}{run}.t{token}"


def parse_name(path: str) -> tuple[str, int] | None:
    """(run, token) when the last component of a cgroup path is a run's cgroup."""
    match = _NAME.match(path.rstrip("/").rsplit("/", 1)[-1])
    return (match["run"], int(match["token"])) if match else None


def unified_mount() -> Path | None:
    """Where the cgroup2 hierarchy is mounted (``/sys/fs/cgroup``, or ``.../unified`` on hybrid hosts)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def cgroup_of(pid: int | str = "self") -> str | None:
    """The process's cgroup2 path (``/a/b``), from ``/proc/PID/cgroup`` (None: no cgroup2, or gone)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    return next((line[3:] for line in lines if line.startswith("0::")), None)


@dataclass(frozen=True)
class RunCgroup:
    path: Path  # the directory in the cgroup2 mount
    relative: str  # as /proc/PID/cgroup shows it

    @classmethod
    def create(cls, run: str, token: int) -> RunCgroup | None:
        """The run's cgroup under this process's own, or None when cgroups cannot be made here."""
        if os.environ.get(DISABLE) == "off":
            return None
        mount, own = unified_mount(), cgroup_of()
        if mount is None or own is None:
            return None
        relative = f"{own.rstrip('/')}/{cgroup_name(run, token)}"
        path = mount / relative.lstrip("/")
        try:
            path.mkdir(exist_ok=True)
            (path / "cgroup.procs").stat()
        except OSError:
            return None
        return cls(path, relative)

    def joiner(self) -> Callable[[], None]:
        """What the child runs between fork and exec: move itself into the cgroup (``0`` is "me")."""
        procs = os.fspath(self.path / "cgroup.procs")

        def join() -> None:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

        return join

    def pids(self) -> list[int]:
        try:
            return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def kill(self) -> None:
        """SIGKILL everything in it at once (``cgroup.kill``, Linux >= 5.14), else one by one."""
        try:
            (self.path / "cgroup.kill").write_text("1")
        except OSError:
            self._kill_each()

    def _kill_each(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> bool:
        """Remove the cgroup once it is empty (False while a process is still in it)."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    @classmethod
    def at(cls, relative: str) -> RunCgroup | None:
        """The run cgroup a process's ``/proc/PID/cgroup`` names (for the watchdog)."""
        mount = unified_mount()
        if mount is None or parse_name(relative) is None:
            return None
        return cls(mount / relative.lstrip("/"), relative)


__all__ = ["DISABLE", "RunCgroup", "cgroup_name", "cgroup_of", "parse_name", "unified_mount"]
