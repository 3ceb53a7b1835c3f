"""Being a parent (and a subreaper): reaping every exited child without stealing anyone's status, and
signalling the child's process group."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

POLL = 0.05


def exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def reap_children(child_pid: int | None) -> int | None:
    """Reap every exited child - as a subreaper we inherit orphaned descendants and must not leave them as
    zombies - and return the exit code of ``child_pid`` if it is among them."""
    found = None
    while True:
        try:
            # WNOWAIT first: peek at who exited without consuming the status of anyone else's wait.
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return found
        if info is None:
            return found
        _, status = os.waitpid(info.si_pid, 0)
        if info.si_pid == child_pid:
            found = exit_code(status)


def wait_reaped(child: subprocess.Popen[bytes]) -> int | None:
    """The exit code of a child the ladder has stopped (it is a zombie by now, or nearly)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        code = reap_children(child.pid)
        if code is not None:
            child.returncode = code
            return code
        time.sleep(POLL)
    return None


def signal_group(pgid: int, signum: int) -> None:
    # The child leads its own session and group (we created it, and it has not been reaped: its pid, and so
    # its group id, cannot have been reused).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


__all__ = ["exit_code", "reap_children", "signal_group", "wait_reaped"]
