"""The launcher's status: a live line on a terminal, a plain line now and then in a log (episodes / budget,
runtime / budget, last checkpoint)."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.live import Live
from rich.text import Text

from trainguard.config.units import format_duration
from trainguard.registry import Registry

# In a log (journald, CI, `make demo | tee`), a line this often: minutes of silence read as a hang.
LOG_EVERY = 15.0


class ProgressLine:
    """On a terminal, a live line redrawn below the child's output (the child writes to the same terminal,
    so it must not own the screen). Elsewhere, unless disabled (``--no-progress``), the same facts as a
    plain line every ``LOG_EVERY`` seconds."""

    def __init__(self, run: str, enabled: bool | None = None, *, every: float = LOG_EVERY) -> None:
        self.run = run
        terminal = sys.stderr.isatty()
        self.enabled = terminal if enabled is None else enabled
        self.plain = enabled is None and not terminal  # logs get plain lines; --no-progress gets none
        self.every = every
        self._next_plain = time.monotonic() + every
        self._live: Live | None = None

    def __enter__(self) -> ProgressLine:
        if self.enabled:
            self._live = Live(Text(""), console=Console(stderr=True), transient=True, auto_refresh=False)
            self._live.start()
        return self

    def update(self, registry: Registry) -> None:
        plain_due = self.plain and time.monotonic() >= self._next_plain
        if self._live is None and not plain_due:
            return
        info = registry.run_info(self.run)
        if info is None:
            return
        limits = info.limits
        committed = registry.checkpoints(self.run)
        episodes = f"{info.episodes_spent}/{limits.get('max_episodes', '-')}"
        if "max_steps" in limits:
            episodes += f"  steps {info.steps_spent}/{limits['max_steps']}"
        limit = limits.get("max_runtime")
        runtime = f"{format_duration(info.runtime_spent)}/{format_duration(limit) if limit else '-'}"
        last = committed[-1].name if committed else "-"
        line = f"trainguard {self.run}  episodes {episodes}  runtime {runtime}  last {last}"
        if self._live is not None:
            self._live.update(Text(line, style="bold"), refresh=True)
        else:
            self._next_plain = time.monotonic() + self.every
            sys.stderr.write(f"{line}\n")
            sys.stderr.flush()

    def __exit__(self, *_exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


__all__ = ["ProgressLine"]
