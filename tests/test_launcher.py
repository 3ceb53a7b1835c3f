"""`trainguard run`: lease hand-off, budget enforcement, legacy scripts, no orphans after a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from guard_support import write_config
from support import helper_command, spawned, wait_until
from trainguard import Registry
from trainguard.supervise import Watchdog, is_same_process_alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the launcher needs Linux")


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / '.trainguard' / 'registry.db'}"


def _run(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainguard", "run", *args]


LEGACY = textwrap.dedent("""\
    import os, sys, time
    directory = sys.argv[1]
    for episode in range(1, 1000):
        time.sleep(1.0)  # the launcher must notice a file and stop the script before its next one
        with open(os.path.join(directory, f"checkpoint_ep{episode:06d}.pth"), "wb") as handle:
            handle.write(b"legacy weights")
        print("wrote", episode, flush=True)
    """)


def test_legacy_script_is_stopped_when_its_files_show_the_budget_spent(tmp_path: Path) -> None:
    script, checkpoints = tmp_path / "legacy_train.py", tmp_path / "ckpts"
    script.write_text(LEGACY)
    checkpoints.mkdir()
    done = subprocess.run(
        _run(
            "--run",
            "legacy",
            "--store",
            str(tmp_path / "store"),
            "--max-episodes",
            "5",
            "--grace",
            "2s",
            "--watch-pattern",
            r"checkpoint_ep(?P<episode>\d+)\.pth",
            "--watch-dir",
            str(checkpoints),
            "--",
            sys.executable,
            str(script),
            str(checkpoints),
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    written = sorted(p.name for p in checkpoints.iterdir())
    assert written[-1] == "checkpoint_ep000005.pth"  # the one that spends the budget, and nothing after it
    assert "5 of 5 episodes spent" in done.stderr
    with Registry.open(_url(tmp_path)) as registry:
        exited = next(e for e in registry.events("legacy") if e.kind == "launcher_exited")
        assert exited.detail["reason"] == "episodes" and exited.detail["count_seen"] == 5
        assert registry.run("legacy").episodes_spent == 5
        lease = registry.lease_info("legacy")
        assert lease is not None and lease.state == "released"
        assert registry.processes("legacy") == []  # launcher and child registrations ended


def test_the_guard_inside_adopts_the_launchers_lease_and_sigterm_is_forwarded(tmp_path: Path) -> None:
    config = write_config(tmp_path, "adopted")
    command = _run(
        "-c",
        str(config),
        "--",
        *helper_command("guard_worker.py", str(config), "--episode-seconds", "0.3", "--linger", "2"),
    )
    with spawned(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as launcher:
        assert launcher.stdout is not None
        while not (line := launcher.stdout.readline()).startswith("episode 2"):
            assert line, f"the launcher ended early: {launcher.stderr.read() if launcher.stderr else ''}"
        launcher.send_signal(signal.SIGTERM)
        stdout, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, stderr  # the child finished its episode, checkpointed, exited 0
    assert "SUMMARY" in stdout and '"stop_reason": "signal"' in stdout
    with Registry.open(_url(tmp_path)) as registry:
        events = registry.events("adopted")
        acquired = [e for e in events if e.kind == "lease_acquired"]
        started = next(e for e in events if e.kind == "guard_started")
        assert len(acquired) == 1 and started.detail["adopted"] and started.token == acquired[0].token
        assert [r.episode for r in registry.checkpoints("adopted")] == [2]
        exited = next(e for e in events if e.kind == "launcher_exited")
        assert exited.detail["reason"] == "signal"
        # Runtime is charged once: by the launcher until the Guard registered, by the Guard after that.
        launched = next(e for e in events if e.kind == "launcher_started")
        spent = registry.run("adopted").runtime_spent
        assert spent <= exited.at - launched.at + 0.5


def test_the_launcher_enforces_runtime_on_a_runaway(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "clocked",
        limits={"max_runtime": "1s"},
        watchdog={"grace": "1s"},
        monitoring={"heartbeat_interval": "0.1s", "lease_ttl": "1s"},
    )
    command = _run(
        "-c", str(config), "--", *helper_command("stubborn_worker.py", str(config), "--ignore-budget")
    )
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    assert "runtime" in done.stderr and elapsed < 8


def test_a_sigkilled_launcher_leaves_no_survivors_after_one_sweep(tmp_path: Path) -> None:
    config = write_config(tmp_path, "tree", watchdog={"grace": "1s"})
    pids_file = str(tmp_path / "pids")
    command = _run("-c", str(config), "--", *helper_command("process_tree.py", pids_file))
    tree: list[tuple[int, int]] = []
    with spawned(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as launcher:
        try:
            levels = ("level1", "level2", "level3", "daemon")
            # Written, not just created: the helper opens each file before it writes the identity into it.
            wait_until(
                lambda: all(
                    len(Path(f"{pids_file}.{level}").read_text().split()) == 2
                    if Path(f"{pids_file}.{level}").exists()
                    else False
                    for level in levels
                ),
                timeout=30,
            )
            for level in levels:
                pid_text, start_text = Path(f"{pids_file}.{level}").read_text().split()
                tree.append((int(pid_text), int(start_text)))
            daemon = psutil.Process(tree[3][0])
            assert daemon.ppid() != tree[1][0]  # detached: re-parented away from its parent
            os.kill(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=10)
            with Registry.open(_url(tmp_path)) as registry:
                report = Watchdog(registry, interval=1.0, scan_rogues=False).sweep()  # exactly one sweep
            assert {f.reason for f in report.findings} >= {"orphan"}
            survivors = [pid for pid, start in tree if is_same_process_alive(pid, start)]
            assert survivors == []
        finally:
            for pid, start in tree:  # only if the test failed: never leave them running
                if is_same_process_alive(pid, start):
                    os.kill(pid, signal.SIGKILL)


def test_runtime_is_charged_once_when_a_guard_takes_over_the_accounting(tmp_path: Path) -> None:
    config = write_config(tmp_path, "once", monitoring={"heartbeat_interval": "0.1s", "lease_ttl": "1s"})
    # The child lingers after its Guard exited (a trainer tearing down): the launcher, still watching, must
    # not take the accounting back and charge the whole run again.
    worker = helper_command(
        "guard_worker.py",
        str(config),
        "--episode-seconds",
        "0.2",
        "--episodes-per-run",
        "3",
        "--linger",
        "3",
    )
    done = subprocess.run(
        _run("-c", str(config), "--", *worker), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    with Registry.open(_url(tmp_path)) as registry:
        events = registry.events("once")
        launched = next(e for e in events if e.kind == "launcher_started")
        guard_stopped = next(e for e in events if e.kind == "guard_stopped")
        spent = registry.run("once").runtime_spent
    assert spent <= guard_stopped.at - launched.at + 0.5


@pytest.mark.parametrize("containment", ["cgroup", "record"])
def test_an_escapee_without_the_marker_is_found_after_the_launcher_is_killed(
    tmp_path: Path, containment: str
) -> None:
    # A descendant that drops everything the launcher gave it (double fork, setsid, `env -i`) is still the
    # run's: by its cgroup, or - where no cgroup can be made - by the launcher's record of its descendants.
    config = write_config(tmp_path, "escape", monitoring={"heartbeat_interval": "0.1s", "lease_ttl": "1s"})
    out = tmp_path / "escapee"
    env = {**os.environ, "TRAINGUARD_CGROUP": "on" if containment == "cgroup" else "off"}
    command = _run("-c", str(config), "--", *helper_command("escapee.py", str(out)))
    escapee: tuple[int, int] | None = None
    with spawned(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) as launcher:
        try:
            wait_until(out.exists, timeout=30, what="the escapee")
            pid_text, ticks_text = out.read_text().split()
            escapee = int(pid_text), int(ticks_text)
            assert "TRAINGUARD_RUN_ID" not in psutil.Process(escapee[0]).environ()  # no marker to find
            with Registry.open(_url(tmp_path)) as registry:
                started = next(e for e in registry.events("escape") if e.kind == "launcher_started")
                if containment == "cgroup":
                    assert started.detail["contained_by"].startswith("cgroup")
                else:
                    assert started.detail["contained_by"] == "a record of descendants in the store"
                    record = tmp_path / "store" / ".trainguard" / f"escape.t{started.token}.descendants"
                    wait_until(lambda: pid_text in record.read_text() if record.exists() else False)
                os.kill(launcher.pid, signal.SIGKILL)  # no clean-up from the launcher
                launcher.wait(timeout=10)
                report = Watchdog(registry, interval=1.0, scan_rogues=False).sweep()
            assert "orphan" in [f.reason for f in report.findings]
            wait_until(lambda: not is_same_process_alive(*escapee), timeout=10, what="the escapee to go")
            assert not list(Path("/sys/fs/cgroup").rglob("trainguard.escape.t*"))  # and its cgroup with it
        finally:
            if escapee is not None and is_same_process_alive(*escapee):  # the test failed: never leave it
                os.kill(escapee[0], signal.SIGKILL)


def test_a_second_launcher_is_refused_in_one_line_and_takeover_really_takes_over(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    base = ["--run", "twice", "--store", store, "--grace", "5s"]
    with spawned(
        _run(*base, "--", sys.executable, "-c", "import time; time.sleep(60)"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as first:
        url = _url(tmp_path)

        def held() -> bool:
            try:
                with Registry.open(url, mode="read") as registry:
                    return bool(registry.processes("twice"))
            except Exception:
                return False

        wait_until(held, timeout=30, what="the first launcher to hold the run")
        refused = subprocess.run(
            _run(*base, "--", sys.executable, "-c", "print('second ran')"),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert refused.returncode == 3 and "second ran" not in refused.stdout
        line = refused.stderr.strip()
        assert len(line.splitlines()) == 1 and "Traceback" not in line
        assert "is held by pid" in line and "run --takeover" in line
        taken = subprocess.run(
            _run(*base, "--takeover", "--", sys.executable, "-c", "print('second ran')"),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert taken.returncode == 0 and "second ran" in taken.stdout, taken.stderr
        _, stderr = first.communicate(timeout=60)
    assert first.returncode == 3, stderr  # the replaced launcher stopped its child: its lease was lost
    assert "lease_lost" in stderr


def test_a_guard_that_reads_the_launchers_config_starts_whatever_limits_the_file_sets(tmp_path: Path) -> None:
    # `Guard.from_config()` in the child reads $TRAINGUARD_CONFIG, the launcher's effective config: it must
    # parse for a file with no runtime limit (failsafes dumped with their defaults once made it refuse).
    config = write_config(tmp_path, "effective", limits={"max_episodes": 5})
    child = (
        "from trainguard import Guard\nwith Guard.from_config() as g:\n    print('guarded', g.lease.token)"
    )
    command = _run("-c", str(config), "--", sys.executable, "-c", child)
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "guarded 1" in done.stdout
