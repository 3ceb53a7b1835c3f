"""The PID file and heartbeat file the incident report asks for, for humans and old scripts.

Written atomically (temp file + rename, so a reader never sees half a file) under ``<store>/.trainguard/``.
Nothing in trainguard trusts them: the registry and (pid, start time) identify a process, because a PID
file outlives its process and PIDs are reused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainguard._os.files import HeldFile, write_atomically


class RunFiles:
    def __init__(self, directory: Path, run: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.pid_file = directory / f"{run}.pid"
        self.heartbeat_file = directory / f"{run}_heartbeat.json"
        self._pid: HeldFile | None = None

    def write_pid(self) -> None:
        # Held open while the Guard runs: the watchdog's proof that this process belongs to the run.
        self._pid = HeldFile(self.pid_file, f"{os.getpid()}\n")

    def write_heartbeat(self, body: dict[str, Any]) -> None:
        text = json.dumps(body, indent=2, sort_keys=True, default=str) + "\n"
        write_atomically(self.heartbeat_file, text, durable=False)  # rewritten every beat

    def remove(self) -> None:
        # Only our own files: another process of the run may have replaced them after a takeover.
        if self._pid is not None:
            self._pid.remove(if_text=f"{os.getpid()}\n")
        try:
            if json.loads(self.heartbeat_file.read_text()).get("pid") == os.getpid():
                self.heartbeat_file.unlink()
        except (FileNotFoundError, ValueError):
            pass


__all__ = ["RunFiles"]
