"""What the launcher knows of a run whose script has no Guard (yet): the episodes its checkpoint files show.

Until a Guard inside the child registers, the launcher keeps the run's accounting itself; for an unmodified
script the only progress it can see is the files matching ``--watch-pattern``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LegacyProgress:
    beat_every: float
    watch_dir: Path
    seen: int | None = None  # highest episode among watched checkpoint files
    last_new_file: float | None = None
    legacy: bool = True  # no Guard has registered inside the child (yet)


def watched_episodes(directory: Path, pattern: re.Pattern[str]) -> tuple[int | None, float | None]:
    """Highest episode among the checkpoint files a legacy script wrote, and when the newest appeared."""
    best, newest = None, None
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None, None
    for entry in entries:
        match = pattern.search(entry.name)
        if not match:
            continue
        episode = int(match.group("episode"))
        best = episode if best is None else max(best, episode)
        try:
            mtime = entry.stat().st_mtime
        except OSError:
            continue
        newest = mtime if newest is None else max(newest, mtime)
    return best, newest


__all__ = ["LegacyProgress", "watched_episodes"]
