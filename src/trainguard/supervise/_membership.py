"""Before anything is signalled for a run: does the kernel agree that the process belongs to it?

Registry rows name processes (registrations, a refused commit's writer, a lease holder), but any registry
client can write rows - and the watchdog may run as root. So a row only says *which* process to look at;
whether it may be signalled is decided from the kernel's side (docs/design.md, "The watchdog"):

- it runs as the uid that owns the run's store (a store bound to this registry), and
- it carries a mark of the run: the launcher's environment marker for this run *and this registry*, the
  run's cgroup (``trainguard.<run>.t<token>``), an open file under the run's store (a writer; the run files a
  Guard and a launcher hold open count, the shared registry database does not), a refused commit's staging
  directory kept in the store's quarantine that names it (pid and start ticks) and was made by its uid, or an
  entry in the record of descendants the launcher keeps in the store when it has no cgroup. Everything but
  the environment and the cgroup is in the store: a registry client cannot make it.

A descendant of a process that passed (found through the kernel's process tree) needs only the uid.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import psutil

from trainguard._os import environment
from trainguard._os.identity import process_start_ticks, process_uid
from trainguard.checkpoints import bound_to
from trainguard.checkpoints.layout import StagingName, quarantine_root
from trainguard.names import registry_files
from trainguard.supervise import _descendants
from trainguard.supervise._cgroup import cgroup_of, parse_name
from trainguard.supervise.ladder import Target

_QUARANTINE_COPY = re.compile(r"\.\d+$")  # free_entry's suffix when the same name was set aside before


@dataclass(frozen=True)
class Membership:
    run: str
    store: Path | None
    registry_id: str

    @functools.cached_property
    def bound_store(self) -> Path | None:
        """The run's store, if it exists here and belongs to this registry (else its files prove nothing)."""
        if self.store is None:
            return None
        root = Path(os.path.realpath(self.store))
        return root if root.is_dir() and bound_to(root, self.registry_id) else None

    @functools.cached_property
    def owner_uid(self) -> int | None:
        """Whose run this is, by the kernel: the owner of its store."""
        store = self.bound_store
        return os.stat(store).st_uid if store is not None else None

    def mark(self, pid: int) -> str | None:
        """How the kernel shows ``pid`` belongs to the run; None when it does not."""
        for check in (self._by_environment, self._by_cgroup, self._by_store):
            if (why := check(pid)) is not None:
                return why
        return None

    def _by_environment(self, pid: int) -> str | None:
        try:
            env = psutil.Process(pid).environ()
        except (psutil.Error, OSError):
            return None
        if env.get(environment.RUN_ID) == self.run and env.get(environment.REGISTRY_ID) == self.registry_id:
            return "its environment carries the run's marker"
        return None

    def _by_cgroup(self, pid: int) -> str | None:
        named = parse_name(cgroup_of(pid) or "")
        if named is not None and named[0] == self.run:
            return f"it is in the run's cgroup (token {named[1]})"
        return None

    def _by_store(self, pid: int) -> str | None:
        store = self.bound_store
        if store is None:
            return None
        if _holds_under(pid, store):
            return "it holds files under the run's store"
        ticks = process_start_ticks(pid)
        if _named_by_quarantine(store, pid, ticks):
            return "a refused commit it staged is kept in the store's quarantine"
        for owner, listed in _descendants.recorded(store, self.run).values():
            if (pid, ticks) in listed and owner == self.owner_uid:
                return "the run's launcher recorded it as a descendant"
        return None

    def refusal(self, target: Target) -> str | None:
        """Why ``target`` must not be signalled for this run; None when it may."""
        expected = self.owner_uid
        if expected is None:
            return "the run's store is not here or belongs to another registry: whose process is this?"
        uid = process_uid(target.pid)
        if uid != expected:
            return f"it runs as uid {uid}; the run's store belongs to uid {expected}"
        if target.role == "descendant":
            return None  # found below a verified target in the kernel's process tree
        if self.mark(target.pid) is None:
            return f"nothing marks it as run {self.run!r}'s (environment, cgroup, files under the store)"
        return None


def _named_by_quarantine(store: Path, pid: int, ticks: int | None) -> bool:
    """Does a staging directory set aside in quarantine (a refused commit) name this process, and was it made
    by the uid the process runs as?"""
    uid = process_uid(pid)
    try:
        entries = list(os.scandir(quarantine_root(store)))
    except OSError:
        return False
    for entry in entries:
        parsed = StagingName.parse(_QUARANTINE_COPY.sub("", entry.name))
        if parsed is None or (parsed.pid, parsed.start_ticks) != (pid, ticks):
            continue
        try:
            if entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == uid:
                return True
        except OSError:
            continue
    return False


def _holds_under(pid: int, store: Path) -> bool:
    prefix = os.fspath(store) + os.sep
    ignored = {os.fspath(path) for path in registry_files(store)}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(prefix) and target not in ignored:
            return True
    return False


__all__ = ["Membership"]
