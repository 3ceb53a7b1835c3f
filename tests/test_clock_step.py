"""A wall-clock step (NTP, a changed date) changes nobody's identity and makes no heartbeat stale: process
identity is (boot, pid, start ticks since boot) and ages are judged in the registry's clock."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from guard_support import worker, write_config
from support import spawned
from trainguard import LeaseHeld, Registry
from trainguard.supervise import Watchdog

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc identities")

STEP = 3600.0  # the wall clock jumps an hour ahead


def _read_until(proc: subprocess.Popen[str], prefix: str) -> None:
    assert proc.stdout is not None
    while not (line := proc.stdout.readline()).startswith(prefix):
        assert line, f"the worker ended before printing {prefix!r}"


def test_a_wall_clock_step_kills_nothing_and_steals_no_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, "stepped")
    url = f"sqlite:///{tmp_path / 'store' / '.trainguard' / 'registry.db'}"
    with spawned(worker(config, "--episode-seconds", "0.3"), stdout=subprocess.PIPE) as guarded:
        _read_until(guarded, "episode 2")
        with Registry.open(url) as registry:
            assert Watchdog(registry, interval=1).sweep().findings == []  # healthy before the step
            # The step, as this process sees it: the wall clock, and the boot time the kernel reports
            # (derived from the wall clock) that psutil adds to every start time.
            real_time, real_boot_time = time.time, psutil._pslinux.boot_time
            monkeypatch.setattr(time, "time", lambda: real_time() + STEP)
            monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: real_boot_time() + STEP)
            report = Watchdog(registry, interval=1, grace=0.2).sweep()
            assert report.findings == [], [(f.reason, f.detail) for f in report.findings]
            with pytest.raises(LeaseHeld):  # the holder is alive: its lease is not up for grabs
                registry.acquire("stepped", ttl=3)
            lease = registry.lease_info("stepped")
            assert lease is not None and lease.live
        assert guarded.poll() is None  # still training
