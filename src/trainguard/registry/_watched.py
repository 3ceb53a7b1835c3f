"""An unmodified trainer's checkpoint files as budget spend (``trainguard run --watch-pattern``).

A trainer that knows nothing of trainguard says how far it got only through the files it writes
(``checkpoint_ep000300.pth``, ``model_20000_steps.zip``). Each file is charged once, by identity (path,
inode, size, content hash), in the registry - so spend is cumulative over every start, and a file left from
an earlier start is never charged again. What a file adds is the work since the nearest lower count already
seen (``number`` minus the largest recorded number below it, or all of it): right for a trainer that resumes
its count and for one that starts again from zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update

from trainguard.registry import _schema as t
from trainguard.registry._core import RegistryCore
from trainguard.registry._states import EventKind

COUNTS = ("episodes", "steps")


@dataclass(frozen=True)
class WatchedFile:
    path: str
    inode: int
    size: int
    digest: str
    number: int


class WatchedFileOps(RegistryCore):
    def watched_files(self, run: str) -> int:
        """How many files of ``run`` are recorded (0: a first start)."""
        with self._reading() as conn:
            found = conn.execute(select(func.count()).where(t.watched_files.c.run == run)).scalar_one()
        return int(found)

    def record_watched_file(self, run: str, file: WatchedFile, *, kind: str, charge: bool = True) -> int:
        """Record ``file`` and charge the run for it (``charge=False``: it predates the run); returns what it
        added to the spend - 0 for a file already recorded."""
        if kind not in COUNTS:
            raise ValueError(f"kind {kind!r} is not one of {COUNTS}")
        c = t.watched_files.c
        with self._transaction() as conn:
            self._lock_run(conn, run)
            known = conn.execute(
                select(c.id).where(
                    c.run == run, c.path == file.path, c.inode == file.inode, c.size == file.size,
                    c.digest == file.digest,
                )
            ).first()  # fmt: skip
            if known is not None:
                return 0
            below = conn.execute(
                select(func.max(c.number)).where(c.run == run, c.kind == kind, c.number < file.number)
            ).scalar()
            added = file.number - int(below or 0) if charge else 0
            conn.execute(
                insert(t.watched_files).values(
                    run=run, path=file.path, inode=file.inode, size=file.size, digest=file.digest,
                    number=file.number, kind=kind, charged=added, seen_at=time.time(),
                )
            )  # fmt: skip
            if added:
                column = t.runs.c.episodes_spent if kind == "episodes" else t.runs.c.steps_spent
                conn.execute(update(t.runs).where(t.runs.c.name == run).values({column: column + added}))
            self._record_event(
                conn,
                run,
                EventKind.WATCHED_FILE,
                detail={"path": file.path, "number": file.number, "kind": kind, "charged": added},
            )
        return added


__all__ = ["COUNTS", "WatchedFile", "WatchedFileOps"]
