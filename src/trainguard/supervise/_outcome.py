"""How a launched run ended, and the exit status a supervisor can act on.

``trainguard run`` exits 0 only when the training finished by itself. When a guard rule ended it - the
launcher's own budget, memory or lease stop, the Guard inside the child stopping on a budget or a lost
lease, the watchdog - it exits 3 (``ExitCode.REFUSED``), whoever enforced the rule, and says who: a systemd
unit with ``RestartPreventExitStatus=3`` (deploy/) then does not restart a run whose budget is spent.
Otherwise the child's own status passes through (a crash restarts, as it should).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from trainguard.errors import ExitCode
from trainguard.guard import REFUSALS, Stop, StopReason
from trainguard.registry import EventKind, Registry
from trainguard.supervise.ladder import LadderResult

_GUARD_REFUSALS = {reason.value for reason in REFUSALS}


@dataclass
class LaunchResult:
    exit_code: int
    stop: Stop | None  # the guard rule that ended the run (whoever enforced it); None: it ended by itself
    child_status: int | None
    episodes_seen: int | None = None  # the highest count in a watched file name
    ladder: LadderResult | None = None
    stopped_by: str | None = None  # "launcher", "guard" (inside the child), "watchdog", "operator"; or None
    child_end: str = ""  # how the child process ended, in words

    @property
    def reason(self) -> str:
        """The stop's reason, else ``completed`` (the child exited 0) or ``failed``."""
        if self.stop is not None:
            return self.stop.reason.value
        return "completed" if self.child_status == 0 else "failed"


def describe_end(status: int | None, ladder: LadderResult | None, grace: float) -> str:
    """How the child ended: its status, and the signals it was sent."""
    sent = [name for _, name in ladder.signals] if ladder else []
    if status is None:
        return "killed (no status: it was not our child any more)"
    if status < 0 or status > 128:
        number = -status if status < 0 else status - 128
        known = number in signal.valid_signals()
        how = f"killed by {signal.Signals(number).name}" if known else f"status {status}"
        if "SIGKILL" in sent:
            return f"{how} after the {grace:g}s grace ({', '.join(dict.fromkeys(sent))} sent)"
        return how
    after = f" after {sent[0]}" if sent else ""
    return f"exited with status {status}{after}"


def _inside_or_outside(registry: Registry, run: str, token: int) -> tuple[Stop, str] | None:
    """The guard rule that ended this lease's run from elsewhere: the watchdog or an operator revoking the
    lease, or the Guard inside the child stopping on a budget, a ceiling or a lost lease."""
    kinds = [EventKind.LEASE_REVOKED, EventKind.GUARD_STOPPED]
    for event in reversed(registry.events(run, kinds=kinds)):
        if event.token != token:
            continue
        if event.kind == EventKind.LEASE_REVOKED.value:
            why = event.reason or "lease revoked"
            return Stop(StopReason.LEASE_LOST, why), "watchdog" if why.startswith("watchdog") else "operator"
        if event.detail.get("reason") in _GUARD_REFUSALS:
            return Stop(StopReason(event.detail["reason"]), event.reason or ""), "guard"
    return None


def outcome(
    registry: Registry,
    run: str,
    token: int,
    *,
    launcher_stop: Stop | None,
    status: int | None,
    ladder: LadderResult | None,
    grace: float,
    seen: int | None,
) -> LaunchResult:
    """Who ended the run and with which exit status (the registry's events say what happened inside the
    child and from outside it)."""
    stop, stopped_by = launcher_stop, "launcher" if launcher_stop is not None else None
    if stop is None or stop.reason in (StopReason.SIGNAL, StopReason.LEASE_LOST):
        found = _inside_or_outside(registry, run, token)
        if found is not None:
            stop, stopped_by = found
    if stop is not None and stop.reason in REFUSALS:
        code = int(ExitCode.REFUSED)
    elif status is None:
        code = 128 + signal.SIGKILL
    else:
        code = status if status >= 0 else 128 - status
    end = describe_end(status, ladder, grace)
    return LaunchResult(code, stop, status, seen, ladder, stopped_by, end)


__all__ = ["LaunchResult", "describe_end", "outcome"]
