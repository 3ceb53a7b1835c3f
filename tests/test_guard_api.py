"""The loop API in-process: report/actions, cadence, heartbeats, warnings, configuration routes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from guard_support import write_config
from support import wait_until
from trainguard import ConfigError, Guard, InvalidArgument, Registry, StateConflict
from trainguard.budget import EffectiveLimits


def _registry(store: Path) -> Registry:
    return Registry.open(f"sqlite:///{store / '.trainguard' / 'registry.db'}")


def test_report_builds_the_decision_histogram_saved_with_the_checkpoint(tmp_path: Path) -> None:
    with Guard(run="hist", store=str(tmp_path / "s"), every_episodes=2) as guard:
        for episode in guard.episodes():
            guard.report(reward=float(episode), actions=["HOLD", "HOLD", "BUY"])
            guard.report(actions={"SELL": 2})
            if guard.should_checkpoint(episode):
                record = guard.save({"w": np.zeros(1)}).result()
                assert record.metrics["actions"] == {"HOLD": 4, "BUY": 2, "SELL": 4}  # two episodes' worth
                assert record.metrics["reward"] == float(episode)
                assert not guard.actions  # the next checkpoint counts from here
            if episode == 4:
                break
        assert guard.last_progress is not None


def test_cadence_and_the_last_episode_of_the_budget(tmp_path: Path) -> None:
    with Guard(run="cadence", store=str(tmp_path / "s"), every_episodes=3, max_episodes=7) as guard:
        wanted = [e for e in guard.episodes() if guard.should_checkpoint(e)]
    assert wanted == [3, 6, 7]  # on the cadence, plus the last episode the budget allows


def test_heartbeat_row_file_and_budget_warning(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with Guard(
        run="beat", store=str(store), max_episodes=10, heartbeat_interval=0.05, lease_ttl=1, warn_at=0.5
    ) as guard:
        episodes = guard.episodes()
        for _ in range(6):
            next(episodes)
            guard.tick(10)
        registry = guard.registry
        wait_until(lambda: (registry.heartbeat("beat") or {}).get("episode") == 6)
        beat = registry.heartbeat("beat")
        assert beat is not None
        assert beat["step"] == 60 and beat["rss"] > 0 and beat["token"] == guard.lease.token
        on_disk = json.loads((store / ".trainguard" / "beat_heartbeat.json").read_text())
        assert on_disk["pid"] == __import__("os").getpid() and "runtime_hours" in on_disk
        episodes.close()
    with _registry(store) as registry:
        warning = next(e for e in registry.events("beat") if e.kind == "budget_warning")
        assert warning.detail == {"budget": "episodes", "spent": 5, "limit": 10}


def test_from_config_takes_the_launchers_config_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, "env-config", limits={"max_episodes": 2})
    monkeypatch.setenv("TRAINGUARD_CONFIG", str(config))
    with Guard.from_config(max_episodes=1) as guard:  # overrides still win over the file
        assert list(guard.episodes()) == [1]
    monkeypatch.delenv("TRAINGUARD_CONFIG")
    with pytest.raises(InvalidArgument, match="give a config path"):
        Guard.from_config()


def test_launcher_marker_for_another_run_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINGUARD_RUN_ID", "other-run")
    with (
        pytest.raises(ConfigError, match="launched for run 'other-run'"),
        Guard(run="mine", store=str(tmp_path / "s")),
    ):
        pass


def test_loop_api_needs_the_context_manager(tmp_path: Path) -> None:
    guard = Guard(run="bare", store=str(tmp_path / "s"))
    with pytest.raises(StateConflict, match="context manager"):
        next(guard.episodes())
    with pytest.raises(StateConflict, match="not entered"):
        _ = guard.registry
    with pytest.raises(InvalidArgument, match="not both"):
        Guard(guard.config, max_episodes=3)


def test_limits_and_remaining_are_typed_and_follow_the_loop(tmp_path: Path) -> None:
    with Guard(
        run="left",
        store=str(tmp_path / "s"),
        max_episodes=10,
        max_steps=1000,
        max_runtime="1h",
        max_memory="100GB",
        resource_check_interval=0.05,
    ) as guard:
        assert guard.limits == EffectiveLimits(episodes=10, steps=1000, runtime=3600.0, memory=10**11)
        episodes = guard.episodes()
        next(episodes)
        guard.tick(100)
        next(episodes)  # episode 1 is counted
        wait_until(lambda: guard.remaining.memory != 10**11, what="the first memory sample")
        left = guard.remaining
        assert (left.episodes, left.steps, left.disk) == (9, 900, None)
        assert left.runtime is not None and 3590 < left.runtime < 3600
        assert left.memory is not None and 0 < left.memory < 10**11  # the sampled tree RSS is counted
        episodes.close()
