"""Configuration: both forms load, every error is one line naming key, value and rule."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from trainguard import ConfigError
from trainguard.config import load_config, parse_config
from trainguard.config.units import parse_duration, parse_size

INCIDENT_YAML = textwrap.dedent("""\
    # config/training.yaml
    training:
      limits:
        max_episodes: 20000  # Hard limit
        max_runtime_hours: 24.0  # Auto-shutdown after 24h
        max_checkpoints: 10  # Keep only 10 checkpoints
        max_memory_gb: 4.0  # Memory limit

      monitoring:
        heartbeat_interval_seconds: 60
        resource_check_interval_seconds: 300
        checkpoint_validation: true
        external_monitoring: true

      failsafes:
        enable_episode_limit: true  # Cannot be disabled
        enable_runtime_limit: true  # Cannot be disabled
        enable_external_monitor: true  # External watchdog
    """)

NATIVE_YAML = textwrap.dedent("""\
    run: swt-gbpjpy
    store: ./checkpoints/swt-gbpjpy
    features: [config/features.yaml]
    limits: {max_episodes: 20000, max_runtime: 24h, max_memory: 4GB, max_disk: 50GB, warn_at: 0.9}
    checkpoints:
      every_episodes: 25
      format: safetensors
      async: false
      keep_last: 10
      keep_best: 1
      best_metric: {name: expectancy, mode: max}
    monitoring: {heartbeat_interval: 5s, lease_ttl: 30s, stall_timeout: 10m}
    watchdog: {interval: 5s, grace: 30s, rogue_action: report}
    gates: {max_action_share: 0.95, min_decisions: 100, metrics: {expectancy: ">= 0", max_drawdown: "<= 50"}}
    failsafes: {enable_episode_limit: true, enable_runtime_limit: true, enable_external_monitor: true}
    """)


def _write(tmp_path: Path, text: str, name: str = "guard.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_incident_report_form_loads_as_is(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, INCIDENT_YAML, "training.yaml"), strict=True)
    assert config.limits.max_episodes == 20000
    assert config.limits.max_runtime == 24 * 3600
    assert config.limits.max_memory == 4_000_000_000
    assert config.checkpoints.keep_last == 10
    assert config.monitoring.heartbeat_interval == 60 and config.monitoring.resource_check_interval == 300
    assert config.monitoring.lease_ttl == 180  # derived: a 60 s heartbeat needs a longer lease


def test_native_form_loads_and_resolves_paths_against_the_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, NATIVE_YAML), strict=True)
    assert config.run == "swt-gbpjpy"
    assert config.store == (tmp_path / "checkpoints" / "swt-gbpjpy").resolve()
    assert (config.limits.max_runtime, config.limits.max_disk) == (86400, 50_000_000_000)
    assert config.checkpoints.best_metric is not None and config.checkpoints.best_metric.mode == "max"
    assert config.checkpoints.async_ is False
    assert config.effective_limits()["max_episodes"] == 20000


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, NATIVE_YAML), overrides={"limits.max_episodes": 50, "run": "other"})
    assert (config.limits.max_episodes, config.run) == (50, "other")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "run: x\nlimits: {max_episodes: -5}",
            "limits.max_episodes = -5: Input should be greater than or equal to 1",
        ),
        ("run: x\nlimits: {max_runtime: -1h}", "limits.max_runtime = '-1h': must be seconds or a string"),
        ("run: x\nlimits: {max_memory: 0}", "limits.max_memory = 0: must be greater than 0"),
        ("run: x\nlimits: {warn_at: 1.5}", "limits.warn_at = 1.5:"),
        ("training:\n  limits: {max_runtime_hours: -2}", "training.limits.max_runtime_hours = -7200.0: "),
        (
            "training:\n  failsafes: {enable_runtime_limit: false}",
            "training.failsafes.enable_runtime_limit = False: cannot be disabled",
        ),
        (
            "run: x\nfailsafes: {enable_external_monitor: false}",
            "failsafes.enable_external_monitor = False: cannot be disabled",
        ),
        ("run: ../escape", "run = '../escape': must not contain"),
        (
            "run: x\nmonitoring: {heartbeat_interval: 20s, lease_ttl: 30s}",
            "must be at most half of lease_ttl",
        ),
        (
            "run: x\nwatchdog: {rogue_action: nuke}",
            "watchdog.rogue_action = 'nuke': Input should be 'report' or 'kill'",
        ),
        (
            "run: x\ngates: {evaluator: not-a-function}",
            "gates.evaluator = 'not-a-function': must be 'module:function'",
        ),
        ("- just\n- a list", "(top level) = 'list': a config must be a mapping"),
        ("run: [unclosed", "(yaml) = 'line 1, column 15': malformed YAML"),
    ],
)
def test_bad_values_give_one_line_with_key_value_rule(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(_write(tmp_path, text), strict=True)
    rendered = str(raised.value)
    assert message in rendered
    assert "\n" not in rendered and rendered.startswith(str(tmp_path / "guard.yaml"))
    assert raised.value.exit_code == 2


def test_unknown_keys_warn_by_default_and_fail_in_strict_mode(tmp_path: Path) -> None:
    path = _write(tmp_path, "run: x\nlimits: {max_episods: 10}\ncheckpoints: {keep_lst: 3}\n")
    with pytest.warns(UserWarning) as caught:
        load_config(path)
    messages = [str(w.message) for w in caught]
    assert any("limits.max_episods: unknown key; did you mean 'max_episodes'?" in m for m in messages)
    assert any("checkpoints.keep_lst: unknown key; did you mean 'keep_last'?" in m for m in messages)
    with pytest.raises(ConfigError, match=r"limits\.max_episods = 10: unknown key"):
        load_config(path, strict=True)


def test_unknown_keys_of_the_incident_form_keep_their_names() -> None:
    config, problems = parse_config(
        {"training": {"limits": {"max_episodes": 9, "max_episodez": 5}, "extras": {"a": 1}}}
    )
    assert any(
        "training.limits.max_episodez: unknown key; did you mean 'max_episodes'" in p for p in problems
    )
    # A section of the trainer's own is not a typo: it is listed once as not enforced, with why.
    assert not any("training.extras" in p for p in problems)
    assert "training.extras" in config.translation.not_enforced


def test_missing_file_and_missing_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    config = load_config(_write(tmp_path, INCIDENT_YAML))
    with pytest.raises(ConfigError, match=r"run = \(missing\): required"):
        config.require_run()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90), ("90s", 90), ("10m", 600), ("24h", 86400), ("2d", 172800), ("500ms", 0.5), (1.5, 1.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (1024, 1024),
        ("4GB", 4 * 10**9),
        ("4GiB", 4 * 2**30),
        ("512MiB", 512 * 2**20),
        ("10kB", 10_000),
        ("7b", 7),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["soon", "-3s", True, None, "4 parsecs"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)
