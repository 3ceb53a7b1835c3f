"""Rogue writers are found and stopped; a process whose start time differs is never signalled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from support import helper_command, run_cli, spawned, wait_until
from trainguard import CheckpointStore, Registry
from trainguard.registry import EventKind, LeaseState, ProcessIdentity, ProcessRole
from trainguard.supervise import Target, Violation, Watchdog, is_same_process_alive, run_ladder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc scans need Linux")


def _read_identity(path: Path) -> tuple[int, int]:
    pid, start = path.read_text().split()
    return int(pid), int(start)


def test_detached_rogue_with_a_stale_token_is_refused_named_and_killed(tmp_path: Path) -> None:
    store_dir, pidfile = tmp_path / "store", tmp_path / "rogue.pid"
    url = f"sqlite:///{store_dir / '.trainguard' / 'registry.db'}"
    with CheckpointStore(store_dir, run="swt") as store:
        stale = store.registry.acquire("swt", ttl=60)
        store.save({"w": np.zeros(16, dtype=np.float32)}, episode=13475, lease=stale)
        store.pin("ep00013475-t1", reason="last good")
    rogue: tuple[int, int] | None = None
    try:
        features = tmp_path / "features.yaml"
        features.write_text("window: 48\n")
        # The drill's rogue (examples/swt/rogue.py): returns at once, the writer double-forked away.
        rogue_command = [
            sys.executable,
            "-m",
            "examples.swt.rogue",
            url,
            str(store_dir),
            "swt",
            str(stale.token),
            str(features),
            str(pidfile),
            "60",
        ]
        subprocess.run(rogue_command, check=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
        wait_until(pidfile.exists, timeout=30)
        rogue = _read_identity(pidfile)
        assert psutil.Process(rogue[0]).ppid() != os.getpid()  # not our child any more
        with Registry.open(url) as registry:
            new_holder = registry.acquire("swt", ttl=60, takeover=True, reason="restart after the incident")
            refusals = [EventKind.COMMIT_REFUSED]
            wait_until(lambda: len(registry.events("swt", kinds=refusals)) >= 2, timeout=30)
            refused = registry.events("swt", kinds=refusals)
            assert all(e.token == stale.token and e.detail["writer"]["pid"] == rogue[0] for e in refused)
            assert [r.name for r in registry.checkpoints("swt")] == ["ep00013475-t1"]  # nothing got through

            scan = run_cli("incident", "scan", str(store_dir))
            assert scan.returncode == 1, scan.stderr
            assert f"pid {rogue[0]}" in scan.stdout and "examples.swt.rogue" in scan.stdout
            assert "refused" in scan.stdout
            as_json = json.loads(run_cli("incident", "scan", str(store_dir), "--json").stdout)
            suspect = as_json["stores"][0]["suspects"][0]
            assert (suspect["pid"], suspect["killable"]) == (rogue[0], True)
            assert suspect["start_ticks"] == rogue[1] and str(pidfile) in suspect["cmdline"]

            # rogue_action: report (the default) names it but leaves it running...
            Watchdog(registry, interval=1).sweep()
            assert is_same_process_alive(*rogue)
            # ...rogue_action: kill stops it.
            registry.set_limits("swt", {**registry.run("swt").limits, "rogue_action": "kill", "grace": 1.0})
            report = Watchdog(registry, interval=1).sweep()
            stopped = [(f, ladder) for f, ladder in report.ladders if f.reason is Violation.ROGUE]
            assert stopped and stopped[0][1] is not None and rogue[0] in [p for p, _ in stopped[0][1].signals]
            wait_until(lambda: not is_same_process_alive(*rogue), timeout=10)
            event = next(e for e in registry.events("swt") if e.kind == "watchdog_stopped")
            assert (
                event.detail["reason"] == "rogue" and event.detail["evidence"]["process"]["pid"] == rogue[0]
            )
            lease = registry.lease_info("swt")
            assert lease is not None and lease.token == new_holder.token
    finally:
        if rogue is not None and is_same_process_alive(*rogue):
            os.kill(rogue[0], signal.SIGKILL)


def test_the_ladder_never_signals_a_process_with_another_start_time(tmp_path: Path) -> None:
    with spawned([sys.executable, "-c", "import time; time.sleep(60)"]) as bystander:
        real_start = ProcessIdentity.of(bystander.pid).start_ticks
        recycled = Target(bystander.pid, real_start - 5000, "child")  # the pid was reused since registration
        result = run_ladder([recycled], grace=0.2)
        assert result.signals == [] and result.skipped[0][0] == bystander.pid
        assert "is now a process started at" in result.skipped[0][1]
        time.sleep(0.3)  # if a signal had gone out, the process would be dead by now
        assert bystander.poll() is None


def test_watchdog_and_stop_with_a_recycled_registration_signal_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    # A holder that acquired the lease and died (its pid may be reused from now on)...
    holder_token = int(
        subprocess.run(
            helper_command("acquire_and_exit.py", url, "recycled"),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    with (
        spawned([sys.executable, "-c", "import time; time.sleep(60)"]) as bystander,
        Registry.open(url) as registry,
    ):
        me = ProcessIdentity.current()
        stale = ProcessIdentity(
            me.host, me.host_key, bystander.pid, ProcessIdentity.of(bystander.pid).start_ticks - 5000, me.uid
        )
        # ...and a registration whose pid now belongs to an unrelated process (the bystander).
        registry.register_process("recycled", holder_token, ProcessRole.CHILD, stale)
        report = Watchdog(registry, interval=1, grace=0.2).sweep()
        assert [f.reason for f in report.findings] == [Violation.HOLDER_GONE]
        assert report.ladders[0][1] is None  # nothing to signal: no registered process is alive
        stop = run_cli("stop", "recycled", "--registry", url, "--reason", "test", "--grace", "0.2s")
        assert stop.returncode == 0, stop.stderr
        assert (
            f"not signalled: pid {bystander.pid}: pid {bystander.pid} is now a process started at"
            in stop.stdout
        )
        time.sleep(0.3)
        assert bystander.poll() is None
        lease = registry.lease_info("recycled")
        assert lease is not None and lease.state is LeaseState.REVOKED
