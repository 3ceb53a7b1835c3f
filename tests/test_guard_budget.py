"""Budgets are cumulative across restarts: a restarted process never gets more budget."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

import trainguard as tg
from guard_support import run_worker, worker, write_config
from support import run_cli, spawned, wait_until
from trainguard import CommitRefused, ConfigError, Guard, Registry, StopReason


def _registry(tmp_path: Path) -> Registry:
    return Registry.open(f"sqlite:///{tmp_path / 'store' / '.trainguard' / 'registry.db'}")


def test_fifty_episodes_in_total_over_three_restarts(
    tmp_path: Path, registry_url: str, run_name: str
) -> None:
    # On both registry backends: the guard's whole life (limits, reservations, refunds) goes through it.
    config = write_config(
        tmp_path,
        run_name,
        registry=registry_url,
        limits={"max_episodes": 50},
        checkpoints={"every_episodes": 5, "keep_last": 50},
    )
    runs = [run_worker(config, "--resume", "--episodes-per-run", "20") for _ in range(4)]
    assert [len(r["episodes"]) for r in runs] == [20, 20, 10, 0]
    assert [r["stop_reason"] for r in runs] == [None, None, "episodes", "episodes"]
    assert runs[2]["episodes"][-1] == 50 and runs[1]["resumed"] == 20
    with Registry.open(registry_url) as registry:
        info = registry.run_info(run_name)
        assert info is not None and info.episodes_spent == 50
        warning = next(e for e in registry.events(run_name) if e.kind == "budget_warning")
        assert warning.detail["spent"] == 45  # 90 % of 50, as an event (and a log line)
        # The store refuses episode 51 even from a caller that bypasses the Guard entirely.
        lease = registry.acquire(run_name, ttl=30)
        with tg.CheckpointStore(tmp_path / "store", run=run_name, registry=registry) as store:
            with pytest.raises(CommitRefused, match="episode 51 is beyond the run's budget of 50"):
                store.save({"w": np.zeros(1)}, episode=51, lease=lease)
            assert max(r.episode for r in store.checkpoints()) == 50


def test_a_killed_process_never_hands_budget_back(tmp_path: Path) -> None:
    config = write_config(tmp_path, "killed", limits={"max_episodes": 40})
    with spawned(worker(config, "--episode-seconds", "0.05"), stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        seen = 0
        while seen < 10:
            line = proc.stdout.readline()
            assert line, "the worker ended early"
            seen += line.startswith("episode ")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    with _registry(tmp_path) as registry:
        charged = registry.run("killed").episodes_spent
    assert charged >= 10  # reserved ahead: the kill cost at least what was run
    rest = run_worker(config)
    assert charged + len(rest["episodes"]) <= 40
    assert rest["stop_reason"] == "episodes"


def test_a_restart_cannot_raise_a_limit_but_an_extension_can(tmp_path: Path) -> None:
    config = write_config(tmp_path, "limited", limits={"max_episodes": 5})
    assert len(run_worker(config)["episodes"]) == 5
    raised = write_config(tmp_path, "limited", limits={"max_episodes": 8})
    result = subprocess.run(worker(raised), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "limits.max_episodes = 8: run 'limited' was given 5" in result.stderr
    assert "only an audited budget extension can" in result.stderr
    extend = run_cli(
        "budget",
        "extend",
        "limited",
        "--store",
        str(tmp_path / "store"),
        "--episodes",
        "3",
        "--reason",
        "converging, three more",
    )
    assert extend.returncode == 0, extend.stderr
    again = run_worker(write_config(tmp_path, "limited", limits={"max_episodes": 5}))
    assert again["episodes"] == [6, 7, 8] and again["stop_reason"] == "episodes"
    show = run_cli("budget", "show", "limited", "--store", str(tmp_path / "store"), "--json")
    episodes = next(b for b in __import__("json").loads(show.stdout)["budgets"] if b["budget"] == "episodes")
    assert episodes == {"budget": "episodes", "spent": 8, "limit": 8, "remaining": 0, "extended_by": 3}
    with _registry(tmp_path) as registry:
        extended = [e for e in registry.events("limited") if e.kind == "budget_extended"]
        assert extended[0].reason == "converging, three more"


def test_extension_reaches_a_running_guard(tmp_path: Path) -> None:
    with Guard(
        run="live-extend", store=str(tmp_path / "store"), max_episodes=3, heartbeat_interval=0.05, lease_ttl=1
    ) as guard:
        done = []
        for episode in guard.episodes():
            done.append(episode)
            if episode == 2:
                guard.registry.extend_budget("live-extend", episodes=2, reason="test")
                wait_until(lambda: guard.limits.episodes == 5, timeout=5)
    assert done == [1, 2, 3, 4, 5] and guard.stop_reason is StopReason.EPISODES


def test_step_budget_stops_at_the_exact_tick(tmp_path: Path) -> None:
    for _ in range(2):  # a restart continues the count
        with Guard(run="steps", store=str(tmp_path / "store"), max_steps=1000) as guard:
            ticks = 0
            while guard.tick():
                ticks += 1
                if ticks == 600:
                    break
    assert guard.stop_reason is StopReason.STEPS and guard.steps == 1000
    with _registry(tmp_path) as registry:
        assert registry.run("steps").steps_spent == 1000


def test_a_tick_of_many_steps_across_the_limit_charges_every_step_taken(tmp_path: Path) -> None:
    # tick(n) counts n steps already run (a vectorised env, a Ray report): the one that crosses both the
    # reservation and the limit was charged only up to the reservation (seen: 9 of 12 steps charged).
    with Guard(
        run="jumps", store=str(tmp_path / "store"), max_steps=10, install_signal_handlers=False
    ) as guard:
        verdicts = [guard.tick(4) for _ in range(3)]
    assert verdicts == [True, True, False] and guard.stop_reason is StopReason.STEPS
    with _registry(tmp_path) as registry:
        assert registry.run("jumps").steps_spent == 12


def test_steps_counted_after_a_stop_are_charged_at_exit(tmp_path: Path) -> None:
    # A stop (a signal) sends tick() the slow way without reserving: the steps it counted were run all
    # the same, and the exit charges them (seen: a Ray run charged 5 of the 13 steps it ran).
    with Guard(
        run="after", store=str(tmp_path / "store"), max_steps=100, install_signal_handlers=False
    ) as guard:
        assert guard.tick(4)
        guard.request_stop(StopReason.SIGNAL, "test: a preemption")
        assert not guard.tick(50)
    with _registry(tmp_path) as registry:
        assert registry.run("after").steps_spent == 54


def test_runtime_budget_is_cumulative(tmp_path: Path) -> None:
    for _ in range(3):
        with Guard(
            run="clock", store=str(tmp_path / "store"), max_runtime=0.6, heartbeat_interval=0.05, lease_ttl=1
        ) as guard:
            for _episode in guard.episodes():
                if not guard.tick():
                    break
                __import__("time").sleep(0.05)
    assert guard.stop_reason is StopReason.RUNTIME
    with _registry(tmp_path) as registry:
        spent = registry.run("clock").runtime_spent
    assert 0.6 <= spent < 1.2


def test_unknown_settings_and_bad_values_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_episods"):
        Guard(run="x", store=str(tmp_path), max_episods=3)
    with pytest.raises(ConfigError, match=r"limits\.max_episodes = -1"):
        Guard(run="x", store=str(tmp_path), max_episodes=-1)
    with pytest.raises(ConfigError, match=r"failsafes\.enable_episode_limit = False: cannot be disabled"):
        Guard(run="x", store=str(tmp_path), enable_episode_limit=False)
