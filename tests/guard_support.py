"""Writing guard configs and running guard_worker.py for the Guard tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from support import helper_command


def write_config(directory: Path, run: str, **sections: Any) -> Path:
    body: dict[str, Any] = {
        "run": run,
        "store": str(directory / "store"),
        "monitoring": {"heartbeat_interval": "0.2s", "lease_ttl": "3s", "resource_check_interval": "0.1s"},
        "checkpoints": {"every_episodes": 1000, "keep_last": 50},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            body.setdefault(section, {}).update(values)
        else:
            body[section] = values
    path = directory / "guard.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def worker(config: Path, *flags: str) -> list[str]:
    return helper_command("guard_worker.py", str(config), *flags)


def run_worker(
    config: Path, *flags: str, timeout: float = 120, env: dict[str, str] | None = None
) -> dict[str, Any]:
    import os

    done = subprocess.run(
        worker(config, *flags),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return summary_of(done.stdout)


def summary_of(stdout: str) -> dict[str, Any]:
    line = next(line for line in stdout.splitlines() if line.startswith("SUMMARY "))
    return dict(json.loads(line.removeprefix("SUMMARY ")))
