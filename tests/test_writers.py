"""Writers a /proc scan misses: a process that holds its file for a millisecond is still named (issue 11)."""

from __future__ import annotations

import json
import os
import sqlite3
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
    # (an exiting process may still be seen, as a zombie without a command line)
    seen = writes[0].writer
    assert seen is None or seen.cmdline == [] or "model_1.bin" in " ".join(seen.cmdline)


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


def test_without_fanotify_inotify_sees_the_file_and_says_it_cannot_name_the_writer(tmp_path: Path) -> None:
    # fanotify=False: what an unprivileged watchdog gets (fanotify_init: EPERM without CAP_SYS_ADMIN).
    (tmp_path / "sub").mkdir()
    target = tmp_path / "sub" / "model_2.bin"
    with WriteMonitor([tmp_path], fanotify=False) as monitor:
        assert monitor.how == "inotify"
        assert "CAP_SYS_ADMIN" in monitor.limitation and "not their writers" in monitor.limitation
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
def test_the_helper_is_reaped_on_close(tmp_path: Path) -> None:
    monitor = WriteMonitor([tmp_path])
    helper = monitor._helper
    assert helper is not None and monitor.running
    monitor.close()
    assert helper.returncode is not None and not monitor.running  # reaped, not left behind
    assert monitor.drain() == []


LOCK_ATTEMPT = """\
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], timeout=0.2, isolation_level=None)
try:
    connection.execute("BEGIN IMMEDIATE")
    print("acquired")
except sqlite3.OperationalError as error:
    print(error)
"""


def _try_lock(database: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", LOCK_ATTEMPT, str(database)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


@needs_root
def test_watching_a_store_never_drops_this_processs_sqlite_locks_on_its_registry(tmp_path: Path) -> None:
    """The registry lives under the store a watchdog watches. fanotify hands the reader a descriptor of
    every file closed after writing - registry.db included - and closing any descriptor of a file drops all
    of the process's POSIX locks on it: a watchdog reading the events itself would lose SQLite's lock in
    the middle of its own transaction (how a demo's registry was found "malformed"). The events are read
    in a helper process, so this process's lock holds."""
    store = tmp_path / "store"
    CheckpointStore(store, run="swt").close()
    database = store / ".trainguard" / "registry.db"
    with WriteMonitor([store]) as monitor:
        held = sqlite3.connect(database, isolation_level=None)
        try:
            held.execute("BEGIN IMMEDIATE")  # this process holds the write lock
            assert _try_lock(database) == "database is locked"  # ...and closing its file makes an event
            wait_until(
                lambda: any(w.path == str(database) for w in monitor.drain()),
                timeout=10,
                what="the registry's close-after-write event",
            )
            assert _try_lock(database) == "database is locked"  # still ours
        finally:
            held.execute("ROLLBACK")
            held.close()
    assert _try_lock(database) == "acquired"


def test_a_monitor_with_nothing_to_watch_watches_nothing() -> None:
    monitor = WriteMonitor([])
    assert (monitor.how, monitor.running, monitor.drain()) == ("none", False, [])
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
