"""What keeps a launched run's processes findable, whatever they do: the run's cgroup where one can be made,
else a record of the descendants the launcher sees; and the run file the launcher holds open as its own
proof of membership (see ``_membership``). Made before the child, closed after the last leftover is gone."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from trainguard._os.files import HeldFile
from trainguard._os.identity import ProcessIdentity, process_start_ticks
from trainguard.names import meta_directory
from trainguard.supervise import _descendants
from trainguard.supervise._cgroup import RunCgroup
from trainguard.supervise.ladder import Target


class Containment:
    def __init__(self, store: Path, run: str, token: int) -> None:
        self.store = store
        self.run = run
        self.token = token
        meta_directory(store).mkdir(parents=True, exist_ok=True)
        self._held = HeldFile(meta_directory(store) / f"{run}.launcher.pid", f"{os.getpid()}\n")
        self.cgroup = RunCgroup.create(run, token)
        self._recorded: set[tuple[int, int]] = set()

    @property
    def how(self) -> str:
        return f"cgroup {self.cgroup.relative}" if self.cgroup else "a record of descendants in the store"

    def child_hook(self) -> Callable[[], None] | None:
        """Run in the child between fork and exec: join the run's cgroup (None without one)."""
        return self.cgroup.joiner() if self.cgroup else None

    def observe(self) -> None:
        """Without a cgroup: write down every descendant not seen before (as subreaper, orphans of the run are
        re-parented to this process, so they are all below it while it lives)."""
        if self.cgroup is not None:
            return
        new = []
        for process in psutil.Process().children(recursive=True):
            ticks = process_start_ticks(process.pid)
            if ticks is not None and (process.pid, ticks) not in self._recorded:
                self._recorded.add((process.pid, ticks))
                new.append((process.pid, ticks))
        _descendants.record(self.store, self.run, self.token, new)

    def leftovers(self) -> list[Target]:
        """Every process still below the launcher or in the run's cgroup."""
        found: dict[int, Target] = {}
        pids = [p.pid for p in psutil.Process().children(recursive=True)]
        if self.cgroup is not None:
            pids += self.cgroup.pids()
        for pid in pids:
            identity = ProcessIdentity.of(pid)
            if identity.start_ticks and pid != os.getpid():
                found.setdefault(pid, Target(pid, identity.start_ticks, "leftover", identity.uid))
        return list(found.values())

    def close(self) -> None:
        """After the leftovers are gone: remove the cgroup (SIGKILL whatever a ladder could not reach first),
        the record of descendants and the run file."""
        if self.cgroup is not None and not self.cgroup.remove():
            self.cgroup.kill()
            deadline = time.monotonic() + 5.0
            while self.cgroup.pids() and time.monotonic() < deadline:
                time.sleep(0.02)  # SIGKILL is delivered asynchronously; the cgroup empties when they exit
            self.cgroup.remove()
        _descendants.forget(self.store, self.run, self.token)
        self._held.remove(if_text=f"{os.getpid()}\n")


__all__ = ["Containment"]
