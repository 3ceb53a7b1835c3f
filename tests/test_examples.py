"""The main job in CI: a short `make demo`, a short `make incident`, and the report they write."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("stable_baselines3")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the launcher needs Linux")

ROOT = Path(__file__).resolve().parent.parent


def _module(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_short_demo(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    done = _module(
        "examples.swt.demo",
        "--episodes",
        "8",
        "--store",
        str(tmp_path / "store"),
        "--run",
        "demo-ci",
        "--report",
        str(report),
    )
    assert "trainguard demo summary" in done.stdout, (done.stdout[-2000:], done.stderr[-3000:])
    summary = done.stdout[done.stdout.index("trainguard demo summary") :]
    assert "episodes             8 spent / 8 budget" in summary, done.stdout + done.stderr
    assert re.search(r"checkpoints +\d+ committed", summary)
    assert f"report               {report}" in summary
    assert "live checkpoint" in summary
    from trainguard import Registry

    with Registry.open(f"sqlite:///{tmp_path / 'store/.trainguard/registry.db'}") as registry:
        kinds = [e.kind for e in registry.events("demo-ci")]
        assert (
            kinds.count("checkpoint_committed") >= 1
            and "launcher_started" in kinds
            and "guard_started" in kinds
        )
        stopped = next(e for e in registry.events("demo-ci") if e.kind == "guard_stopped")
        assert stopped.detail["reason"] == "episodes"
        assert registry.watchdogs(), "the demo ran a watchdog"
        promoted = registry.live_pointer("demo-ci")
    # The demo exits 0 only when it trained and promoted: here both happened, and the summary names the
    # checkpoint the live pointer is on.
    assert done.returncode == 0, done.stdout + done.stderr
    assert promoted is not None and f"live checkpoint      {promoted}" in summary
    page = report.read_text()
    assert "<svg" in page and "demo-ci" in page and "Decisions per checkpoint" in page
    assert not re.search(r"(src|href)=[\"']https?://", page)  # self-contained


def test_short_incident_drill(tmp_path: Path) -> None:
    numbers_file = tmp_path / "drill.json"
    done = _module(
        "examples.swt.incident_drill",
        "--episodes",
        "30",
        "--every",
        "10",
        "--last-good",
        "20",
        "--store",
        str(tmp_path / "store"),
        "--summary-json",
        str(numbers_file),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "drill: every defence held" in done.stdout
    numbers = json.loads(numbers_file.read_text())
    assert numbers["commits_refused"] > 0
    assert numbers["checkpoints_lost"] == 0
    assert numbers["stopped_by"] == "watchdog (rogue_action: kill)" and numbers["time_to_stop_s"] is not None
    assert numbers["time_to_detection_s"] is not None
    assert numbers["live_before"] == numbers["live_during_rogue"] == numbers["live_after"] == "ep00000020-t1"
    assert numbers["quarantined_by_recover"] == ["ep00000030-t1"]
    assert numbers["checkpoint_files_before"] == numbers["checkpoint_files_after"]
    assert "names it" in done.stdout and "stale fencing token 1" in done.stdout

    report = tmp_path / "incident.html"
    made = _module(
        "trainguard", "report", "swt-incident", "--store", str(tmp_path / "store"), "-o", str(report)
    )
    assert made.returncode == 0, made.stderr
    page = report.read_text()
    assert "refused commits" in page and "commit_refused" in page and "watchdog_stopped" in page
