"""Bad input to the public API (an unknown run, a wrong state, a bad argument) is always a TrainguardError
of a documented kind, and the command line exits with the code docs/design.md documents for it - in one
line, without a traceback."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import trainguard.errors as errors_module
from support import run_cli
from trainguard import (
    CheckpointNotFound,
    CheckpointState,
    CheckpointStore,
    ConfigError,
    CorruptCheckpoint,
    ExitCode,
    Guard,
    InvalidArgument,
    InvalidName,
    LeaseHeld,
    LimitRaised,
    MissingDependency,
    NotSupported,
    Registry,
    RunNotFound,
    StateConflict,
    TrainguardError,
    live,
)
from trainguard.checkpoints import adopt_directory, retention
from trainguard.cli import main
from trainguard.config import load_config
from trainguard.fingerprint import compute
from trainguard.promotion import LiveModel, load_evaluator, recover_run
from trainguard.supervise import Launcher, LaunchOptions

DESIGN = Path(__file__).resolve().parent.parent / "docs" / "design.md"
EVICTED = CheckpointState.EVICTED


def _documented() -> dict[str, tuple[list[str], int]]:
    """The table in docs/design.md, "Errors and exit codes": error -> (what it refines, exit code)."""
    section = DESIGN.read_text().split("## Errors and exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| (\d) \|", section, re.MULTILINE)
    return {name: (re.findall(r"`(\w+)`", refines), int(code)) for name, refines, code in rows}


DOCUMENTED = _documented()


def test_every_error_is_documented_with_its_exit_code_and_base() -> None:
    classes = {
        name: cls
        for name, cls in vars(errors_module).items()
        if isinstance(cls, type) and issubclass(cls, TrainguardError) and cls is not TrainguardError
    }
    assert set(classes) == set(DOCUMENTED), "docs/design.md's error table and trainguard.errors differ"
    for name, cls in classes.items():
        refines, code = DOCUMENTED[name]
        assert cls.exit_code == code, f"{name}: exit code {cls.exit_code}, documented {code}"
        mro = {base.__name__ for base in cls.__mro__}
        assert set(refines) <= mro, f"{name} does not refine {refines}"
        assert set(errors_module.__all__) >= {name}


@dataclass
class World:
    """A run with a checkpoint in every state: A committed, B quarantined, C evicted, D pinned and live."""

    tmp: Path
    store: CheckpointStore
    registry: Registry
    names: list[str]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with CheckpointStore(tmp_path / "store", run="r") as store:
        registry = store.registry
        registry.set_limits("r", {"max_episodes": 100})
        lease = registry.acquire("r", ttl=60)
        names = [
            store.save({"w": np.full(2, e, dtype=np.float32)}, episode=e, lease=lease).name
            for e in (1, 2, 3, 4)
        ]
        store.quarantine(names[1], reason="bad")
        registry.set_checkpoint_state("r", names[2], CheckpointState.EVICTED, reason="retention")
        store.pin(names[3], reason="last good")
        registry.set_live_pointer("r", names[3], reason="test")
        lease.release()
        yield World(tmp_path, store, registry, names)


def _cases(w: World) -> list[tuple[str, type[TrainguardError], Callable[[], object]]]:
    reg, store, (a, b, c, d) = w.registry, w.store, w.names
    mine, other = reg.acquire("r", ttl=60), reg.acquire("other", ttl=60)
    extend, save, weights = reg.extend_budget, store.save, {"w": np.ones(1)}
    limits = functools.partial(reg.apply_limits, lease=mine)
    config = load_config(_config(w.tmp))
    existing, adopt, evict = CheckpointStore.open_existing, adopt_directory, reg.set_checkpoint_state
    return [
        # unknown run
        ("Registry.run", RunNotFound, lambda: reg.run("nope")),
        ("Registry.revoke", RunNotFound, lambda: reg.revoke("nope", "why")),
        ("Registry.extend_budget", RunNotFound, lambda: extend("nope", episodes=1, reason="why")),
        ("Registry.apply_limits", RunNotFound, lambda: limits("nope", {})),
        ("Registry.set_limits", RunNotFound, lambda: reg.set_limits("nope", {})),
        ("Registry.charge", RunNotFound, lambda: reg.charge("nope", episodes=1)),
        ("a store of no run", RunNotFound, lambda: existing(store.root, run="nope")),
        ("live.load", RunNotFound, lambda: live.load("nope", registry=reg)),
        # not found
        ("CheckpointStore.record", CheckpointNotFound, lambda: store.record("ep99999999-t9")),
        ("Registry.set_pinned", CheckpointNotFound, lambda: reg.set_pinned("r", "missing", True)),
        ("live.load, nothing promoted", CheckpointNotFound, lambda: live.load("other", registry=reg)),
        # wrong state
        ("load a quarantined checkpoint", StateConflict, lambda: store.load(b)),
        ("release a committed checkpoint", StateConflict, lambda: store.release(a)),
        ("verify an evicted checkpoint", StateConflict, lambda: store.verify(c)),
        ("quarantine twice", StateConflict, lambda: store.quarantine(b, reason="again")),
        ("promote a quarantined checkpoint", StateConflict, lambda: reg.set_live_pointer("r", b, reason="x")),
        ("pin an evicted checkpoint", StateConflict, lambda: store.pin(c)),
        ("evict a pinned, live checkpoint", StateConflict, lambda: evict("r", d, EVICTED, reason="x")),
        ("recover to a quarantined checkpoint", StateConflict, lambda: recover_run(store, b, reason="x")),
        ("a Guard outside its with block", StateConflict, lambda: Guard(run="g", store=str(w.tmp)).lease),
        ("a LiveModel that loaded nothing", StateConflict, lambda: LiveModel("r", registry=reg).state),
        # bad arguments
        ("lease ttl", InvalidArgument, lambda: reg.acquire("r", ttl=0)),
        ("revoke without a reason", InvalidArgument, lambda: reg.revoke("r", " ")),
        ("extend without a reason", InvalidArgument, lambda: extend("r", episodes=1, reason="")),
        ("extend by a negative amount", InvalidArgument, lambda: extend("r", episodes=-1, reason="x")),
        ("extend a budget without a limit", InvalidArgument, lambda: extend("r", steps=5, reason="x")),
        ("extend what is not extendable", InvalidArgument, lambda: extend("r", memory=5, reason="x")),
        ("save a negative episode", InvalidArgument, lambda: save(weights, episode=-1, lease=mine)),
        ("save with another run's lease", InvalidArgument, lambda: save(weights, episode=5, lease=other)),
        ("quarantine without a reason", InvalidArgument, lambda: store.quarantine(a, reason=" ")),
        ("an unknown format", InvalidArgument, lambda: CheckpointStore(w.tmp, run="x", format="pickle")),
        ("a store that must exist", InvalidArgument, lambda: existing(w.tmp / "no", run="r")),
        ("a pattern without its group", InvalidArgument, lambda: adopt(store, w.tmp, "ep", mine, None)),
        ("a pattern that is no regex", InvalidArgument, lambda: adopt(store, w.tmp, "(", mine, None)),
        ("a retention window", InvalidArgument, lambda: retention.keep_last(-1)),
        ("a watch pattern", InvalidArgument, lambda: Launcher(config, LaunchOptions(["x"], 1, "ep"))),
        ("a config and settings", InvalidArgument, lambda: Guard(config, max_episodes=3)),
        ("a checkpoint name", InvalidName, lambda: save(weights, episode=5, lease=mine, name="../x")),
        ("a run name", InvalidName, lambda: reg.acquire("a/b")),
        ("an unknown setting", ConfigError, lambda: Guard(run="g", max_episods=3)),
        ("a missing config file", ConfigError, lambda: load_config(w.tmp / "absent.yaml")),
        ("a missing feature file", ConfigError, lambda: compute([str(w.tmp / "absent.yaml")])),
        ("an evaluator that is not there", ConfigError, lambda: load_evaluator("no_such_module:evaluate")),
        ("a restart raising a limit", LimitRaised, lambda: limits("r", {"max_episodes": 500})),
        ("a registry URL", InvalidArgument, lambda: Registry.open("bogus://nowhere")),
    ]  # fmt: skip


def _config(directory: Path) -> Path:
    path = directory / "guard.yaml"
    path.write_text(f"run: cfg\nstore: {directory / 'cfg-store'}\n")
    return path


def test_bad_input_raises_documented_trainguard_errors(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINGUARD_CONFIG", raising=False)
    cases = _cases(world)
    assert {expected for _, expected, _ in cases} >= {
        RunNotFound,
        CheckpointNotFound,
        StateConflict,
        InvalidArgument,
        InvalidName,
        ConfigError,
    }
    for what, expected, call in cases:
        with pytest.raises(TrainguardError) as raised:
            call()
        error = raised.value
        assert isinstance(error, expected), f"{what}: {type(error).__name__}: {error}"
        assert error.exit_code == DOCUMENTED[type(error).__name__][1], what
        assert "\n" not in str(error), f"{what}: the message is more than one line: {error}"


# -- the command line maps each to its exit code -----------------------------------------------------------


def _one_line(result: subprocess.CompletedProcess[str], code: ExitCode, *needles: str) -> None:
    stderr = result.stderr.strip()
    assert result.returncode == code, (result.returncode, result.stdout, stderr)
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    for needle in needles:
        assert needle in stderr, stderr


def test_the_cli_exits_with_each_errors_documented_code(world: World) -> None:
    store = str(world.store.root)
    a, b, _, _ = world.names
    usage, refused, problem = ExitCode.USAGE, ExitCode.REFUSED, ExitCode.PROBLEM
    _one_line(run_cli("status", "nope", "--store", store), usage, "run 'nope' is not in the registry")
    _one_line(run_cli("ckpt", "pin", "r", "ep99999999-t9", "--store", store), usage, "no such checkpoint")
    _one_line(run_cli("ckpt", "release", "r", a, "--store", store), usage, "only a quarantined checkpoint")
    _one_line(run_cli("ckpt", "pin", "r", "../x", "--store", store), usage, "invalid checkpoint name")
    _one_line(
        run_cli("budget", "extend", "r", "--store", store, "--steps", "5", "--reason", "x"),
        usage,
        "no max_steps",
    )
    _one_line(run_cli("config", "check", str(world.tmp / "absent.yaml")), usage, "file not found")
    _one_line(run_cli("status", "--registry", "bogus://nowhere"), usage, "backend 'bogus' is not supported")
    garbage = world.tmp / "garbage.db"
    garbage.write_bytes(b"this is not a database file" * 100)
    _one_line(run_cli("status", "--registry", str(garbage)), problem, "not a database")
    # A corrupt quarantined checkpoint cannot be released: a check found a problem.
    parked = world.store.root / ".quarantine" / b / "tensors.safetensors"
    parked.write_bytes(parked.read_bytes()[:-1] + b"\x00")
    _one_line(run_cli("ckpt", "release", "r", b, "--store", store), problem, "cannot be released")
    # Refused by a guard rule, with the command that helps added by the CLI.
    with world.registry.acquire("r", ttl=60):
        adopt = run_cli("ckpt", "adopt", "r", str(world.tmp), "--store", store)
        _one_line(adopt, refused, "is held by pid", "trainguard stop r --reason TEXT", "run --takeover")
    raised = _config(world.tmp)
    raised.write_text(f"run: r\nstore: {store}\nlimits: {{max_episodes: 500}}\n")
    launch = run_cli("run", "-c", str(raised), "--", sys.executable, "-c", "pass")
    _one_line(launch, usage, "limits.max_episodes = 500", "trainguard budget extend r --episodes N")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (CorruptCheckpoint("c", "f", "bad"), ExitCode.PROBLEM),
        (LeaseHeld("r", "host", 1, 0.0, 1), ExitCode.REFUSED),
        (NotSupported("trainguard watchdog", "darwin", "it needs Linux"), ExitCode.USAGE),
        (MissingDependency("matplotlib", "report", "trainguard report"), ExitCode.USAGE),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, TrainguardError) else "",
)
def test_main_maps_an_error_to_its_code_in_one_line(
    error: TrainguardError,
    code: ExitCode,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Errors no test machine can cause for real (another platform, a missing package), raised by a command.
    def handler(_args: Any) -> int:
        raise error

    monkeypatch.setattr("trainguard.cli.config.cmd_check", handler)
    assert main(["config", "check", "anything.yaml"]) == code == DOCUMENTED[type(error).__name__][1]
    stderr = capsys.readouterr().err.strip()
    assert stderr == f"trainguard: {error}" or stderr.startswith(f"trainguard: {error}; ")


def test_platform_and_dependency_errors_reach_the_shell_in_one_line(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(world.store.root)
    # The watchdog on a platform without /proc (the platform check is the seam).
    monkeypatch.setattr("trainguard.supervise._linux.IS_LINUX", False)
    assert main(["watchdog", "--once", "--store", store]) == ExitCode.USAGE
    assert capsys.readouterr().err.strip().startswith("trainguard: trainguard watchdog is not supported on")
    # The report without matplotlib (an import that fails, as on a machine without the extra).
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["report", "r", "--store", store, "-o", str(world.tmp / "r.html")]) == ExitCode.USAGE
    stderr = capsys.readouterr().err.strip()
    assert stderr == "trainguard: trainguard report needs matplotlib, which is not installed: " + (
        "pip install 'trainguard[report]'"
    )
    assert not (world.tmp / "r.html").exists()


def test_a_missing_optional_dependency_names_its_extra(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    with CheckpointStore(world.tmp / "torch-store", run="t", format="torch") as store:
        lease = store.registry.acquire("t", ttl=60)
        name = store.save({"w": torch.ones(2)}, episode=1, lease=lease).name
        monkeypatch.setitem(sys.modules, "torch", None)  # as on a machine without the torch extra
        with pytest.raises(MissingDependency, match=r"needs torch, .* pip install 'trainguard\[torch\]'"):
            store.load(name)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingDependency, match=r"trainguard\[postgres\]"):
        Registry.open("postgresql://postgres@127.0.0.1:1/none")
