"""Who is this process, and is that other process still the one we think it is.

A PID alone is never trusted (PIDs are reused); a process is identified by (host, pid, start time), the
same idea as psutil's ``_get_ident``. ``host_key`` separates kernels *and* PID namespaces: two containers
on one kernel share a boot id but not their PIDs, so "pid 42 is gone" only means something inside the
same namespace.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

# psutil derives start times from clock ticks (1/100 s on Linux); two readings of one process can differ
# in the last digit after float arithmetic, a different process started in the same tick is implausible.
START_TIME_TOLERANCE = 0.02


def same_start_time(first: float, second: float) -> bool:
    """Do two readings of a start time name the same process (see ``START_TIME_TOLERANCE``)?"""
    return abs(first - second) <= START_TIME_TOLERANCE


@functools.cache
def boot_id() -> str:
    """An identifier that changes when the machine reboots."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        # macOS and others: boot time is stable for the life of the boot.
        return f"boot-{psutil.boot_time():.0f}"


@functools.cache
def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "pid"


def host_key() -> str:
    """Processes with equal host keys can see and signal each other's PIDs."""
    return f"{boot_id()}/{_pid_namespace()}"


def hostname() -> str:
    return socket.gethostname()


def process_start_time(pid: int) -> float | None:
    """Start time of ``pid`` (seconds since the epoch) or None if no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


def is_same_process_alive(pid: int, start_time: float) -> bool:
    """True when a live (non-zombie) process has this pid *and* this start time."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return same_start_time(proc.create_time(), start_time)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        # It exists but is not ours to inspect: assume alive, which is the safe direction.
        return True


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    host_key: str
    pid: int
    start_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity:
        """The identity of a process on this host (start time 0.0 if it is already gone)."""
        return cls(host=hostname(), host_key=host_key(), pid=pid, start_time=process_start_time(pid) or 0.0)

    @classmethod
    def current(cls) -> ProcessIdentity:
        # Not cached: a forked child must report its own pid and start time.
        return cls.of(os.getpid())

    def as_dict(self) -> dict[str, object]:
        return {"host": self.host, "host_key": self.host_key, "pid": self.pid, "start_time": self.start_time}


__all__ = [
    "START_TIME_TOLERANCE",
    "ProcessIdentity",
    "boot_id",
    "host_key",
    "hostname",
    "is_same_process_alive",
    "process_start_time",
    "same_start_time",
]
