"""Who is this process, and is that other process still the one we think it is.

A PID alone is never trusted (PIDs are reused); a process is identified by (host, pid, start) - the same idea
as psutil's ``_get_ident``, with one difference that matters: the start is the kernel's own count of clock
ticks since boot (``/proc/PID/stat``, field 22), never a wall-clock time. psutil's ``create_time()`` adds the
boot time, which the kernel derives from the wall clock: an NTP step or a changed date moves every derived
start time at once, and every live process would look like a stranger. Ticks since boot only change with a
reboot, and ``host_key`` names the boot (``/proc/sys/kernel/random/boot_id``) and the PID namespace (two
containers on one kernel share a boot id but not their PIDs).

Where there is no ``/proc`` (macOS), the start is psutil's create time in hundredths of a second - wall-clock
derived, the best that platform offers; the launcher and watchdog, which act on identities, need Linux.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

_PROC = Path("/proc")


@functools.cache
def boot_id() -> str:
    """An identifier that changes when the machine reboots."""
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        # macOS and others: boot time is stable for the life of the boot.
        return f"boot-{psutil.boot_time():.0f}"


@functools.cache
def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "pid"


@functools.cache
def clock_ticks_per_second() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def host_key() -> str:
    """Processes with equal host keys can see and signal each other's PIDs."""
    return f"{boot_id()}/{_pid_namespace()}"


def hostname() -> str:
    return socket.gethostname()


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (which may itself contain spaces and ')')."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (None: no such process)."""
    fields = _stat_fields(pid)
    if fields is not None:
        return int(fields[19])  # field 22 of stat(5); fields[0] is field 3 (state)
    if _PROC.is_dir():
        return None  # Linux, and the process is gone
    try:
        return round(psutil.Process(pid).create_time() * 100)
    except psutil.Error:
        return None


def _state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    if fields is not None:
        return fields[0]
    try:
        return "Z" if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE else "R"
    except psutil.Error:
        return None


def is_same_process_alive(pid: int, start_ticks: int | None) -> bool:
    """True when a live (non-zombie) process has this pid *and* started at these ticks. An unknown start
    (``None``: a row written before identities had ticks) matches nothing."""
    if start_ticks is None:
        return False
    started = process_start_ticks(pid)
    return started == start_ticks and _state(pid) not in (None, "Z", "X")


def process_uid(pid: int) -> int | None:
    """The real uid ``pid`` runs as (None: no such process)."""
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(psutil.Process(pid).uids().real)
    except (psutil.Error, AttributeError):
        return None


def wall_start(start_ticks: int) -> float:
    """For people only (``ps``, reports): a start in ticks as seconds since the epoch, by the boot time."""
    if not _PROC.is_dir():
        return start_ticks / 100
    return psutil.boot_time() + start_ticks / clock_ticks_per_second()


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    host_key: str
    pid: int
    start_ticks: int  # since boot; with host_key and pid, the identity
    uid: int  # the real uid the process runs as: only processes of this uid are ever signalled for it

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity:
        """The identity of a process on this host (start 0 and uid -1 if it is already gone)."""
        start, uid = process_start_ticks(pid), process_uid(pid)
        return cls(
            host=hostname(),
            host_key=host_key(),
            pid=pid,
            start_ticks=start if start is not None else 0,
            uid=uid if uid is not None else -1,
        )

    @classmethod
    def current(cls) -> ProcessIdentity:
        # Not cached: a forked child must report its own pid and start.
        return cls.of(os.getpid())

    @property
    def started_at(self) -> float:
        """Seconds since the epoch, for people (see :func:`wall_start`)."""
        return wall_start(self.start_ticks) if self.start_ticks else time.time()

    def as_dict(self) -> dict[str, object]:
        return {
            "host": self.host,
            "host_key": self.host_key,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "uid": self.uid,
        }


__all__ = [
    "ProcessIdentity",
    "boot_id",
    "clock_ticks_per_second",
    "host_key",
    "hostname",
    "is_same_process_alive",
    "process_start_ticks",
    "process_uid",
    "wall_start",
]
