"""status / ps / stop / watchdog from the command line, and the shipped alert rules."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from guard_support import write_config
from support import helper_command, run_cli, spawned, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def _worker(tmp_path: Path, run: str) -> tuple[Path, list[str]]:
    config = write_config(
        tmp_path,
        run,
        monitoring={"heartbeat_interval": "0.1s", "lease_ttl": "1s"},
        limits={"max_episodes": 100000, "max_runtime": "1h"},
    )
    return config, helper_command("stubborn_worker.py", str(config))


def _started(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    while not (line := proc.stdout.readline()).startswith("started"):
        assert line, "the worker ended before it started"


def test_status_ps_and_stop(tmp_path: Path) -> None:
    _, command = _worker(tmp_path, "cli-run")
    store = ["--store", str(tmp_path / "store")]
    with spawned(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        _started(proc)
        status = json.loads(run_cli("status", *store, "--json").stdout)
        row = status["runs"][0]
        assert row["run"] == "cli-run" and row["holder"]["pid"] == proc.pid and row["holder"]["live"]
        assert row["episodes"]["limit"] == 100000 and status["watchdog_alive"] is False
        human = run_cli("status", "cli-run", *store)
        assert "cli-run" in human.stdout and "no watchdog is alive" in human.stderr

        ps = json.loads(run_cli("ps", *store, "--json").stdout)
        guard = next(p for p in ps["processes"] if p["role"] == "guard")
        assert guard["pid"] == proc.pid and guard["alive"] is True

        stop = run_cli("stop", "cli-run", *store, "--reason", "operator: wrong features", "--grace", "5s")
        assert stop.returncode == 0, stop.stderr
        assert "lease revoked" in stop.stdout and f"{proc.pid} SIGTERM" in stop.stdout
        proc.wait(timeout=30)
        assert proc.returncode == 0  # a guarded child takes SIGTERM (and the revocation) gracefully
    status = json.loads(run_cli("status", *store, "--json").stdout)
    assert status["runs"][0]["holder"] is None and status["runs"][0]["lease_state"] == "revoked"


def test_watchdog_once_dry_run_and_heartbeat(tmp_path: Path) -> None:
    _, command = _worker(tmp_path, "cli-dog")
    store = ["--store", str(tmp_path / "store")]
    with spawned(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        _started(proc)
        once = run_cli("watchdog", *store, "--once", "--dry-run", "--interval", "1s")
        assert once.returncode == 0 and "dry run" in once.stderr
        assert json.loads(run_cli("status", *store, "--json").stdout)["watchdog_alive"] is False  # it exited
        assert proc.poll() is None


def test_systemd_unit_and_usage_errors(tmp_path: Path) -> None:
    unit = run_cli(
        "watchdog",
        "--registry",
        f"sqlite:///{tmp_path}/r.db",
        "--print-systemd-unit",
        "--metrics-port",
        "9109",
    )
    assert unit.returncode == 0
    assert re.search(
        r"ExecStart=.* -m trainguard watchdog --registry sqlite:///.*r\.db --interval 5s --metrics-port 9109",
        unit.stdout,
    )
    assert "Restart=always" in unit.stdout
    missing = run_cli("watchdog", "--once")
    assert missing.returncode == 2 and "give --registry URL, --store DIR or -c CONFIG" in missing.stderr
    no_command = run_cli("run", "--run", "x", "--store", str(tmp_path / "s"))
    assert no_command.returncode == 2 and "give the training command after --" in no_command.stderr
    bad = run_cli("run", "--run", "x", "--store", str(tmp_path / "s"), "--", "/nonexistent/trainer")
    assert bad.returncode == 2 and "command = '/nonexistent/trainer': not found" in bad.stderr


def test_alert_rules_use_metrics_the_watchdog_serves() -> None:
    rules = yaml.safe_load(
        (Path(__file__).parent.parent / "deploy/prometheus/trainguard-alerts.yml").read_text()
    )
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "TrainguardRunawayRun",
        "TrainguardStaleHeartbeat",
        "TrainguardWatchdogDown",
        "TrainguardCommitRefusals",
    } <= names
    from trainguard.supervise.metrics import WatchdogMetrics

    served = {metric.name for metric in WatchdogMetrics().registry.collect()}
    used = {
        m for g in rules["groups"] for r in g["rules"] for m in re.findall(r"trainguard_[a-z_]+", r["expr"])
    }
    # Counters are exposed with a _total suffix.
    assert {u.removesuffix("_total") for u in used} <= served


def _cli_in(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI run in ``folder`` with no location flags: it finds ./guard.yaml itself."""
    return subprocess.run(
        [sys.executable, "-m", "trainguard", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_in_a_folder_with_guard_yaml_ps_status_scan_and_stop_need_no_flags(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        "launched",
        monitoring={"heartbeat_interval": "0.1s", "lease_ttl": "2s"},
        limits={"max_episodes": 100000},
    )
    worker = helper_command("guard_worker.py", "guard.yaml", "--episode-seconds", "0.05")
    command = [sys.executable, "-m", "trainguard", "run", "-c", "guard.yaml", "--grace", "10s", "--", *worker]
    with spawned(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as launcher:

        def guard_registered() -> list[dict[str, object]]:
            ps = _cli_in(tmp_path, "ps", "--json")
            if "no such registry file" in ps.stderr or "holds no trainguard registry" in ps.stderr:
                return []  # the launcher has not created it (or its schema) yet
            assert ps.returncode == 0, ps.stderr
            rows: list[dict[str, object]] = json.loads(ps.stdout)["processes"]
            return rows if any(r["role"] == "guard" for r in rows) else []

        rows = wait_until(guard_registered, timeout=60, interval=0.2, what="the Guard inside to register")
        by_role = {r["role"]: r for r in rows}
        # The command column says what each process is.
        assert "trainguard run" in str(by_role["launcher"]["cmdline"])
        assert "guard_worker.py" in str(by_role["guard"]["cmdline"])
        assert by_role["guard"]["pid"] == by_role["child"]["pid"]  # one process, two rows

        status = _cli_in(tmp_path, "status")
        assert status.returncode == 0 and "launched" in status.stdout, status.stderr
        scan = _cli_in(tmp_path, "incident", "scan", "--json")  # no argument: every store of the registry
        assert scan.returncode in (0, 1), scan.stderr
        assert [s["run"] for s in json.loads(scan.stdout)["stores"]] == ["launched"]

        stop = _cli_in(tmp_path, "stop", "launched", "--reason", "operator: test")
        assert stop.returncode == 0, stop.stderr
        signalled = re.findall(r"(\d+) SIGTERM", stop.stdout)
        # The launcher alone: it forwards the stop to its child once (a Guard signalled twice would take
        # the second as "stop at once").
        assert signalled == [str(by_role["launcher"]["pid"])], stop.stdout
        _, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == 3, stderr
    assert "second signal" not in stderr
    assert "stopped (lease_lost) by" in stderr and "(exit 3)" in stderr
