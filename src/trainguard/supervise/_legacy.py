"""What the launcher knows of a run whose script has no Guard (yet): the checkpoint files it writes.

Until a Guard inside the child registers, the launcher keeps the run's accounting itself; for an unmodified
script the only progress it can see is the files matching ``--watch-pattern`` in ``--watch-dir``. Each file
is charged once, by identity, once it has stopped changing (``Registry.record_watched_file``): a file still
being written is looked at again at the next scan.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainguard._os.hashing import hash_file
from trainguard.budget import Budget
from trainguard.guard import Stop, StopReason
from trainguard.names import CountPattern
from trainguard.registry import Registry, WatchedFile

# (name, inode, size, mtime) as stat sees it: equal in two scans = the trainer has finished writing it.
_Seen = tuple[str, int, int, int]


@dataclass
class FileWatch:
    """New, complete checkpoint files of one directory."""

    directory: Path
    pattern: CountPattern
    started: float = field(default_factory=time.monotonic)
    highest: int | None = None  # the largest count seen in a file name
    last_new_file: float | None = None  # wall time the newest matching file was written
    matched_any: bool = False
    _pending: dict[str, _Seen] = field(default_factory=dict)
    _done: set[_Seen] = field(default_factory=set)

    def scan(self, *, settled: bool = False) -> list[WatchedFile]:
        """Files that are new and no longer changing (``settled``: take every file as complete - at start,
        before the trainer runs)."""
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return []
        found = []
        for entry in entries:
            number = self.pattern.count(entry.name)
            if number is None:
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            self.matched_any = True
            seen = (entry.name, stat.st_ino, stat.st_size, stat.st_mtime_ns)
            self.highest = number if self.highest is None else max(self.highest, number)
            self.last_new_file = max(self.last_new_file or 0.0, stat.st_mtime)
            if seen in self._done:
                continue
            if not settled and self._pending.get(entry.name) != seen:
                self._pending[entry.name] = seen  # look again once it has stopped changing
                continue
            if (file := self._identify(Path(entry.path), seen, number)) is not None:
                self._done.add(seen)
                self._pending.pop(entry.name, None)
                found.append(file)
        return found

    def _identify(self, path: Path, seen: _Seen, number: int) -> WatchedFile | None:
        try:
            _, digest = hash_file(path)
            after = path.stat()
        except OSError:
            return None
        if (after.st_ino, after.st_size, after.st_mtime_ns) != seen[1:]:
            return None  # written to while it was hashed: next scan
        return WatchedFile(str(path), seen[1], seen[2], digest, number)


class FileAccounting:
    """The watched files of one run, charged to its budget in the registry once each (the launcher's part
    while no Guard accounts for the run)."""

    def __init__(self, registry: Registry, run: str, watch: FileWatch) -> None:
        self.registry, self.run, self.watch = registry, run, watch
        self.used: int | None = None  # the run's spend in the counted budget, as last read

    def account_existing(self) -> str:
        """Before the child starts: a first start records the files already there as predating the run
        (not charged); a later one charges what appeared since the last (written while nothing watched).
        Returns a line saying which."""
        first = self.registry.watched_files(self.run) == 0
        files = self.watch.scan(settled=True)
        added = sum(
            self.registry.record_watched_file(self.run, f, kind=self.watch.pattern.counts, charge=not first)
            for f in files
        )
        where = f"{self.watch.directory} for {self.watch.pattern.regex.pattern!r}"
        if first and files:
            return f"watching {where}: {len(files)} file(s) already there predate the run (not charged)"
        if added:
            return f"watching {where}: {added} {self.watch.pattern.counts} charged for files written since"
        return f"watching {where} (counting {self.watch.pattern.counts})"

    def poll(self, *, charge: bool, settled: bool = False) -> int:
        """Record files that appeared and stopped changing (``settled``: every file, the trainer has exited);
        what they added to the spend."""
        kind = self.watch.pattern.counts
        return sum(
            self.registry.record_watched_file(self.run, f, kind=kind, charge=charge)
            for f in self.watch.scan(settled=settled)
        )

    def over_budget(self, limits: dict[str, object]) -> Stop | None:
        """The stop when the run's spend in the counted budget has reached its limit."""
        budget = Budget(self.watch.pattern.counts)
        limit = limits.get(budget.limit_key)
        record = self.registry.run(self.run)
        used = record.episodes_spent if budget is Budget.EPISODES else record.steps_spent
        self.used = used
        if not isinstance(limit, int | float) or used < limit:
            return None
        reason = StopReason.EPISODES if budget is Budget.EPISODES else StopReason.STEPS
        return Stop(reason, f"{used} of {limit:g} {budget.value} spent (newest file: {self.watch.highest})")


@dataclass
class LegacyProgress:
    beat_every: float
    files: FileAccounting | None = None
    legacy: bool = True  # no Guard has registered inside the child (yet)
    warned_empty: bool = False

    @property
    def seen(self) -> int | None:
        return self.files.watch.highest if self.files else None

    @property
    def last_new_file(self) -> float | None:
        return self.files.watch.last_new_file if self.files else None


__all__ = ["FileAccounting", "FileWatch", "LegacyProgress"]
