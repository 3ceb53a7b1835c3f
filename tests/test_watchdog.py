"""The watchdog against real misbehaving processes: budget, hang, stall, memory, SIGTERM-proof, dry run."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from guard_support import write_config
from support import helper_command, spawned, wait_until
from trainguard import Registry
from trainguard.registry import EventKind, ProcessIdentity, ProcessRole
from trainguard.supervise import WATCHDOG_LOCK_WAIT, Evidence, SweepReport, Watchdog, marked_processes

HEARTBEAT = 0.1
FAST = {
    "monitoring": {
        "heartbeat_interval": f"{HEARTBEAT}s",
        "lease_ttl": "1s",
        "resource_check_interval": "0.1s",
    },
    "watchdog": {"grace": "1s"},
}


def _config(tmp_path: Path, run: str, **sections: Any) -> Path:
    merged: dict[str, Any] = {k: dict(v) for k, v in FAST.items()}
    for key, value in sections.items():
        merged.setdefault(key, {}).update(value)
    return write_config(tmp_path, run, **merged)


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / '.trainguard' / 'registry.db'}"


def _watchdog_command(tmp_path: Path, *flags: str) -> list[str]:
    """`trainguard watchdog` over the test's store, as a separate process."""
    return [sys.executable, "-m", "trainguard", "watchdog", "--store", str(tmp_path / "store"), *flags]


@contextmanager
def stubborn(config: Path, *flags: str) -> Iterator[subprocess.Popen[str]]:
    with spawned(
        helper_command("stubborn_worker.py", str(config), *flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as proc:
        _read_until(proc, "started")
        yield proc


def _read_until(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        assert line, f"worker ended before printing {text!r}"
        if line.startswith(text):
            return


def _sweep_until_found(watchdog: Watchdog, timeout: float = 20) -> SweepReport:
    deadline = time.monotonic() + timeout
    while True:
        report = watchdog.sweep()
        if report.findings:
            return report
        assert time.monotonic() < deadline, "the watchdog never found a violation"
        time.sleep(0.05)


def _stopped_events(registry: Registry, run: str) -> list[Any]:
    return [e for e in registry.events(run) if e.kind == "watchdog_stopped"]


def test_runaway_past_max_runtime_is_killed_within_interval_plus_grace(tmp_path: Path) -> None:
    interval, grace = 0.3, 1.0
    config = _config(tmp_path, "runaway", limits={"max_runtime": "1s"})
    dog_command = _watchdog_command(tmp_path, "--interval", f"{interval}s", "--grace", f"{grace}s")
    with stubborn(config, "--ignore-budget") as proc, spawned(dog_command, stderr=subprocess.DEVNULL):
        proc.wait(timeout=60)
        died = time.time()
        with Registry.open(_url(tmp_path)) as registry:  # recorded after the kill, maybe at the next sweep
            wait_until(lambda: _stopped_events(registry, "runaway"), timeout=20)
    with Registry.open(_url(tmp_path)) as registry:
        started = next(e for e in registry.events("runaway") if e.kind == "guard_started")
        stopped = _stopped_events(registry, "runaway")
    assert [e.detail["reason"] for e in stopped] == ["runtime"]
    ladder = stopped[0].detail["ladder"]
    # The budget ran out at start + 1 s; the registry is charged up to two heartbeats ahead, so an overrun
    # is only certain after that; then at most one sweep interval to notice, and the grace to die.
    overrun_certain = started.at + 1.0 + 2 * HEARTBEAT
    detection = ladder["first_signal_at"] - overrun_certain
    print(
        f"detection {detection:.2f}s (interval {interval}s), SIGTERM -> gone {ladder['term_to_gone']:.2f}s "
        f"(grace {grace}s)"
    )
    assert detection <= 2 * interval + 0.5
    assert ladder["term_to_gone"] <= grace + 0.5
    assert died - overrun_certain <= 2 * interval + grace + 1.0
    # A runaway's loop ignores the graceful stop its guard makes of SIGTERM: SIGKILL after the grace.
    assert [name for _, name in ladder["signals"]] == ["SIGTERM", "SIGKILL"]


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    config = _config(tmp_path, "deaf", limits={"max_runtime": "0.5s"}, watchdog={"grace": "0.8s"})
    with (
        stubborn(config, "--ignore-budget", "--ignore-sigterm") as proc,
        Registry.open(_url(tmp_path)) as registry,
    ):
        report = _sweep_until_found(Watchdog(registry, interval=0.1))
        finding, ladder = report.ladders[0]
        assert finding.reason == "runtime" and ladder is not None
        assert [name for _, name in ladder.signals] == ["SIGTERM", "SIGKILL"]
        assert ladder.killed == [proc.pid] and ladder.survivors == []
        assert ladder.term_to_gone is not None and ladder.term_to_gone >= 0.8
        proc.wait(timeout=10)
        assert proc.returncode == -9
        event = _stopped_events(registry, "deaf")[0]
        assert event.detail["signals"] == ["SIGKILL", "SIGTERM"]
        assert (
            event.detail["evidence"]["heartbeat_age"] >= 0 and event.detail["targets"][0]["pid"] == proc.pid
        )


def test_a_hung_child_is_killed_for_heartbeat(tmp_path: Path) -> None:
    config = _config(tmp_path, "hung")
    # Opened as `trainguard watchdog` opens it: the stopped child may hold SQLite's write lock.
    with (
        stubborn(config, "--hang") as proc,
        Registry.open(_url(tmp_path), lock_wait=WATCHDOG_LOCK_WAIT) as registry,
    ):
        _read_until(proc, "hanging")
        report = _sweep_until_found(Watchdog(registry, interval=0.1, grace=0.3))
        assert report.findings[0].reason == "heartbeat"
        proc.wait(timeout=10)  # a stopped process ignores SIGTERM: the SIGKILL after the grace ends it
        assert proc.returncode == -9
        lease = registry.lease_info("hung")
        assert (
            lease is not None
            and lease.state == "revoked"
            and "watchdog: heartbeat" in (lease.end_reason or "")
        )


def test_a_stalled_child_is_killed_for_stalled(tmp_path: Path) -> None:
    config = _config(tmp_path, "stall", monitoring={"stall_timeout": "0.6s"})
    with stubborn(config, "--stall") as proc, Registry.open(_url(tmp_path)) as registry:
        _read_until(proc, "stalling")
        report = _sweep_until_found(Watchdog(registry, interval=0.1, grace=0.5))
        finding = report.findings[0]
        assert finding.reason == "stalled" and finding.evidence["heartbeat_age"] < 1.0  # it still beats
        proc.wait(timeout=10)


def test_a_child_in_a_long_save_is_not_killed(tmp_path: Path) -> None:
    config = _config(tmp_path, "slowsave", monitoring={"stall_timeout": "1s"})
    with stubborn(config, "--slow-save", "1.6") as proc, Registry.open(_url(tmp_path)) as registry:
        watchdog = Watchdog(registry, interval=0.1, grace=0.5)
        _read_until(proc, "saving")
        assert proc.stdout is not None
        saved = False
        while not saved:  # sweep throughout the save; a 1.6 s save is past the 1 s stall limit
            assert watchdog.sweep().findings == []
            line = proc.stdout.readline()
            saved = line.startswith("saved")
        saved_at = time.time()
        # The first heartbeat after the save (no longer "saving") must not report the save as a stall.
        wait_until(
            lambda: (
                (beat := registry.heartbeat("slowsave")) is not None
                and beat["at"] > saved_at
                and not beat["saving"]
            ),
            timeout=10,
        )
        assert watchdog.sweep().findings == [] and proc.poll() is None
        beats = registry.events("slowsave", kinds=[EventKind.CHECKPOINT_COMMITTED])
        assert len(beats) == 1


def test_a_child_past_max_memory_is_killed_for_memory(tmp_path: Path) -> None:
    config = _config(tmp_path, "hog", limits={"max_memory": "350MB"})
    with (
        stubborn(config, "--ignore-budget", "--allocate-mb", "40") as proc,
        Registry.open(_url(tmp_path)) as registry,
    ):
        report = _sweep_until_found(Watchdog(registry, interval=0.1, grace=0.5))
        finding = report.findings[0]
        assert finding.reason == "memory" and finding.evidence["rss"] > 350_000_000
        proc.wait(timeout=10)


def test_dry_run_records_everything_and_kills_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path, "dry", limits={"max_runtime": "0.3s"})
    with stubborn(config, "--ignore-budget") as proc, Registry.open(_url(tmp_path)) as registry:
        report = _sweep_until_found(Watchdog(registry, interval=0.1, dry_run=True))
        assert report.findings[0].reason == "runtime" and report.ladders[0][1] is None
        assert proc.poll() is None
        lease = registry.lease_info("dry")
        assert lease is not None and lease.state == "held"  # not even the lease was touched
        event = next(e for e in registry.events("dry") if e.kind == "watchdog_would_stop")
        assert event.detail["would"] == ["revoke lease", "SIGTERM", "grace 1s", "SIGKILL", "verify"]
        assert event.detail["targets"][0]["pid"] == proc.pid and event.detail["dry_run"] is True
        assert _stopped_events(registry, "dry") == []


@pytest.mark.parametrize("metrics", [True])
def test_metrics_endpoint(tmp_path: Path, metrics: bool) -> None:
    import socket
    import urllib.request

    config = _config(tmp_path, "metered", limits={"max_episodes": 1000})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dog = _watchdog_command(tmp_path, "--interval", "0.2s", "--metrics-port", str(port))
    with stubborn(config), spawned(dog, stderr=subprocess.DEVNULL):

        def scrape() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    return str(response.read().decode())
            except OSError:
                return ""

        wait_until(lambda: 'trainguard_run_lease_token{run="metered"}' in scrape(), timeout=30)
        text = scrape()
    assert 'trainguard_run_budget_remaining{budget="episodes",run="metered"}' in text
    assert 'trainguard_run_checkpoints{run="metered",state="committed"}' in text
    assert (
        "trainguard_run_heartbeat_age_seconds" in text
        and "trainguard_watchdog_last_sweep_timestamp_seconds" in text
    )


def test_a_child_spawned_during_a_sweep_is_not_mistaken_for_an_orphan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race seen on a fresh clone: `trainguard run` spawned its child while a sweep was between reading
    # the registry and scanning /proc, and the child was killed as an orphan. Launchers register before they
    # spawn; a sweep scans /proc before it reads the registry. Here the "launch" happens inside the scan.
    import os

    url = f"sqlite:///{tmp_path / 'registry.db'}"

    children: list[subprocess.Popen[bytes]] = []
    with Registry.open(url) as registry:
        registry.ensure_run("racy", store=tmp_path)
        lease = registry.acquire("racy", ttl=30)

        def launch_during_the_scan() -> list[Evidence]:
            registry.register_process("racy", lease.token, ProcessRole.LAUNCHER, ProcessIdentity.current())
            env = {**os.environ, "TRAINGUARD_RUN_ID": "racy", "TRAINGUARD_LEASE_TOKEN": str(lease.token)}
            children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env))
            wait_until(lambda: any(e.pid == children[0].pid for e in marked_processes()), timeout=10)
            return marked_processes()

        # The sweep's /proc scan is the seam: the launch happens inside it.
        monkeypatch.setattr("trainguard.supervise._snapshot.marked_processes", launch_during_the_scan)
        try:
            report = Watchdog(registry, interval=1, scan_rogues=False).sweep()
            assert [f for f in report.findings if f.reason == "orphan"] == []
            assert children[0].poll() is None
        finally:
            for child in children:
                child.kill()
                child.wait()


def test_a_registry_that_takes_no_writes_does_not_save_a_hung_child(tmp_path: Path) -> None:
    # A frozen process can hold SQLite's write lock forever (stopped mid-transaction): the watchdog's own
    # writes then fail, and it must still judge from what it reads and act by signals.
    config = _config(tmp_path, "locked")
    database = tmp_path / "store" / ".trainguard" / "registry.db"
    holder = (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=2)\n"
        "try:\n"
        "    db.execute('BEGIN IMMEDIATE')\n"
        "except sqlite3.OperationalError:\n"
        "    print('held already', flush=True)\n"  # by the stopped child itself, mid-transaction
        "else:\n"
        "    print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    with stubborn(config, "--hang") as proc, Registry.open(_url(tmp_path), lock_wait=0.5) as registry:
        _read_until(proc, "hanging")
        with spawned([sys.executable, "-c", holder, str(database)], stdout=subprocess.PIPE) as lock:
            assert lock.stdout is not None and lock.stdout.readline()
            probe = sqlite3.connect(database, isolation_level=None, timeout=0.2)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                probe.execute("BEGIN IMMEDIATE")  # the precondition: nobody can write now
            probe.close()
            report = _sweep_until_found(Watchdog(registry, interval=0.1, grace=0.3))
            assert report.findings[0].reason == "heartbeat"
            proc.wait(timeout=10)  # killed although neither its lease nor an event could be written
            assert proc.returncode == -9
        # With the lock released (the holder gone, or the stopped child itself killed), a sweep revokes the
        # dead child's lease if the first one could not.
        watchdog = Watchdog(registry, interval=0.1, grace=0.3)

        def revoked() -> bool:
            watchdog.sweep()
            lease = registry.lease_info("locked")
            return lease is not None and lease.state == "revoked"

        wait_until(revoked, timeout=20)
