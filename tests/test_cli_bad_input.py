"""Bad input at the command line is one line and exit 2 - never "internal error", never a traceback, never an
unbounded read (issue 10, defects 14, 16, 17). Feature files that are not YAML/JSON are fingerprinted by
their bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from support import run_cli
from trainguard import CheckpointStore
from trainguard.fingerprint import compute


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 5000 + "\n")
    (tmp_path / "nul.yaml").write_text('run: r\nstore: "\\0"\n')
    (tmp_path / "legacy").mkdir()
    with CheckpointStore(tmp_path / "store", run="r"):
        pass
    return tmp_path


def _config(workdir: Path, name: str, body: str) -> str:
    path = workdir / name
    path.write_text(f"run: r\nstore: {workdir / 'store'}\n{body}\n")
    return str(path)


STORE = ["--store", "{w}/store"]
RUN = ["run", "--run", "r", *STORE]
ADOPT = ["ckpt", "adopt", "r", "{w}/legacy", *STORE]
CHECK = ["config", "check"]
WATCH = ["--watch-dir", "{w}"]
STEPS = r"model_(?P<steps>\d+)_steps\.zip"
CASES: list[tuple[str, list[str], str]] = [
    ("config check of a binary file", [*CHECK, "{w}/binary.yaml"], "not UTF-8 text"),
    ("config check of deeply nested YAML", [*CHECK, "{w}/deep.yaml"], "nested too deeply"),
    ("config check of a NUL store", [*CHECK, "{w}/nul.yaml"], "NUL"),
    ("config check of /dev/zero", [*CHECK, "/dev/zero"], "larger than"),
    ("a bad regex for ckpt adopt", [*ADOPT, "--pattern", "("], "regular expression"),
    ("a bad regex for run", [*RUN, "--watch-pattern", "(", *WATCH, "--", "true"], "regular expression"),
    ("a pattern without --watch-dir", [*RUN, "--watch-pattern", STEPS, "--", "true"], "--watch-dir"),
    (
        "a pattern without a count group",
        [*RUN, "--watch-pattern", "x[0-9]+", *WATCH, "--", "true"],
        "named group",
    ),
    ("an unknown stop signal", [*RUN, "--stop-signal", "NOPE", "--", "true"], "--stop-signal"),
    ("a malformed PostgreSQL URL", ["status", "--registry", "postgresql://u@[::1"], "must be sqlite"),
    ("an unsupported registry backend", ["status", "--registry", "mysql://x/y"], "not supported"),
    ("a metrics port beyond 65535", ["watchdog", "--once", *STORE, "--metrics-port", "99999999"], "TCP port"),
    ("a report to /dev/full", ["report", "r", *STORE, "-o", "/dev/full"], "cannot be written"),
    ("a negative rlimit", [*RUN, "--rlimit-nofile", "-1", "--", "true"], "hard limit"),
    (
        "a store that is a device",
        ["run", "--run", "r", "--store", "/dev/null", "--", "true"],
        "not a directory",
    ),
    ("binary features for adopt", [*ADOPT, "--features", "{w}/binary.yaml"], "not UTF-8"),
    (
        "an s3:// store for run",
        ["run", "--run", "r", "--store", "s3://b/runs", "--", "true"],
        "registry is never kept on the object store",
    ),
    ("an s3:// store with no registry", ["ckpt", "ls", "r", "--store", "s3://b/runs"], "needs a registry"),
    ("an s3:// store in the config", [*CHECK, "@store: s3://b/runs"], "needs a registry"),
    ("a gs:// store", ["ckpt", "ls", "r", "--store", "gs://b/runs"], "directory or an s3://"),
    ("an s3:// store with '..'", [*CHECK, "@store: s3://b/a/../c"], "'..'"),
    ("a lease ttl of 3e-7", [*CHECK, "@monitoring: {lease_ttl: 3.0e-7}"], "monitoring.lease_ttl"),
    (
        "a heartbeat of 1e32 s",
        [*CHECK, "@monitoring: {heartbeat_interval: 1.0e+32}"],
        "between 0.01s and 30d",
    ),
    ("a gate against infinity", [*CHECK, "@gates: {metrics: {r: '>= 1e999'}}"], "finite number"),
    ("every_episodes: true", [*CHECK, "@checkpoints: {every_episodes: true}"], "not true/false"),
    ("a registry URL in the config", [*CHECK, "@registry: 'postgresql://u@[::1'"], "registry"),
    ("a feature file that is not there", [*CHECK, "@features: [absent.yaml]"], "cannot be read"),
    ("an evaluator that does not import", [*CHECK, "@gates: {evaluator: 'no_such:f'}"], "cannot be imported"),
]


@pytest.mark.parametrize(("label", "args", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(workdir: Path, label: str, args: list[str], needle: str) -> None:
    argv = [
        # "@LINE": a config with this extra line
        _config(workdir, "case.yaml", arg[1:]) if arg.startswith("@") else arg.replace("{w}", str(workdir))
        for arg in args
    ]
    result = run_cli(*argv, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and needle in lines[0], lines
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


def test_an_adopted_file_at_an_unstorable_episode_is_refused_and_the_rest_adopted(workdir: Path) -> None:
    legacy = workdir / "legacy"
    torch.save({"w": torch.ones(2)}, legacy / "checkpoint_ep000003.pth")
    torch.save({"w": torch.ones(2)}, legacy / f"checkpoint_ep{2**63}.pth")
    result = run_cli("ckpt", "adopt", "r", str(legacy), "--store", str(workdir / "store"), "--json")
    assert result.returncode == 1, result.stderr  # something was refused
    assert '"checkpoint_ep000003.pth"' in result.stdout and "beyond the largest storable" in result.stdout


def test_feature_files_that_are_not_yaml_are_fingerprinted_by_their_bytes(tmp_path: Path) -> None:
    binary, lf, crlf = tmp_path / "scaler.bin", tmp_path / "columns.txt", tmp_path / "columns.crlf.txt"
    binary.write_bytes(np.random.default_rng(0).bytes(4096))
    lf.write_bytes(b"open\nhigh\nlow\nclose\n")
    crlf.write_bytes(b"open\r\nhigh\r\nlow\r\nclose\r\n")
    first = compute([str(binary)])
    assert first is not None
    binary.write_bytes(binary.read_bytes()[:-1] + b"\x00")
    second = compute([str(binary)])
    assert second is not None and second.digest != first.digest
    with_lf, with_crlf = compute([str(lf)]), compute([str(crlf)])
    assert with_lf is not None and with_crlf is not None
    assert with_lf.digest != with_crlf.digest  # a CRLF line ending is a different file, not normalised away
