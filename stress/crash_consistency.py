"""Crash consistency: SIGKILL a checkpoint writer at random moments and check the store after every kill.

After each kill: every committed checkpoint verifies and loads, the newest committed one is what
``checkpoints()`` returns last, and it is at least as new as the last save the writer saw return.

The test suite runs 200+ kills through ``run_campaign``; for a longer run:

    .venv/bin/python stress/crash_consistency.py --kills 5000
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from crash_bucket import check_bucket

from trainguard import CheckpointStore

SERVER = Path(__file__).resolve().parent.parent / "tests" / "helpers" / "crash_server.py"


@dataclass
class CampaignResult:
    kills: int = 0
    checkpoints_verified: int = 0
    newest_episode: int = 0
    recovered_staging: int = 0
    rolled_forward: int = 0
    failures: list[str] = field(default_factory=list)


def _check(root: Path, run: str, report: Path, result: CampaignResult) -> None:
    lines = report.read_text().splitlines() if report.exists() else []
    acknowledged = int(lines[-1].split()[0]) if lines else 0
    with CheckpointStore(root, run=run) as store:  # opening runs recovery
        result.recovered_staging += len(store.recovery.removed_staging)
        result.rolled_forward += len(store.recovery.rolled_forward)
        committed = store.checkpoints()
        for record in committed:
            report_ = store.verify(record.name)
            if not report_.ok:
                result.failures.append(f"kill {result.kills}: {record.name}: {report_.problems}")
                continue
            loaded = store.load(record.name)
            if int(loaded.state["w"][0]) != record.episode:
                result.failures.append(f"kill {result.kills}: {record.name} holds the wrong data")
            result.checkpoints_verified += 1
        newest = committed[-1].episode if committed else 0
        if newest < acknowledged:
            result.failures.append(
                f"kill {result.kills}: newest committed {newest} < acknowledged {acknowledged}"
            )
        if os.listdir(root / ".staging"):
            result.failures.append(
                f"kill {result.kills}: staging left after recovery: {os.listdir(root / '.staging')}"
            )
        result.newest_episode = newest


class _Lines:
    """The server's output lines, read on a thread so waiting for one can have a deadline."""

    def __init__(self, server: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        assert server.stdout is not None
        stream = server.stdout

        def pump() -> None:
            for line in stream:
                self.queue.put(line)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        """The next line starting with ``prefix``; other lines (from earlier writers) are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no {prefix!r} from the crash server within {timeout}s") from None
            if line.startswith(prefix):
                return line


def run_campaign(
    directory: Path,
    kills: int,
    *,
    seed: int = 0,
    max_delay: float = 0.08,
    store: str | None = None,
    registry: str | None = None,
) -> CampaignResult:
    """Fork a writer, SIGKILL it after a random delay, check the store; ``kills`` times. ``store``: an
    s3:// URL (with ``registry``; the AWS variables point at the server) instead of ``directory/store``."""
    rng = random.Random(seed)
    root, report, run = directory / "store", directory / "report.txt", "crash"
    result = CampaignResult()
    where = store or str(root)
    server = subprocess.Popen(
        [sys.executable, str(SERVER), where, run, str(report), *([registry] if registry else [])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None
    lines = _Lines(server)
    writer_pid = 0
    try:
        lines.wait_for("warm", timeout=120)
        for kill in range(kills):
            server.stdin.write(f"go {seed * 100_000 + kill}\n")
            server.stdin.flush()
            writer_pid = int(lines.wait_for("started").split()[1])
            # The random moment is the experiment. One kill in five lands in start-up (opening the store,
            # recovery, acquiring the lease); the rest once the writer is saving, anywhere in staging,
            # fsync, commit, rename or retention.
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0.0, 0.02))
            else:
                lines.wait_for(f"ready {writer_pid}")
                time.sleep(rng.uniform(0.0, max_delay))
            os.kill(writer_pid, signal.SIGKILL)
            server.stdin.write(f"reap {writer_pid}\n")
            server.stdin.flush()
            lines.wait_for("reaped")
            writer_pid = 0
            result.kills += 1
            if store is None:
                _check(root, run, report, result)
            else:
                check_bucket(store, registry or "", run, report, result)
    finally:
        if writer_pid:
            os.kill(writer_pid, signal.SIGKILL)
        server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument(
        "--max-delay", type=float, default=0.08, help="seconds; kills land uniformly before it"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainguard-crash-") as tmp:
        started = time.monotonic()
        result = run_campaign(Path(tmp), args.kills, seed=args.seed, max_delay=args.max_delay)
        elapsed = time.monotonic() - started
    print(
        f"seed {args.seed}: {result.kills} kills in {elapsed:.0f}s, {result.checkpoints_verified} checkpoint "
        f"verifications, newest episode {result.newest_episode}, {result.recovered_staging} staging dirs "
        f"removed, {result.rolled_forward} rolled forward, {len(result.failures)} failures"
    )
    for failure in result.failures[:20]:
        print("FAIL", failure)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
