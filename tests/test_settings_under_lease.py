"""A run's supervision settings change only under its lease (issue 10, defect 7): a Guard or a launcher
refused the lease changes nothing of the live run, and a restart that loosens a setting is an event with
its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from support import run_cli
from trainguard import Guard, LeaseHeld, Registry
from trainguard.registry import EventKind

STRICT = {"rogue_action": "kill", "stall_timeout": "1m", "grace": "5s"}
LOOSE = {"rogue_action": "report", "stall_timeout": "7d", "grace": "1h"}


def _guard(store: Path, **settings: Any) -> Guard:
    return Guard(run="r", store=str(store), max_episodes=10, install_signal_handlers=False, **settings)


def _recorded(store: Path) -> dict[str, Any]:
    with Registry.open(str(store / ".trainguard" / "registry.db"), mode="read") as registry:
        return registry.run("r").limits


def test_a_guard_refused_the_lease_does_not_loosen_the_live_runs_settings(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with _guard(store, **STRICT) as holder:
        before = _recorded(store)
        assert before["rogue_action"] == "kill" and before["stall_timeout"] == 60
        with pytest.raises(LeaseHeld):
            _guard(store, **LOOSE).__enter__()
        assert _recorded(store) == before
        config = tmp_path / "loose.yaml"
        config.write_text(
            yaml.safe_dump({"run": "r", "store": str(store), "watchdog": {"rogue_action": "report"}})
        )
        launched = run_cli("run", "-c", str(config), "--", "true")
        assert launched.returncode == 3, launched.stderr  # refused: the Guard above holds the lease
        assert _recorded(store) == before
        events = holder.registry.events("r", kinds=[EventKind.LIMITS_SET, EventKind.LIMITS_LOOSENED])
        assert [e.token for e in events] == [holder.lease.token]  # only the holder ever set them


def test_a_restart_that_loosens_a_setting_records_an_event_with_its_reason(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with _guard(store, **STRICT):
        pass
    with _guard(store, **LOOSE) as restarted:
        loosened = restarted.registry.events("r", kinds=[EventKind.LIMITS_LOOSENED])
        token = restarted.lease.token
    assert len(loosened) == 1
    event = loosened[0]
    assert event.token == token and event.reason is not None
    assert "loosened grace, rogue_action, stall_timeout" in event.reason
    assert event.detail["changes"] == {
        "grace": [5.0, 3600.0],
        "rogue_action": ["kill", "report"],
        "stall_timeout": [60.0, 604800.0],
    }
    with _guard(store, **LOOSE) as same_again:  # nothing looser than recorded: no new event
        assert len(same_again.registry.events("r", kinds=[EventKind.LIMITS_LOOSENED])) == 1
