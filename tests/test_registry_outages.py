"""The registry goes away, for real: a private PostgreSQL server that the test stops, or a proxy that eats a
COMMIT's reply (issue 10, defects 4 and 8).

- A lost COMMIT reply never deletes a committed checkpoint's files: the save raises CommitOutcomeUnknown,
  the staging directory stays, and the next open rolls it forward by the registry's answer.
- An outage far shorter than the lease costs a pause: a Guard's loop and `trainguard run` carry on and
  finish their budget. One longer than the lease ends the run by self-fencing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from guard_support import summary_of, worker, write_config
from pg_instance import CommitReplyDropper, PrivatePostgres, private_postgres
from support import spawned, wait_until
from trainguard import CheckpointState, CheckpointStore, CommitOutcomeUnknown, Guard, Registry, StopReason
from trainguard.checkpoints import Validation
from trainguard.checkpoints.layout import STAGING

STATE = {"w": np.arange(64, dtype=np.float32)}


@pytest.fixture
def server() -> Iterator[PrivatePostgres]:
    if os.geteuid() != 0:
        pytest.skip("a private PostgreSQL server is started as the postgres user (CI runs as root)")
    with private_postgres() as started:
        yield started


def test_a_lost_commit_reply_keeps_the_checkpoint_and_recovery_rolls_it_forward(
    tmp_path: Path, server: PrivatePostgres
) -> None:
    proxy = CommitReplyDropper(server.port)
    root = tmp_path / "store"
    try:
        with CheckpointStore(root, run="r", registry=proxy.url()) as store:
            lease = store.registry.acquire("r", ttl=2)  # how long the store keeps asking
            first = store.save(STATE, episode=1, lease=lease).name
            proxy.armed.set()
            with pytest.raises(CommitOutcomeUnknown) as raised:
                store.save(STATE, episode=2, lease=lease)
        assert proxy.tripped.is_set() and "outcome unknown" in str(raised.value)
        # The registry did commit it (asked directly, not through the proxy) ...
        with Registry.open(server.url, mode="read") as direct:
            committed = direct.checkpoints("r")
        assert [r.episode for r in committed] == [1, 2]
        second = committed[-1].name
        # ... and its files were kept, staged.
        staged = os.listdir(root / STAGING)
        assert len(staged) == 1 and staged[0].startswith(second)
        assert not (root / second).exists()

        proxy.heal()
        with CheckpointStore(root, run="r", registry=proxy.url()) as store:
            assert store.recovery.rolled_forward == [second]
            assert [r.name for r in store.checkpoints()] == [first, second]
            assert store.load("latest").episode == 2 and store.verify(second).ok
        assert os.listdir(root / STAGING) == []
    finally:
        proxy.close()


def test_an_unknown_outcome_that_did_not_commit_is_kept_until_recovery_can_judge_it(
    tmp_path: Path, server: PrivatePostgres
) -> None:
    """The other answer: the registry never recorded the commit (it became unreachable before the COMMIT
    was sent). The files are still kept - this process cannot know that - and recovery judges them by the
    registry's answer: nothing names them, so they are an ordinary staging directory of their writer."""
    proxy = CommitReplyDropper(server.port)
    root = tmp_path / "store"
    # A validator runs at step 4, after the files are staged and before the registry decides: cut there.
    cut_before_deciding = Validation(hooks=(lambda _staging, _manifest: proxy.cut(),))
    try:
        with CheckpointStore(root, run="r", registry=proxy.url(), validation=cut_before_deciding) as store:
            lease = store.registry.acquire("r", ttl=1)
            with pytest.raises(CommitOutcomeUnknown):
                store.save(STATE, episode=1, lease=lease)
        staged = os.listdir(root / STAGING)
        assert len(staged) == 1
        proxy.heal()
        with Registry.open(server.url, mode="read") as direct:
            assert direct.checkpoints("r", states=None) == []
        with CheckpointStore(root, run="r", registry=proxy.url()) as store:
            # Not rolled forward (nothing committed it); left only because its writer - this process - lives.
            assert store.recovery.rolled_forward == [] and store.recovery.left_for_live_writer == staged
            assert store.latest() is None
    finally:
        proxy.close()


def _outage(server: PrivatePostgres, after: float, seconds: float, done: threading.Event) -> threading.Thread:
    def cut() -> None:
        time.sleep(after)
        server.stop("fast")
        time.sleep(seconds)
        server.start()
        done.set()

    thread = threading.Thread(target=cut, daemon=True)
    thread.start()
    return thread


def test_a_guard_trains_through_an_outage_shorter_than_its_lease(
    tmp_path: Path, server: PrivatePostgres
) -> None:
    restarted = threading.Event()
    guard = Guard(
        run="outage",
        store=str(tmp_path / "store"),
        registry=server.url,
        max_episodes=30,
        heartbeat_interval=0.2,
        lease_ttl=30,
        install_signal_handlers=False,
    )
    done: list[int] = []
    with guard:
        cut = _outage(server, after=0.5, seconds=2.0, done=restarted)
        for episode in guard.episodes():
            time.sleep(0.1)
            done.append(episode)
            if episode % 5 == 0:
                guard.save({"w": np.full(4, episode, dtype=np.float32)})
        cut.join(30)
    assert restarted.is_set()
    assert done == list(range(1, 31)), done
    assert guard.stop_reason is StopReason.EPISODES and not guard.fenced
    with Registry.open(server.url, mode="read") as registry:
        saved = [r.episode for r in registry.checkpoints("outage")]
        assert saved == [5, 10, 15, 20, 25, 30]
        assert registry.run("outage").episodes_spent == 30


def test_an_outage_longer_than_the_lease_fences_the_guard(tmp_path: Path, server: PrivatePostgres) -> None:
    guard = Guard(
        run="long-outage",
        store=str(tmp_path / "store"),
        registry=server.url,
        max_episodes=1000,
        heartbeat_interval=0.2,
        lease_ttl=2,
        install_signal_handlers=False,
    )
    with guard:
        server.stop("fast")
        try:
            started = time.monotonic()
            for _ in guard.episodes():
                time.sleep(0.05)
            took = time.monotonic() - started
        finally:
            server.start()
    assert guard.stop_reason is StopReason.LEASE_LOST and guard.fenced
    assert (
        guard.stop is not None and "registry unreachable for longer than the lease ttl" in guard.stop.detail
    )
    assert took < 10, took  # ended by the lease (2 s), not by something slower


def test_trainguard_run_supervises_through_an_outage_shorter_than_the_lease(
    tmp_path: Path, server: PrivatePostgres
) -> None:
    config = write_config(
        tmp_path,
        "run-outage",
        registry=server.url,
        limits={"max_episodes": 25},
        monitoring={"heartbeat_interval": "0.2s", "lease_ttl": "30s", "resource_check_interval": "0.2s"},
    )
    command = [
        *(sys.executable, "-m", "trainguard", "run", "-c", str(config), "--"),
        *worker(config, "--episode-seconds", "0.1", "--save-every-episode"),
    ]
    restarted = threading.Event()
    with spawned(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        wait_until(lambda: proc.stdout is not None and "episode 2" in proc.stdout.readline(), timeout=60)
        cut = _outage(server, after=0.0, seconds=2.0, done=restarted)
        stdout, stderr = proc.communicate(timeout=120)
        cut.join(30)
    assert restarted.is_set()
    assert proc.returncode == 3, stderr  # its episode budget ended it: a guard rule, exit 3
    assert "stopped (episodes) by the Guard in the child (exit 3)" in stderr
    summary = summary_of(stdout)
    assert summary["episodes"][-1] == 25 and summary["stop_reason"] == "episodes", summary
    assert not summary["fenced"] and summary["save_errors"] == []
    with Registry.open(server.url, mode="read") as registry:
        assert registry.run("run-outage").episodes_spent == 25
        assert all(r.state is CheckpointState.COMMITTED for r in registry.checkpoints("run-outage"))
