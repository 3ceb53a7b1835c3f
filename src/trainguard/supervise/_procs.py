"""Looking at other processes through ``/proc`` (via psutil): the run marker in their environment, the files
and working directories they hold, their parent chain and cgroup - the evidence a watchdog or an
``incident scan`` reports."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from trainguard._os import environment
from trainguard._os.identity import ProcessIdentity, wall_start
from trainguard.supervise._cgroup import cgroup_of, parse_name

MARKER = environment.RUN_ID
TOKEN_MARKER = environment.LEASE_TOKEN


@dataclass(frozen=True)
class Evidence:
    """What was seen of one process, at one moment."""

    pid: int
    start_ticks: int  # since boot: with the pid, the identity (trainguard._os.identity)
    uid: int
    cmdline: list[str]
    parents: list[str] = field(default_factory=list)  # "pid name", nearest first
    cgroup: str = ""
    files: list[str] = field(default_factory=list)
    cwd: str | None = None
    marker: str | None = None
    token: int | None = None
    registry_id: str | None = None  # of the registry whose launcher set the marker

    def run_mark(self, registry_id: str) -> tuple[str, int | None] | None:
        """(run, token) this process belongs to by its marker (for ``registry_id``) or, whatever its
        environment, by the run cgroup it sits in; None when neither says."""
        if self.marker is not None and self.registry_id in (None, registry_id):
            return self.marker, self.token
        return parse_name(self.cgroup)

    @property
    def container(self) -> str | None:
        """The container the process runs in, from its cgroup (docker, containerd, CRI-O, podman): the
        incident's rogue trainer ran inside one."""
        return container_of(self.cgroup)

    def as_dict(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "started_at": wall_start(self.start_ticks),
            "uid": self.uid,
            "cmdline": self.cmdline,
            "parents": self.parents,
            "cgroup": self.cgroup,
            "files": self.files,
            "cwd": self.cwd,
            "marker": self.marker,
            "token": self.token,
            "registry_id": self.registry_id,
            "container": self.container,
        }


_CONTAINER = re.compile(r"(?:docker|containerd|crio|libpod|kubepods)[^/]*?[-/:]?([0-9a-f]{64})")


def container_of(cgroup: str) -> str | None:
    """A container id (the 12-character form ``docker ps`` shows) in a cgroup path, or None."""
    match = _CONTAINER.search(cgroup) or re.search(r"/([0-9a-f]{64})(?:\.scope)?$", cgroup)
    return match.group(1)[:12] if match else None


def _environ_marker(proc: psutil.Process) -> tuple[str | None, int | None, str | None]:
    """(run, token, registry id) from the launcher's marker in the environment the process started with."""
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        return None, None, None
    token = env.get(TOKEN_MARKER)
    number = int(token) if token and token.isdigit() else None
    return env.get(MARKER), number, env.get(environment.REGISTRY_ID)


def parent_chain(proc: psutil.Process, depth: int = 8) -> list[str]:
    chain = []
    try:
        for parent in proc.parents()[:depth]:
            try:
                chain.append(f"{parent.pid} {parent.name()}")
            except psutil.Error:
                chain.append(f"{parent.pid} ?")
    except psutil.Error:
        pass
    return chain


def cgroup_path(pid: int) -> str:
    """The cgroup to show for a process: its cgroup2 path if it has one below the root, else the memory
    controller's (cgroup v1)."""
    unified = cgroup_of(pid)
    if unified not in (None, "/"):
        return unified or ""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        if ":memory:" in line:
            return line.split(":", 2)[2]
    return lines[0].split(":", 2)[2] if lines else ""


def describe(proc: psutil.Process, *, files: Iterable[str] = (), cwd: str | None = None) -> Evidence:
    """What can be seen of ``proc`` now; raises ``psutil.NoSuchProcess`` when it has gone."""
    marker, token, registry_id = _environ_marker(proc)
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        cmdline = []
    identity = ProcessIdentity.of(proc.pid)
    if identity.uid < 0:
        raise psutil.NoSuchProcess(proc.pid)
    return Evidence(
        pid=proc.pid,
        start_ticks=identity.start_ticks,
        uid=identity.uid,
        cmdline=cmdline,
        parents=parent_chain(proc),
        cgroup=cgroup_path(proc.pid),
        files=sorted(files),
        cwd=cwd,
        marker=marker,
        token=token,
        registry_id=registry_id,
    )


def _other_processes() -> Iterator[psutil.Process]:
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid != me:
            yield proc


def marked_processes() -> list[Evidence]:
    """Every process whose environment carries the run marker (inherited by every descendant of
    ``trainguard run``) or that sits in a run's cgroup - however deeply reparented or detached it is, and
    even when it dropped its environment."""
    found = []
    for proc in _other_processes():
        try:
            marker, _, _ = _environ_marker(proc)
            marked = marker is not None or parse_name(cgroup_of(proc.pid) or "") is not None
            if marked and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(describe(proc))
        except psutil.Error:
            continue
    return found


def _under(path: str, roots: frozenset[str]) -> bool:
    """Is ``path`` one of ``roots`` or inside one? Walks up the path (its depth) instead of comparing with
    every root: a watchdog asks this for every open file of every process against every store."""
    while True:
        if path in roots:
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


def holders_under(
    roots: Iterable[Path], *, ignore: Iterable[Path] = (), resolved: bool = False
) -> list[Evidence]:
    """Processes with a file descriptor or their working directory under any of ``roots``.

    Reads ``/proc/<pid>/fd`` links directly (what ``lsof +D`` does, without stat-ing every file of the
    tree); ``ignore`` lists paths whose holders do not count (the registry database every trainguard
    command opens).
    """
    prefixes = frozenset(str(r) if resolved else os.path.realpath(r) for r in roots)
    ignored = frozenset(str(p) if resolved else os.path.realpath(p) for p in ignore)
    found = []
    for proc in _other_processes():
        pid = proc.pid
        held: set[str] = set()
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("/") and _under(target, prefixes) and not _under(target, ignored):
                    held.add(target)
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue  # gone, or not ours to read
        in_cwd = cwd if _under(cwd, prefixes) else None
        if held or in_cwd:
            try:
                found.append(describe(proc, files=held, cwd=in_cwd))
            except psutil.Error:
                continue
    return found


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


__all__ = [
    "MARKER",
    "TOKEN_MARKER",
    "Evidence",
    "cgroup_path",
    "descendants",
    "describe",
    "holders_under",
    "marked_processes",
    "parent_chain",
]
