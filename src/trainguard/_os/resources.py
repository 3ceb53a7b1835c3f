"""Resource readings the budgets are judged by: resident memory of a process tree, bytes under a directory.

Read by the Guard's monitor thread, the launcher and the watchdog alike, so a memory or disk limit means
the same number wherever it is enforced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil


def _tree(pids: tuple[int | None, ...]) -> list[psutil.Process]:
    """The processes (default: this one) and all their descendants, each once."""
    processes: dict[int, psutil.Process] = {}
    for pid in pids or (None,):
        try:
            root = psutil.Process(pid)
            for process in (root, *root.children(recursive=True)):
                processes.setdefault(process.pid, process)
        except psutil.Error:
            continue
    return list(processes.values())


@dataclass(frozen=True)
class TreeUsage:
    rss: int  # resident bytes, each process counted once
    cpu_seconds: float  # user + system, plus what their reaped children used


def tree_usage(*pids: int | None) -> TreeUsage:
    """Memory and CPU of a process tree from one walk of it (the Guard and the launcher sample both).
    Reaped children's CPU is included, so a worker that exits does not take its CPU with it."""
    rss, cpu = 0, 0.0
    for process in _tree(pids):
        try:
            with process.oneshot():
                rss += process.memory_info().rss
                times = process.cpu_times()
        except psutil.Error:
            continue  # exited between listing and reading
        cpu += times.user + times.system + times.children_user + times.children_system
    return TreeUsage(rss, cpu)


def tree_rss(*pids: int | None) -> int:
    """Resident memory of the processes (default: this one) and all their descendants, each counted once."""
    return tree_usage(*pids).rss


def tree_bytes(root: Path) -> int:
    """Bytes of every file under ``root`` (the store, quarantine and registry included); symlinks are not
    followed, so a link cannot make another directory count against the store."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue  # removed while walking (eviction, trash)
        except OSError:
            continue
    return total


__all__ = ["TreeUsage", "tree_bytes", "tree_rss", "tree_usage"]
