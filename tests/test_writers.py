"""Writers a /proc scan misses: a process that holds its file for a millisecond is still named (issue 11)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support import helper_command, run_cli, spawned, wait_until
from trainguard import CheckpointStore, Registry
from trainguard.supervise import WriteMonitor, _writers
from trainguard.supervise._procs import container_of

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fanotify/inotify are Linux")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs CAP_SYS_ADMIN")

# Writes one file, holds it open for no time at all, and exits at once.
QUICK_WRITER = "import sys; open(sys.argv[1], 'wb').write(b'w' * 1024)"

# Writes a file every 0.1 s until killed (a second, unguarded copy of a trainer).
LOOP_WRITER = textwrap.dedent("""\
    import os, sys, time
    for n in range(100_000):
        with open(os.path.join(sys.argv[1], f"model_{n}.bin"), "wb") as handle:
            handle.write(b"w")
        time.sleep(0.1)
    """)


@needs_root
def test_fanotify_names_a_writer_that_held_its_file_for_a_moment_and_exited(tmp_path: Path) -> None:
    target = tmp_path / "model_1.bin"
    with WriteMonitor([tmp_path]) as monitor:
        assert monitor.how == "fanotify" and monitor.limitation == ""
        writer = subprocess.run([sys.executable, "-c", QUICK_WRITER, str(target)], check=True, timeout=30)
        assert writer.returncode == 0
        writes = wait_until(
            lambda: [w for w in monitor.drain() if w.path == str(target)], timeout=10, what="the write"
        )
    # The pid is the kernel's word; the writer exited at once, so what else was seen of it may be None.
    assert writes[0].how == "fanotify" and writes[0].pid not in (None, os.getpid())
    assert writes[0].writer is None or "model_1.bin" in " ".join(writes[0].writer.cmdline)


@needs_root
def test_fanotify_ignores_writes_outside_the_watched_folders(tmp_path: Path) -> None:
    watched, other = tmp_path / "watched", tmp_path / "other"
    watched.mkdir()
    other.mkdir()
    with WriteMonitor([watched]) as monitor:
        subprocess.run([sys.executable, "-c", QUICK_WRITER, str(other / "x.bin")], check=True, timeout=30)
        subprocess.run([sys.executable, "-c", QUICK_WRITER, str(watched / "y.bin")], check=True, timeout=30)
        writes = wait_until(monitor.drain, timeout=10, what="the watched write")
    assert [w.path for w in writes] == [str(watched / "y.bin")]


def test_without_fanotify_inotify_sees_the_file_and_says_it_cannot_name_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(self: WriteMonitor) -> None:
        raise OSError(errno.EPERM, "fanotify_init")  # what an unprivileged watchdog gets

    monkeypatch.setattr(WriteMonitor, "_start_fanotify", refused)
    target = tmp_path / "sub" / "model_2.bin"
    with WriteMonitor([tmp_path]) as monitor:
        assert monitor.how == "inotify"
        assert "CAP_SYS_ADMIN" in monitor.limitation and "not their writers" in monitor.limitation
        target.parent.mkdir()  # a folder made after the monitor started is watched too
        wait_until(lambda: str(target.parent) in monitor._watches.values(), timeout=10)
        subprocess.run([sys.executable, "-c", QUICK_WRITER, str(target)], check=True, timeout=30)
        writes = wait_until(
            lambda: [w for w in monitor.drain() if w.path == str(target)], timeout=10, what="the write"
        )
    assert writes[0].how == "inotify" and writes[0].pid is None


@pytest.mark.parametrize(
    ("cgroup", "container"),
    [
        ("/system.slice/docker-" + "a" * 64 + ".scope", "a" * 12),
        ("/docker/" + "0123456789ab" + "c" * 52, "0123456789ab"),
        ("/kubepods/besteffort/pod1234/" + "f" * 64, "f" * 12),
        ("/machine.slice/libpod-" + "b" * 64 + ".scope/container", "b" * 12),
        ("/user.slice/user-0.slice/session-3.scope", None),
        ("/trainguard.swt.t4", None),
        ("", None),
    ],
)
def test_the_container_a_process_runs_in_is_read_from_its_cgroup(cgroup: str, container: str | None) -> None:
    assert container_of(cgroup) == container


@needs_root
def test_incident_scan_watch_names_an_unguarded_writer_of_the_store_and_of_the_trainers_folder(
    tmp_path: Path,
) -> None:
    store_dir, models = tmp_path / "store", tmp_path / "models"
    models.mkdir()
    script = tmp_path / "copy.py"
    script.write_text(LOOP_WRITER)
    url = f"sqlite:///{store_dir / '.trainguard' / 'registry.db'}"
    with CheckpointStore(store_dir, run="swt") as store:
        store.registry.set_limits("swt", {"max_episodes": 10})
        store.registry.charge("swt", episodes=12)  # over budget: shown in --json as well
    # A live lease held by another process (not this test's: the writers below are this test's children,
    # and a lease holder's descendants are the run's).
    subprocess.run(helper_command("acquire_and_exit.py", url, "swt"), check=True, timeout=60)
    with (
        spawned([sys.executable, str(script), str(store_dir)]) as in_store,
        spawned([sys.executable, str(script), str(models)]) as elsewhere,
    ):
        scan = run_cli(
            "incident", "scan", str(store_dir), "--watch", "2s", "--watch-dir", str(models), "--json"
        )
    assert scan.returncode == 1, scan.stderr
    assert "(fanotify)" in scan.stderr
    body = json.loads(scan.stdout)
    (findings,) = body["stores"]
    assert any(f"pid {in_store.pid}" in line and "copy.py" in line for line in findings["writers"])
    assert any(f"pid {elsewhere.pid}" in line for line in body["unowned_writes"])
    assert findings["over_budget"] and "episodes" in findings["over_budget"][0]
    assert findings["suspects"] == []  # /proc never caught either of them holding a file


@needs_root
def test_the_monitor_thread_stops_on_close(tmp_path: Path) -> None:
    monitor = WriteMonitor([tmp_path])
    reader = monitor._reader
    assert reader is not None and reader.is_alive()
    monitor.close()
    assert not reader.is_alive() and monitor.fd == -1
    assert monitor.drain() == []


def test_a_monitor_with_nothing_to_watch_watches_nothing() -> None:
    monitor = WriteMonitor([])
    assert (monitor.how, monitor.fd, monitor.drain()) == ("none", -1, [])
    monitor.close()
    assert _writers.Write("p", 0.0, "none").as_dict()["path"] == "p"


def _files(store: Path) -> list[tuple[str, int]]:
    # SQLite's -wal/-shm companions appear for any reader of a WAL database; the database must not change.
    return sorted(
        (str(p), p.stat().st_mtime_ns)
        for p in store.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    )


def test_scan_watch_with_no_foreign_writer_finds_nothing_and_changes_nothing(tmp_path: Path) -> None:
    with CheckpointStore(tmp_path / "store", run="swt"):
        pass
    before = _files(tmp_path / "store")
    scan = run_cli("incident", "scan", str(tmp_path / "store"), "--watch", "0.5s")
    assert scan.returncode == 0, scan.stderr
    assert "nothing found" in scan.stdout
    assert _files(tmp_path / "store") == before
    with Registry.open(f"sqlite:///{tmp_path / 'store' / '.trainguard' / 'registry.db'}", mode="read") as r:
        assert r.run("swt") is not None
