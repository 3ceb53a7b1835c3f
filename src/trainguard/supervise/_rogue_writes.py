"""Which of the writes the kernel reported (``_writers``) were made by a process that is not the run's.

A write under a run's store or its launcher's watched folder (``limits.watch_dir``: the unmodified
trainer's own checkpoint folder) is the run's when its writer is one of the run's processes: registered for
the live lease (or below one in the process tree), or carrying the run's marker for the live token, or in
the run's cgroup. Anything else - a second copy of the trainer, started by hand or by a container's restart
policy - is named, by pid, with its command line and container.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainguard.names import META_DIRECTORY
from trainguard.registry import Registry, RunRecord
from trainguard.supervise._snapshot import Snapshot
from trainguard.supervise._writers import Write, WriteMonitor
from trainguard.supervise.scan import owners


@dataclass(frozen=True)
class ForeignWrite:
    run: str | None  # None: under a folder the watchdog was told to watch, that no run claims
    write: Write
    why: str


def watched_folders(snapshot: Snapshot) -> dict[str, str]:
    """Folder -> run, for every run with a store or a watched folder that exists here."""
    folders: dict[str, str] = {}
    for run in snapshot.runs:
        for folder in (run.store, run.limits.get("watch_dir")):
            if isinstance(folder, str) and os.path.isdir(folder):
                folders[os.path.realpath(folder)] = run.name
    return folders


def _run_of(path: str, folders: dict[str, str]) -> str | None:
    best = max((f for f in folders if path == f or path.startswith(f + "/")), key=len, default=None)
    return folders[best] if best is not None else None


def foreign_writes(
    registry: Registry, snapshot: Snapshot, writes: list[Write], extra: list[Path]
) -> list[ForeignWrite]:
    """The writes not made by the run they belong to (one per writer and run), and writes under ``extra``
    folders that no run claims."""
    folders = watched_folders(snapshot)
    loose = [os.path.realpath(f) for f in extra]
    found: dict[tuple[str | None, int | None, str], ForeignWrite] = {}
    for write in writes:
        if f"/{META_DIRECTORY}/" in write.path:
            continue  # trainguard's own registry and run files: every trainguard command may write them
        run = _run_of(write.path, folders)
        if run is None and not any(write.path.startswith(f.rstrip("/") + "/") for f in loose):
            continue
        if write.how != "fanotify":
            key = (run, None, write.path)
            names = ", ".join(f"pid {c.pid}" for c in write.candidates) or "nobody holds files there now"
            found.setdefault(
                key,
                ForeignWrite(
                    run,
                    write,
                    f"{write.path} was written; the writer cannot be named by inotify (candidates: {names})",
                ),
            )
            continue
        if run is not None and _is_the_runs(registry, snapshot, run, write):
            continue
        who = f"pid {write.pid}"
        if write.writer is not None:
            who += f" ({' '.join(write.writer.cmdline)[:120]})"
            if write.writer.container:
                who += f" in container {write.writer.container}"
        where = f"run {run!r}'s" if run else "a watched"
        found.setdefault(
            (run, write.pid, ""),
            ForeignWrite(run, write, f"{who} wrote {write.path} in {where} folder without the run's lease"),
        )
    return list(found.values())


def _is_the_runs(registry: Registry, snapshot: Snapshot, run: str, write: Write) -> bool:
    """Whether the writer was one of the run's processes for its newest lease - judged by what was seen of
    it when it wrote (it may have exited since: a trainer's last save)."""
    _, allowed = owners(snapshot, run)
    if write.pid in allowed:
        return True
    lease = snapshot.leases.get(run)
    writer = write.writer
    if writer is None or lease is None:
        return False
    if writer.run_mark(registry.registry_id) == (run, lease.token):
        return True  # a launcher's child (by its marker or cgroup), alive or not
    if (lease.holder_pid, lease.holder_start_ticks) == (writer.pid, writer.start_ticks):
        return True  # the holder itself (``ckpt adopt``), that may have released and exited since
    return any(
        p.pid == writer.pid and p.start_ticks == writer.start_ticks
        for p in registry.processes(run, token=lease.token, include_ended=True)
    )  # a Guard that registered, saved and exited between two reads


def watch_writers(
    registry: Registry,
    runs: list[RunRecord],
    extra: list[Path],
    seconds: float,
    say: Callable[[str], None] = lambda line: None,
) -> list[ForeignWrite]:
    """Watch the runs' folders (and ``extra``) for ``seconds`` and return the writes their runs did not
    make (``incident scan --watch``); ``say`` hears what is watched and how."""
    folders = sorted(
        {*watched_folders(Snapshot.take(registry, runs=runs)), *(str(d.resolve()) for d in extra)}
    )
    monitor = WriteMonitor([Path(f) for f in folders])
    try:
        say(f"watching {len(folders)} folder(s) for {seconds:g}s ({monitor.how})")
        if monitor.limitation:
            say(f"note: {monitor.limitation}")
        time.sleep(seconds)  # the monitor's reader identifies each writer as its event arrives
        return foreign_writes(registry, Snapshot.take(registry, runs=runs), monitor.drain(), extra)
    finally:
        monitor.close()


__all__ = ["ForeignWrite", "foreign_writes", "watch_writers", "watched_folders"]
