"""The Linux process controls the launcher relies on, with one clear line where they do not exist."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from collections.abc import Callable

from trainguard._os.libc import libc
from trainguard.errors import NotSupported

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
IS_LINUX = sys.platform.startswith("linux")


def _prctl(option: int, value: int) -> None:
    if libc().prctl(option, value, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def require_linux(feature: str) -> None:
    if not IS_LINUX:
        raise NotSupported(
            feature,
            sys.platform,
            "it needs Linux (prctl, /proc); run the trainer under a Guard and rely on its lease for fencing",
        )


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to us instead of init, so we can see and reap them."""
    require_linux("trainguard run")
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def child_setup(
    parent_pid: int, rlimits: dict[int, int], join: Callable[[], None] | None = None
) -> Callable[[], None]:
    """What runs in the child between fork and exec: join the run's cgroup, die with the launcher, apply
    rlimits."""

    def setup() -> None:
        if join is not None:
            join()
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # The launcher may have died between fork and prctl: then the death signal would never come.
        if os.getppid() != parent_pid:
            os._exit(137)
        for limit, value in rlimits.items():
            resource.setrlimit(limit, (value, value))

    return setup


__all__ = ["IS_LINUX", "become_subreaper", "child_setup", "require_linux"]
