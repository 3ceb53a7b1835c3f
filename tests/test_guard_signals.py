"""Signals: the first SIGTERM finishes the episode and takes a final checkpoint; the second stops at once."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from guard_support import summary_of, worker, write_config
from support import spawned
from trainguard import Guard, Registry, StopReason
from trainguard.registry import LeaseState


def _registry(tmp_path: Path) -> Registry:
    return Registry.open(f"sqlite:///{tmp_path / 'store' / '.trainguard' / 'registry.db'}")


def _read_until(stream: IO[str] | None, prefix: str) -> None:
    assert stream is not None, "the process was started without a pipe"
    while True:
        line = stream.readline()
        assert line, f"stream ended before {prefix!r}"
        if prefix in line:
            return


def test_first_sigterm_finishes_the_episode_with_a_final_checkpoint(tmp_path: Path) -> None:
    config = write_config(tmp_path, "term")
    with spawned(
        worker(config, "--episode-seconds", "0.3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        _read_until(proc.stdout, "episode 2")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "SIGTERM received: finishing the current episode" in stderr
    summary = summary_of(stdout)
    assert summary["stop_reason"] == "signal"
    assert summary["episodes"] == [1, 2]  # episode 2 ran to its end
    assert summary["saved"] == [f"ep00000002-t{1}"]  # ...and was checkpointed, although not on the cadence
    assert summary["threads"] == ["MainThread"]
    with _registry(tmp_path) as registry:
        lease = registry.lease_info("term")
        assert lease is not None and lease.state == "released"
        assert [r.episode for r in registry.checkpoints("term")] == [2]
    leftovers = list((tmp_path / "store" / ".trainguard").glob("term*"))
    assert leftovers == []  # PID file and heartbeat file removed


def test_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    config = write_config(tmp_path, "term2")
    with spawned(
        worker(config, "--episode-seconds", "60"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        _read_until(proc.stdout, "episode 1")
        proc.send_signal(signal.SIGTERM)
        _read_until(proc.stderr, "send it again to stop at once")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        stopped_after = time.monotonic() - sent
    assert proc.returncode == 128 + signal.SIGTERM
    assert stopped_after < 10  # the episode had 60 s to go
    with _registry(tmp_path) as registry:
        lease = registry.lease_info("term2")
        assert lease is not None and lease.state == "released"  # the unwinding still released it
        stopped = next(e for e in registry.events("term2") if e.kind == "guard_stopped")
        assert stopped.detail["reason"] == "signal"
    assert list((tmp_path / "store" / ".trainguard").glob("term2*")) == []


def test_handlers_are_restored_and_no_thread_is_left(tmp_path: Path) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads_before = set(threading.enumerate())
    with Guard(run="handlers", store=str(tmp_path / "s")) as guard:
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        assert any(t.name == "trainguard-monitor" for t in threading.enumerate())
        pid_file = tmp_path / "s" / ".trainguard" / "handlers.pid"
        assert pid_file.read_text().strip() == str(__import__("os").getpid())
        assert (tmp_path / "s" / ".trainguard" / "handlers_heartbeat.json").exists()
    assert {s: signal.getsignal(s) for s in before} == before
    assert set(threading.enumerate()) == threads_before
    assert not pid_file.exists()
    assert guard.stop_reason is None


def test_no_handlers_outside_the_main_thread(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def train() -> None:
        with Guard(run="threaded", store=str(tmp_path / "s")) as guard:
            seen.append(signal.getsignal(signal.SIGTERM))
            for _ in guard.episodes():
                break

    thread = threading.Thread(target=train)
    thread.start()
    thread.join(60)
    assert seen == [before]


def test_an_exception_in_the_loop_is_recorded_and_cleans_up(tmp_path: Path) -> None:
    threads_before = set(threading.enumerate())

    def train(guard: Guard) -> None:
        for _ in guard.episodes():
            raise ValueError("nan loss")

    with pytest.raises(ValueError, match="nan loss"), Guard(run="boom", store=str(tmp_path / "s")) as guard:
        train(guard)
    assert (
        guard.stop is not None and guard.stop.reason is StopReason.ERROR and "nan loss" in guard.stop.detail
    )
    assert set(threading.enumerate()) == threads_before
    with Registry.open(f"sqlite:///{tmp_path / 's' / '.trainguard' / 'registry.db'}") as registry:
        lease = registry.lease_info("boom")
        assert lease is not None and lease.state is LeaseState.RELEASED
        assert registry.run("boom").episodes_spent == 1
