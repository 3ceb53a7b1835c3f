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
from support import helper_command, run_cli, spawned

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
