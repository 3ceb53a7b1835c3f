"""`config check` on the incident project's own files (issue 11, item 8): every key trainguard can enforce
is enforced with its meaning, every key it cannot is listed once with why, a failsafe it cannot honour and a
file that is not a config at all are exit 2."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from support import run_cli
from trainguard import ConfigError
from trainguard.config import load_config

# config/process_limits.yaml, in exactly the shape of the project's file (and a section of another concern
# beside it, as that file has).
PROCESS_LIMITS = textwrap.dedent("""\
    limits:
      max_episodes: 20000
      max_runtime_hours: 24.0
      max_memory_gb: 4.0
      max_cpu_percent: 80.0
      max_checkpoints: 10
    monitoring:
      heartbeat_interval_seconds: 30
      resource_check_interval_seconds: 60
      memory_alert_threshold_gb: 3.5
      runtime_warning_hours: 20
      episode_warning_count: 18000
    signals:
      graceful_shutdown_timeout_seconds: 45
    failsafes:
      enforce_episode_limit: true
      enforce_runtime_limit: true
      enforce_memory_limit: true
      emergency_stop_on_disk_full: true
      watchdog_check_interval_seconds: 10
      watchdog_timeout_multiplier: 4
    training:
      save_checkpoint_every_episodes: 100
      max_episodes_without_improvement: 2000
      early_stop_patience_episodes: 1500
      early_stop_min_improvement: 0.01
    live_trading:
      max_position_size: 1.0
      enable_slack_alerts: true
      slack_webhook_url: http://127.0.0.1:9/hooks/trading
    cleanup:
      delete_checkpoints_older_than_days: 7
    """)

# config/training.yaml as the project really has it: limits mixed with hyperparameters.
TRAINING = textwrap.dedent("""\
    training:
      max_episodes: 1000000
      learning_rate: 0.0003
      gamma: 0.99
      batch_size: 64
    """)

ENFORCED = {  # original key -> (native key, value it is enforced as)
    "limits.max_episodes": ("limits.max_episodes", 20000),
    "limits.max_runtime_hours": ("limits.max_runtime", 24 * 3600.0),
    "limits.max_memory_gb": ("limits.max_memory", 4_000_000_000),
    "limits.max_cpu_percent": ("limits.max_cpu_percent", 80.0),
    "limits.max_checkpoints": ("checkpoints.keep_last", 10),
    "monitoring.heartbeat_interval_seconds": ("monitoring.heartbeat_interval", 30.0),
    "monitoring.resource_check_interval_seconds": ("monitoring.resource_check_interval", 60.0),
    "monitoring.memory_alert_threshold_gb": ("limits.warn_memory", 3_500_000_000),
    "monitoring.runtime_warning_hours": ("limits.warn_runtime", 20 * 3600.0),
    "monitoring.episode_warning_count": ("limits.warn_episodes", 18000),
    "signals.graceful_shutdown_timeout_seconds": ("watchdog.grace", 45.0),
    "failsafes.enforce_episode_limit": ("failsafes.enable_episode_limit", True),
    "failsafes.enforce_runtime_limit": ("failsafes.enable_runtime_limit", True),
    "failsafes.watchdog_check_interval_seconds": ("watchdog.interval", 10.0),
    "failsafes.watchdog_timeout_multiplier": ("monitoring.lease_ttl", 120.0),  # 4 x the 30 s heartbeat
    "training.save_checkpoint_every_episodes": ("checkpoints.every_episodes", 100),
    # Both of the project's patience keys are one rule here; the stricter (smaller) holds.
    "training.max_episodes_without_improvement": ("limits.max_episodes_without_improvement", 1500),
    "training.early_stop_patience_episodes": ("limits.max_episodes_without_improvement", 1500),
    "training.early_stop_min_improvement": ("limits.min_improvement", 0.01),
}
HONOURED = ("failsafes.enforce_memory_limit", "failsafes.emergency_stop_on_disk_full")
NOT_ENFORCED = {"live_trading": "live trading is the serving side", "cleanup": "never deletes by age"}


def _write(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _value(body: dict[str, object], dotted: str) -> object:
    node: object = body
    for part in dotted.split("."):
        assert isinstance(node, dict), dotted
        node = node[part]
    return node


def test_process_limits_yaml_every_key_enforced_with_its_meaning_or_listed_once(tmp_path: Path) -> None:
    path = _write(tmp_path, PROCESS_LIMITS, "process_limits.yaml")
    checked = run_cli("config", "check", str(path), "--json")
    assert checked.returncode == 0, checked.stderr
    body = json.loads(checked.stdout)
    for original, (native, value) in ENFORCED.items():
        assert body["translated"][original] == native, original
        assert _value(body["config"], native) == pytest.approx(value), original
    assert body["config"]["notifications"]["webhook"] == "http://127.0.0.1:9/hooks/trading"
    assert body["translated"]["live_trading.enable_slack_alerts"].startswith("notifications")
    assert sorted(body["failsafes_honoured"]) == sorted(HONOURED)
    assert sorted(body["not_enforced"]) == sorted(NOT_ENFORCED)
    for key, reason in NOT_ENFORCED.items():
        assert reason in body["not_enforced"][key]
    # Every original key appears in exactly one place, and none of them as an unknown-key warning.
    places = [*body["translated"], *body["failsafes_honoured"], *body["not_enforced"]]
    assert len(places) == len(set(places))
    assert body["warnings"] == []

    # The same file read by the library: the limits the Guard, launcher and watchdog are given.
    config = load_config(path, strict=True)
    limits = config.effective_limits()
    assert (limits["max_runtime"], limits["max_memory"], limits["max_cpu_percent"]) == (86400.0, 4e9, 80.0)
    assert (limits["warn_memory"], limits["warn_runtime"], limits["warn_episodes"]) == (3.5e9, 72000.0, 18000)
    assert (limits["max_episodes_without_improvement"], limits["min_improvement"]) == (1500, 0.01)
    assert (limits["grace"], config.watchdog.interval, config.monitoring.lease_ttl) == (45.0, 10.0, 120.0)


def test_process_limits_yaml_in_words(tmp_path: Path) -> None:
    checked = run_cli("config", "check", str(_write(tmp_path, PROCESS_LIMITS, "process_limits.yaml")))
    assert checked.returncode == 0, checked.stderr
    text = checked.stdout
    for line in (
        "episodes       20000",
        "runtime        24.0h",
        "memory         4.0GB",
        "cpu            80% of one core, sustained over 1.0m",
        "warnings       90% of each budget; memory 3.5GB; runtime 20.0h; episode 18000",
        "no improvement stop after 1500 episodes without the best reward improving by more than 0.01",
        "heartbeat      every 30.0s, lease ttl 2.0m",
        "watchdog       every 10.0s, grace 45.0s",
        "checkpoints    every 100 episodes, keep last 10",
        "notifications  webhook for warning, stop, fence, rogue",
    ):
        assert line in text, line
    not_enforced = text.split("not enforced by trainguard:")[1].strip().splitlines()
    assert [line.split(":")[0].strip() for line in not_enforced] == ["live_trading", "cleanup"]
    assert text.count("live_trading:") == 1 and text.count("cleanup:") == 1


def test_training_yaml_keeps_its_episode_limit_and_lists_the_hyperparameters(tmp_path: Path) -> None:
    checked = run_cli("config", "check", str(_write(tmp_path, TRAINING, "training.yaml")), "--json")
    assert checked.returncode == 0, checked.stderr
    body = json.loads(checked.stdout)
    assert body["config"]["limits"]["max_episodes"] == 1_000_000
    assert body["translated"] == {"training.max_episodes": "limits.max_episodes"}
    assert sorted(body["not_enforced"]) == ["training.batch_size", "training.gamma", "training.learning_rate"]
    assert all("trainguard does not change how it trains" in r for r in body["not_enforced"].values())
    assert body["warnings"] == []
    words = run_cli("config", "check", str(_write(tmp_path, TRAINING, "training.yaml"))).stdout
    assert "episodes       1000000" in words


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("enforce_memory_limit: true", "enforce_memory_limit = True: cannot be honoured: no limit is set"),
        ("enforce_episode_limit: false", "enforce_episode_limit = False: cannot be disabled"),
        ("emergency_stop_on_disk_full: false", "emergency_stop_on_disk_full = False: cannot be disabled"),
        ("kill_switch_file: /tmp/stop", "has no such failsafe and cannot honour it"),
        ("watchdog_timeout_multiplier: 1", "watchdog_timeout_multiplier = 1: must be a number of at least 2"),
    ],
)
def test_a_failsafe_trainguard_cannot_honour_is_exit_2(tmp_path: Path, change: str, needle: str) -> None:
    text = textwrap.dedent(f"""\
        limits: {{max_episodes: 100, max_runtime_hours: 1}}
        failsafes:
          {change}
        """)
    checked = run_cli("config", "check", str(_write(tmp_path, text, "process_limits.yaml")))
    assert checked.returncode == 2, checked.stdout
    assert needle in checked.stderr and len(checked.stderr.strip().splitlines()) == 1, checked.stderr


def test_slack_alerts_without_a_webhook_are_refused(tmp_path: Path) -> None:
    text = "limits: {max_episodes: 10}\nmonitoring: {enable_slack_alerts: true}\n"
    checked = run_cli("config", "check", str(_write(tmp_path, text, "process_limits.yaml")))
    assert checked.returncode == 2
    assert "enable_slack_alerts = True: alerts need a webhook URL" in checked.stderr
    with_env = run_cli(
        "config",
        "check",
        str(tmp_path / "process_limits.yaml"),
        "--json",
        env={"TRAINGUARD_WEBHOOK_URL": "http://127.0.0.1:9/hook"},
    )
    assert with_env.returncode == 0, with_env.stderr


@pytest.mark.parametrize(
    "text",
    [
        "window: 48\nindicators: [rsi, macd, atr]\nnormalise: zscore\n",  # a features file
        # live settings
        "live_trading:\n  broker: oanda\n  max_position_size: 1.0\ncleanup: {keep_days: 7}\n",
    ],
)
def test_a_yaml_file_that_is_not_a_trainguard_config_is_exit_2(tmp_path: Path, text: str) -> None:
    checked = run_cli("config", "check", str(_write(tmp_path, text, "other.yaml")))
    assert checked.returncode == 2, checked.stdout
    assert "not a trainguard config" in checked.stderr
    assert "Traceback" not in checked.stderr and len(checked.stderr.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="not a trainguard config"):
        load_config(tmp_path / "other.yaml")


def test_one_limit_given_twice_in_two_spellings_is_refused(tmp_path: Path) -> None:
    text = "limits: {max_runtime: 12h, max_runtime_hours: 24}\n"
    with pytest.raises(ConfigError, match=r"as limits\.max_runtime already does: give one of them"):
        load_config(_write(tmp_path, text, "both.yaml"))
