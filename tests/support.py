"""Test helpers: waiting on conditions with deadlines, spawning and reaping helper processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

HELPERS = Path(__file__).parent / "helpers"
T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def helper_command(script: str, *args: str) -> list[str]:
    return [sys.executable, str(HELPERS / script), *args]


@contextmanager
def spawned(args: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    """Start a process and always reap it: SIGKILL by pid if it is still running when the test ends."""
    proc: subprocess.Popen[str] = subprocess.Popen(args, text=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The real ``trainguard`` command line in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "trainguard", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


REPO = Path(__file__).resolve().parent.parent


def run_job(command: list[str], log: Path, timeout: float) -> int:
    """Run ``command`` (a job of several processes: loopback only) in a session of its own, and reap the
    whole session if it outlives ``timeout``; its exit status."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src") + os.pathsep + str(REPO),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "MASTER_ADDR": "127.0.0.1",
    }
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return process.wait(timeout=timeout)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # the job's own session: the launcher and its ranks
                process.wait()


def torchrun_command(script: Path, args: list[str], *, ranks: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={ranks}",
        str(script),
        *args,
    ]


def torchrun_reports(
    script: Path, args: list[str], out: Path, *, ranks: int, log: str = "job.log", timeout: float = 240
) -> list[dict[str, Any]]:
    """Run ``script`` under ``torchrun --standalone`` on ``ranks`` processes (loopback, gloo); every rank
    writes OUT/rank-R.json with what it saw: those reports, by rank (stale ones are removed first)."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rank-*.json"):
        old.unlink()
    run_job(torchrun_command(script, args, ranks=ranks), out / log, timeout)
    return sorted((json.loads(p.read_text()) for p in out.glob("rank-*.json")), key=lambda e: int(e["rank"]))
