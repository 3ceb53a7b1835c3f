"""A registry client cannot make the watchdog (which may run as root) signal someone else's process: rows name
processes, but only the kernel's view - the run's marker, its cgroup, files under its store, the uid that owns
the store - decides what may be signalled."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from support import helper_command, run_cli, spawned, wait_until
from trainguard import CheckpointStore
from trainguard.registry import EventKind, ProcessIdentity, ProcessRole

NOBODY = 65534
pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watchdog needs Linux"),
    pytest.mark.skipif(os.geteuid() != 0, reason="starting a process of another uid needs root"),
]


@contextmanager
def _victim() -> Iterator[subprocess.Popen[str]]:
    """A process of another user (nobody), sleeping: what the watchdog must never touch."""
    with spawned(["/bin/sleep", "120"], user=NOBODY, cwd="/") as proc:
        wait_until(lambda: psutil.Process(proc.pid).uids().real == NOBODY, what="the victim to start")
        yield proc


def _identity(pid: int) -> dict[str, object]:
    """How a row names a process (with both spellings of its start: wall-clock seconds and boot ticks)."""
    who = ProcessIdentity.of(pid)
    return {**who.as_dict(), "start_time": psutil.Process(pid).create_time()}


def _watchdog_once(store: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("watchdog", "--once", "--store", str(store), "--grace", "0.5s", timeout=120)


def test_a_forged_refused_commit_does_not_get_another_users_process_killed(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with _victim() as victim, CheckpointStore(store, run="attacker") as checkpoints:
        registry = checkpoints.registry
        registry.set_limits(
            "attacker", {"rogue_action": "kill", "grace": 0.5}, reason="the attacker's own run"
        )
        forged = {**_identity(victim.pid), "staging": "ep00000001-t1.forged"}
        registry.add_event(
            "attacker",
            EventKind.COMMIT_REFUSED,
            token=1,
            checkpoint="ep00000001-t1",
            reason="stale fencing token 1: forged",
            detail={"episode": 1, "writer": forged, "fenced": True},
        )
        sweep = _watchdog_once(store)
        assert sweep.returncode == 0, sweep.stderr
        # A sweep's kill ladder returns only once its targets are verified gone: the victim would be dead.
        assert victim.poll() is None, "the watchdog killed another user's process on a forged row"
        kinds = [e.kind for e in registry.events("attacker")]
        assert EventKind.WATCHDOG_STOPPED not in kinds


def test_a_forged_registration_does_not_get_another_users_process_killed(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with _victim() as victim, CheckpointStore(store, run="attacker") as checkpoints:
        registry = checkpoints.registry
        registry.set_limits("attacker", {"max_episodes": 5, "grace": 0.5}, reason="the attacker's own run")
        registry.charge("attacker", episodes=10)  # over budget: the watchdog will want to stop the run
        # The attacker's lease, taken by a process that is gone by now...
        url = f"sqlite:///{store / '.trainguard' / 'registry.db'}"
        acquire = helper_command("acquire_and_exit.py", url, "attacker")
        acquired = subprocess.run(acquire, capture_output=True, text=True, timeout=60, check=True)
        token = int(acquired.stdout)
        # ...and a registration naming the victim as the run's child, alive.
        registry.register_process("attacker", token, ProcessRole.CHILD, ProcessIdentity.of(victim.pid))
        sweep = _watchdog_once(store)
        assert sweep.returncode == 0, sweep.stderr
        assert "attacker: episodes" in sweep.stderr  # it did judge the run over budget and act on it...
        assert victim.poll() is None, "the watchdog killed another user's process on a forged registration"
