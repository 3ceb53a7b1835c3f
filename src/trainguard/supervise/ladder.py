"""The kill ladder: SIGTERM -> grace -> SIGKILL -> verify gone, signalling only processes whose identity
(pid *and* start time) is verified.

Each target is pinned with a pidfd before its start time is checked (Linux >= 5.3): once the descriptor is
open, the pid cannot be recycled under it, so the process that passed the check is the one that gets the
signal - the race psutil's ``_get_ident`` narrows and pidfds close. Elsewhere psutil's own identity check
(``send_signal`` refuses a process whose create time changed) is the fallback. A pidfd also becomes
readable when its process exits, which is how "verify gone" waits without polling.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from trainguard._os.identity import is_same_process_alive, process_start_ticks

_VERIFY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Target:
    pid: int
    start_ticks: int | None  # since boot: with the pid, the identity (None: unknown, never signalled)
    role: str = ""
    uid: int | None = None  # the uid it must run as (checked before signalling, see _verify)


@dataclass
class LadderResult:
    signals: list[tuple[int, str]] = field(default_factory=list)  # (pid, "SIGTERM" | "SIGKILL")
    skipped: list[tuple[int, str]] = field(default_factory=list)  # never signalled, and why
    exited_after_term: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)
    first_signal_at: float | None = None  # wall clock
    term_to_gone: float | None = None  # seconds from the first SIGTERM until every target was gone
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "signals": self.signals,
            "skipped": self.skipped,
            "exited_after_term": self.exited_after_term,
            "killed": self.killed,
            "survivors": self.survivors,
            "first_signal_at": self.first_signal_at,
            "term_to_gone": self.term_to_gone,
            "dry_run": self.dry_run,
        }


class _Pinned:
    """One verified process: a pidfd where the kernel has them, else a psutil handle."""

    def __init__(self, target: Target, fd: int | None, proc: psutil.Process | None) -> None:
        self.target = target
        self.fd = fd
        self.proc = proc

    def send(self, signum: int) -> bool:
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, signum)
            elif self.proc is not None:
                self.proc.send_signal(signum)  # psutil re-checks the create time first
        except (ProcessLookupError, psutil.NoSuchProcess):
            return False
        return True

    def gone(self) -> bool:
        if self.fd is not None:
            readable, _, _ = select.select([self.fd], [], [], 0)
            return bool(readable)
        return not is_same_process_alive(self.target.pid, self.target.start_ticks)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _pin(target: Target) -> tuple[_Pinned | None, str]:
    fd = None
    if hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(target.pid)
        except ProcessLookupError:
            return None, "already gone"
        except OSError:
            fd = None
    started = process_start_ticks(target.pid)
    why = ""
    if started is None:
        why = "already gone"
    elif started != target.start_ticks:
        why = f"pid {target.pid} is now a process started at tick {started}, not {target.start_ticks}"
    elif not is_same_process_alive(target.pid, started):
        why = "already gone (zombie)"
    if why:
        if fd is not None:
            os.close(fd)
        return None, why
    try:
        proc = None if fd is not None else psutil.Process(target.pid)
    except psutil.Error:
        return None, "already gone"
    return _Pinned(target, fd, proc), ""


def expand(targets: list[Target]) -> list[Target]:
    """The targets plus every live descendant of each (grandchildren a setsid may have moved to another
    group are still descendants while their parent lives)."""
    seen = {t.pid for t in targets}
    result = list(targets)
    for target in targets:
        if not is_same_process_alive(target.pid, target.start_ticks):
            continue
        try:
            children = psutil.Process(target.pid).children(recursive=True)
        except psutil.Error:
            continue
        for child in children:
            if child.pid in seen:
                continue
            started = process_start_ticks(child.pid)
            if started is not None:
                result.append(Target(child.pid, started, "descendant", target.uid))
                seen.add(child.pid)
    return result


def _pin_all(
    targets: list[Target], allow: Callable[[Target], str | None] | None, result: LadderResult
) -> list[_Pinned]:
    """Pin each target that is still the process it names and that ``allow`` lets through; the others go
    to ``result.skipped`` with the reason."""
    pinned = []
    for target in targets:
        handle, why = _pin(target)
        if handle is not None and allow is not None and (refused := allow(target)) is not None:
            handle.close()
            handle, why = None, refused
        if handle is None:
            result.skipped.append((target.pid, why))
        else:
            pinned.append(handle)
    return pinned


def _wait_gone(pinned: list[_Pinned], timeout: float) -> list[_Pinned]:
    deadline = time.monotonic() + timeout
    remaining = [p for p in pinned if not p.gone()]
    while remaining and time.monotonic() < deadline:
        fds = [p.fd for p in remaining if p.fd is not None]
        wait = min(0.05, max(0.0, deadline - time.monotonic()))
        if fds and len(fds) == len(remaining):
            select.select(fds, [], [], wait)
        else:
            time.sleep(wait)
        remaining = [p for p in remaining if not p.gone()]
    return remaining


def run_ladder(
    targets: list[Target],
    *,
    grace: float,
    dry_run: bool = False,
    descendants: bool = True,
    allow: Callable[[Target], str | None] | None = None,
    first: int = signal.SIGTERM,
) -> LadderResult:
    """SIGTERM (or ``first``) every verified target, wait up to ``grace``, SIGKILL what is left, verify all
    are gone.

    ``allow`` says why a target (or a descendant found below one) must not be signalled, or None: what it
    refuses is never expanded or signalled, only reported in ``skipped``.
    """
    result = LadderResult(dry_run=dry_run)
    # Who it is first (pid and start ticks, pinned by a pidfd), then whether it may be signalled.
    pinned = _pin_all(targets, allow, result)
    if descendants:
        seen = {p.target.pid for p in pinned} | {pid for pid, _ in result.skipped}
        below = [t for t in expand([p.target for p in pinned]) if t.pid not in seen]
        pinned += _pin_all(below, allow, result)
    try:
        name = signal.Signals(first).name
        if dry_run:
            result.signals = [(p.target.pid, f"{name} (dry run)") for p in pinned]
            return result
        started = time.monotonic()
        result.first_signal_at = time.time()
        for handle in pinned:
            if handle.send(first):
                result.signals.append((handle.target.pid, name))
        stubborn = _wait_gone(pinned, grace)
        result.exited_after_term = [p.target.pid for p in pinned if p not in stubborn]
        for handle in stubborn:
            if handle.send(signal.SIGKILL):
                result.signals.append((handle.target.pid, "SIGKILL"))
                result.killed.append(handle.target.pid)
        survivors = _wait_gone(stubborn, _VERIFY_TIMEOUT)
        result.survivors = [p.target.pid for p in survivors]
        if not survivors:
            result.term_to_gone = time.monotonic() - started
        return result
    finally:
        for handle in pinned:
            handle.close()


__all__ = ["LadderResult", "Target", "expand", "run_ladder"]
