"""The shipped systemd units and docker compose example (deploy/): a restart policy that restarts a crash but
never a run a guard rule stopped - checked by running the compose entrypoint itself with the real
`trainguard run` and a trainer that writes SB3-style step files."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainguard.cli import build_parser

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the launcher needs Linux")


def _unit(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / name).read_text().replace("\\\n", " "))
    return parser["Service"]


def _trainguard_args(command: str) -> list[str]:
    words = shlex.split(command)
    return words[words.index("trainguard") + 1 :] if "trainguard" in words else words[1:]


def test_the_run_unit_restarts_crashes_but_never_a_guard_stop() -> None:
    service = _unit("trainguard-run@.service")
    assert service["Restart"] == "on-failure"
    assert set(service["RestartPreventExitStatus"].split()) == {"2", "3"}
    exec_start = service["ExecStart"].replace("/srv/training/.venv/bin/trainguard", "trainguard")
    args = build_parser().parse_args(_trainguard_args(exec_start))  # every flag it uses exists
    assert (args.count, args.stop_signal, args.watch_dir) == ("steps", "INT", "/srv/training/models/%i")


def test_the_watchdog_unit_runs_a_real_command() -> None:
    service = _unit("trainguard-watchdog.service")
    assert service["Restart"] == "always"
    command = service["ExecStart"].replace("/srv/training/.venv/bin/trainguard", "trainguard")
    build_parser().parse_args(_trainguard_args(command))


def _compose() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return body


def test_compose_does_not_restart_what_a_guard_rule_stopped() -> None:
    trainer = _compose()["services"]["trainer"]
    assert trainer["restart"].startswith("on-failure")
    assert "unless-stopped" not in trainer["restart"] and "always" not in trainer["restart"]
    script = trainer["entrypoint"][2]
    line = script.split("\n")[0] + " " + script.split("\n")[1] + " " + script.split("\n")[2]
    args = build_parser().parse_args(_trainguard_args(line.replace("\\", " ")))
    assert (args.count, args.stop_signal) == ("steps", "INT")


TRAINER = textwrap.dedent("""\
    import os, sys, time
    folder = sys.argv[sys.argv.index("--model-dir") + 1]
    if os.environ.get("CRASH"):
        sys.exit(1)
    steps = max([int(n.split("_")[1]) for n in os.listdir(folder) if n.endswith("_steps.zip")] or [0])
    while True:
        time.sleep(0.3)
        steps += 100
        with open(os.path.join(folder, f"model_{steps}_steps.zip"), "wb") as handle:
            handle.write(b"PK weights")
    """)


def _entrypoint(workdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    trainer = _compose()["services"]["trainer"]
    shell, flag, script = trainer["entrypoint"]
    script = script.replace("$$", "$")  # compose's escape for a literal $
    environment = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **env}
    return subprocess.run(
        [shell, flag, script],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_compose_entrypoint_with_the_real_launcher(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "config").mkdir()
    (tmp_path / "train.py").write_text(TRAINER)
    (tmp_path / "config" / "guard.yaml").write_text(
        yaml.safe_dump(
            {
                "run": "picco",
                "store": "../checkpoints/picco",
                "limits": {"max_steps": 300},
                "monitoring": {"heartbeat_interval": "0.2s", "lease_ttl": "3s"},
            }
        )
    )
    # The budget stops the trainer: trainguard exits 3, the container exits 0 - compose does not restart.
    first = _entrypoint(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "stopped (steps) by trainguard run (exit 3)" in first.stderr
    assert "stopped by a guard rule or bad input; not restarting" in first.stderr
    # Restarted by hand anyway: refused before the trainer runs, again a clean exit.
    again = _entrypoint(tmp_path)
    assert again.returncode == 0 and re.search(r"spent [34]00 steps of its 300 steps budget", again.stderr)
    # A crash is passed through, so `restart: on-failure` restarts it.
    (tmp_path / "config" / "guard.yaml").write_text(
        yaml.safe_dump({"run": "picco-2", "store": "../checkpoints/picco-2", "limits": {"max_steps": 300}})
    )
    crash = _entrypoint(tmp_path, CRASH="1")
    assert crash.returncode == 1, crash.stderr
