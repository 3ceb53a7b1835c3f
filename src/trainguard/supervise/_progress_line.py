"""The launcher's live status line on a terminal: episodes / budget, runtime / budget, last checkpoint."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.live import Live
from rich.text import Text

from trainguard.config.units import format_duration
from trainguard.registry import Registry


class ProgressLine:
    """Shown only when stderr is a terminal (never in logs or CI); the child writes to the same terminal,
    so the line is redrawn below its output rather than owning the screen."""

    def __init__(self, run: str, enabled: bool | None = None) -> None:
        self.run = run
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._live: Live | None = None

    def __enter__(self) -> ProgressLine:
        if self.enabled:
            self._live = Live(Text(""), console=Console(stderr=True), transient=True, auto_refresh=False)
            self._live.start()
        return self

    def update(self, registry: Registry) -> None:
        if self._live is None:
            return
        info = registry.run_info(self.run)
        if info is None:
            return
        limits = info.limits
        committed = registry.checkpoints(self.run)
        episodes = f"{info.episodes_spent}/{limits.get('max_episodes', '-')}"
        limit = limits.get("max_runtime")
        runtime = f"{format_duration(info.runtime_spent)}/{format_duration(limit) if limit else '-'}"
        last = committed[-1].name if committed else "-"
        self._live.update(
            Text(f"trainguard {self.run}  episodes {episodes}  runtime {runtime}  last {last}", style="bold"),
            refresh=True,
        )

    def __exit__(self, *_exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


__all__ = ["ProgressLine"]
