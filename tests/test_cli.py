"""The real command line, in child processes: outputs, exit codes, and bad input as one clear line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from support import run_cli
from trainguard import CheckpointStore


def _one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    stderr = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, stderr)
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    for needle in needles:
        assert needle in stderr


@pytest.fixture
def populated(tmp_path: Path) -> tuple[Path, str, list[str]]:
    root, run = tmp_path / "store", "swt-gbpjpy"
    with CheckpointStore(root, run=run) as store:
        lease = store.registry.acquire(run, ttl=60)
        names = [
            store.save(
                {"w": np.full(4, e, dtype=np.float32)},
                episode=e,
                lease=lease,
                metrics={"expectancy": e / 100},
            ).name
            for e in (100, 200, 300, 400)
        ]
        lease.release()
    return root, run, names


def test_ls_json_is_stable_and_documented(populated: tuple[Path, str, list[str]]) -> None:
    root, run, names = populated
    result = run_cli("ckpt", "ls", run, "--store", str(root), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["version"] == 1 and payload["run"] == run and payload["live"] is None
    assert [c["name"] for c in payload["checkpoints"]] == names
    assert set(payload["checkpoints"][0]) == {
        "bytes",
        "created_at",
        "episode",
        "fingerprint",
        "live",
        "manifest_hash",
        "metrics",
        "name",
        "parent",
        "pinned",
        "run",
        "state",
        "state_reason",
        "token",
    }
    human = run_cli("ckpt", "ls", run, "--store", str(root))
    assert human.returncode == 0 and all(name in human.stdout for name in names)


def test_pin_quarantine_release_prune_from_the_cli(populated: tuple[Path, str, list[str]]) -> None:
    root, run, names = populated
    store = ["--store", str(root)]
    assert run_cli("ckpt", "pin", run, names[0], *store, "--reason", "last good").returncode == 0
    quarantine = run_cli("ckpt", "quarantine", run, names[3], *store, "--reason", "wrong features")
    assert quarantine.returncode == 0 and "nothing was deleted" in quarantine.stdout
    dry = json.loads(run_cli("ckpt", "prune", run, *store, "--keep-last", "1", "--dry-run", "--json").stdout)
    assert dry["evicted"] == [names[1]] and dry["dry_run"] is True  # pinned [0] and newest [2] are kept
    pruned = json.loads(run_cli("ckpt", "prune", run, *store, "--keep-last", "1", "--json").stdout)
    assert pruned["evicted"] == [names[1]] and pruned["kept"] == [names[0], names[2]]
    assert run_cli("ckpt", "release", run, names[3], *store).returncode == 0
    listing = json.loads(run_cli("ckpt", "ls", run, *store, "--all", "--json").stdout)
    states = {c["name"]: (c["state"], c["pinned"]) for c in listing["checkpoints"]}
    assert states == {
        names[0]: ("committed", True),
        names[1]: ("evicted", False),
        names[2]: ("committed", False),
        names[3]: ("committed", False),
    }


def test_config_check(tmp_path: Path) -> None:
    good = tmp_path / "training.yaml"
    good.write_text("training:\n  limits: {max_episodes: 20000, max_runtime_hours: 24}\n")
    result = run_cli("config", "check", str(good))
    assert (
        result.returncode == 0
        and "episodes       20000" in result.stdout
        and "runtime        24.0h" in result.stdout
    )
    as_json = json.loads(run_cli("config", "check", str(good), "--json").stdout)
    assert (
        as_json["config"]["limits"]["max_runtime"] == 86400.0
        and as_json["config"]["checkpoints"]["async"] is False
    )


@pytest.mark.parametrize(
    ("yaml_text", "needles"),
    [
        ("run: x\nlimits: {max_episodes: -5}", ["limits.max_episodes = -5", "greater than or equal to 1"]),
        (
            "training:\n  failsafes: {enable_episode_limit: false}",
            ["enable_episode_limit", "cannot be disabled"],
        ),
        ("run: [oops", ["malformed YAML", "line 1"]),
        ("run: x\nlimtis: {}", ["limtis", "unknown key; did you mean 'limits'?"]),
    ],
)
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, yaml_text: str, needles: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    _one_line_error(run_cli("config", "check", str(path), "--strict"), *needles)


@pytest.mark.parametrize("bad_name", ["../etc", "a/b", "", ".."])
def test_bad_run_names_on_the_command_line(tmp_path: Path, bad_name: str) -> None:
    _one_line_error(run_cli("ckpt", "ls", bad_name, "--store", str(tmp_path)), "invalid run name")


def test_bad_checkpoint_name_and_unknown_run(populated: tuple[Path, str, list[str]]) -> None:
    root, run, _ = populated
    _one_line_error(run_cli("ckpt", "pin", run, "../../x", "--store", str(root)), "invalid checkpoint name")
    _one_line_error(run_cli("ckpt", "ls", "nope", "--store", str(root)), "run 'nope' is not in the registry")
    _one_line_error(run_cli("ckpt", "pin", run, "ep999", "--store", str(root)), "no such checkpoint")


def test_bad_retention_flags_name_the_flag(populated: tuple[Path, str, list[str]]) -> None:
    root, run, names = populated
    prune = ("ckpt", "prune", run, "--store", str(root))
    _one_line_error(run_cli(*prune, "--keep-last", "-1"), "--keep-last = -1: must be >= 0")
    _one_line_error(
        run_cli(*prune, "--keep-last", "1", "--keep-every", "0"), "--keep-every = 0: must be >= 1"
    )
    _one_line_error(
        run_cli(*prune, "--keep-last", "1", "--keep-best", "1"), "--keep-best = 1: needs --metric"
    )
    with CheckpointStore(root, run=run) as store:
        assert [r.name for r in store.checkpoints()] == names  # nothing was evicted by a refused prune


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    _one_line_error(run_cli("ckpt", "ls"), "the following arguments are required: RUN")
    _one_line_error(run_cli("ckpt", "ls", "r"), "give --store DIR, --registry URL or -c CONFIG")
    _one_line_error(run_cli("ckpt", "quarantine", "r", "c", "--store", str(tmp_path)), "--reason")
    _one_line_error(run_cli("ckpt", "prune", "r", "--keep-last", "many"), "invalid int value")
    _one_line_error(run_cli("ckpt", "ls", "r", "--store", str(tmp_path / "missing")), "is not a directory")


def test_python_dash_m_and_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("trainguard ")


def test_promote_without_decisions_or_an_evaluator_says_how_to_measure_them(
    populated: tuple[Path, str, list[str]],
) -> None:
    root, run, _ = populated  # saved without a decision histogram, like an adopted or legacy checkpoint
    result = run_cli("promote", run, "--store", str(root))
    assert result.returncode == 1, result.stderr
    assert "only 0 decisions recorded" in result.stdout
    assert "set gates.evaluator" in result.stdout and "'module:function'" in result.stdout
