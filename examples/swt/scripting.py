"""What the demo and the incident drill both do around trainguard: call its CLI, keep an earlier store, and
write a variant of ``guard.yaml``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

__all__ = ["HERE", "ROOT", "guard_config", "move_aside", "trainguard", "write_config"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def trainguard(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m trainguard ARGS`` from the project root; the exit code is the caller's to judge."""
    return subprocess.run(
        [sys.executable, "-m", "trainguard", *args], cwd=ROOT, text=True, check=False, capture_output=capture
    )


def move_aside(store: Path, what: str) -> None:
    """A previous store is evidence of an earlier run: rename it with a timestamp, never delete it."""
    if store.exists():
        aside = store.with_name(f"{store.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        store.rename(aside)
        print(f"previous {what} store moved aside (nothing deleted): {aside}", flush=True)


def guard_config() -> dict[str, Any]:
    """``guard.yaml`` as a dict, its features path made absolute so the copy may live anywhere."""
    body: dict[str, Any] = yaml.safe_load((HERE / "guard.yaml").read_text())
    body["features"] = [str(HERE / "features.yaml")]
    return body


def write_config(body: dict[str, Any], target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(body))
    return target
