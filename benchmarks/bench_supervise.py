"""Supervision costs and latencies, side by side in one run.

1. watchdog detection latency (budget overrun -> first signal) and SIGTERM -> verified death, for a child that
   dies on SIGTERM and one that ignores it, against the configured interval and grace;
2. watchdog CPU time per sweep with 100 registered runs (held, heartbeating, with stores to scan);
3. finding processes that hold files under a store: trainguard's /proc scan vs `lsof +D STORE` vs `fuser`.

    .venv/bin/python benchmarks/bench_supervise.py [--rounds 5] [--runs 100]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

import trainguard as tg
from trainguard.supervise import holders_under
from trainguard.supervise.watchdog import Watchdog

HELPERS = Path(__file__).resolve().parent.parent / "tests" / "helpers"


def latency(scratch: Path, rounds: int, interval: float, grace: float) -> None:
    rows: dict[str, tuple[list[float], list[float]]] = {
        "dies on SIGTERM": ([], []),
        "ignores SIGTERM": ([], []),
    }
    for round_ in range(rounds):
        for kind, flag in (("dies on SIGTERM", "--die-on-sigterm"), ("ignores SIGTERM", "--ignore-sigterm")):
            root = scratch / f"lat-{round_}-{flag}"
            root.mkdir()
            config = root / "guard.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "run": "lat",
                        "store": str(root / "store"),
                        "limits": {"max_runtime": "1s"},
                        "monitoring": {"heartbeat_interval": "0.1s", "lease_ttl": "1s"},
                        "watchdog": {"grace": f"{grace}s"},
                    }
                )
            )
            worker = subprocess.Popen(
                [sys.executable, str(HELPERS / "stubborn_worker.py"), str(config), "--ignore-budget", flag],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            dog = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "trainguard",
                    "watchdog",
                    "--store",
                    str(root / "store"),
                    "--interval",
                    f"{interval}s",
                ],
                stderr=subprocess.DEVNULL,
            )
            try:
                worker.wait(timeout=60)
            finally:
                dog.terminate()
                dog.wait(timeout=30)
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
            with tg.Registry.open(f"sqlite:///{root / 'store' / '.trainguard' / 'registry.db'}") as registry:
                started = next(e for e in registry.events("lat") if e.kind == "guard_started")
                stopped = next(e for e in registry.events("lat") if e.kind == "watchdog_stopped")
            ladder = stopped.detail["ladder"]
            # Runtime is charged up to two heartbeats ahead, so an overrun is certain 0.2 s after the limit.
            rows[kind][0].append(ladder["first_signal_at"] - (started.at + 1.0 + 0.2))
            rows[kind][1].append(ladder["term_to_gone"])
    print(f"\nwatchdog interval {interval:g}s, grace {grace:g}s, median of {rounds} rounds\n")
    print(
        "| child | overrun -> first signal | ratio to interval | SIGTERM -> verified gone | ratio to grace |"
    )
    print("|---|---|---|---|---|")
    for kind, (detect, gone) in rows.items():
        d, g = statistics.median(detect), statistics.median(gone)
        print(f"| {kind} | {d:.2f} s | {d / interval:.2f} | {g:.3f} s | {g / grace:.2f} |")


def sweep_cpu(scratch: Path, runs: int, rounds: int) -> None:
    url = f"sqlite:///{scratch / 'many.db'}"
    with tg.Registry.open(url) as registry:
        names = [f"run-{i:03d}" for i in range(runs)]
        tokens: dict[str, int] = {}
        for name in names:
            with tg.CheckpointStore(scratch / "stores" / name, run=name, registry=registry) as store:
                lease = registry.acquire(name, ttl=3600)
                tokens[name] = lease.token
                registry.apply_limits(
                    name,
                    {
                        "max_episodes": 10**9,
                        "max_runtime": 10**7.0,
                        "heartbeat_interval": 60,
                        "stall_timeout": 3600,
                    },
                    lease=lease,
                )
                for episode in (1, 2, 3):
                    store.save({"w": np.zeros(256, dtype=np.float32)}, episode=episode, lease=lease)
                registry.record_heartbeat(name, lease.token, {"pid": 0, "episode": 3, "last_progress_age": 0})
        watchdog = Watchdog(registry, interval=5.0)
        watchdog.sweep()  # warm caches
        cpu, wall = [], []
        for _ in range(rounds):
            for name in names:  # keep every run fresh, as live trainers would
                registry.record_heartbeat(
                    name, tokens[name], {"pid": 0, "episode": 3, "last_progress_age": 0}
                )
            started_cpu, started_wall = time.process_time(), time.perf_counter()
            report = watchdog.sweep()
            cpu.append(time.process_time() - started_cpu)
            wall.append(time.perf_counter() - started_wall)
            assert not report.findings, report.findings
    c, w = statistics.median(cpu), statistics.median(wall)
    print(f"\n{runs} registered runs (held, heartbeating, 3 checkpoints each), median of {rounds} sweeps\n")
    print("| sweep | CPU per sweep | wall per sweep | share of one core at a 5 s interval | target |")
    print("|---|---|---|---|---|")
    print(
        f"| full (runs + orphans + rogue scan of {runs} stores) | {c * 1000:.0f} ms | {w * 1000:.0f} ms "
        f"| {100 * c / 5:.2f} % | < 1 % |"
    )


def holder_scan(scratch: Path, rounds: int) -> None:
    store = scratch / "scan-store"
    for i in range(200):
        directory = store / f"ep{i:05d}"
        directory.mkdir(parents=True)
        for name in ("tensors.safetensors", "tree.json", "MANIFEST.json"):
            (directory / name).write_bytes(b"x" * 64)
    holders = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"f = open({str(store / f'ep{i:05d}' / 'tree.json')!r}); import time; time.sleep(120)",
            ]
        )
        for i in range(3)
    ]
    try:
        time.sleep(1.0)  # let them open their files (a benchmark, not a test: no condition to wait on)
        files = [str(p) for p in store.rglob("*") if p.is_file()]
        tools: dict[str, Callable[[], object]] = {
            "trainguard /proc scan": lambda: len(holders_under([store])),
            "lsof +D STORE": lambda: subprocess.run(
                ["lsof", "+D", str(store)], capture_output=True, check=False
            ),
            "fuser -v FILES": lambda: subprocess.run(
                ["fuser", "-v", *files], capture_output=True, check=False
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in tools}
        for _ in range(rounds):
            for name, tool in tools.items():
                started = time.perf_counter()
                tool()
                times[name].append(time.perf_counter() - started)
        found = len(holders_under([store]))
    finally:
        for proc in holders:
            proc.kill()
            proc.wait()
    base = statistics.median(times["trainguard /proc scan"])
    print(
        f"\nstore with 600 files in 200 directories, 3 holders (found: {found}), median of {rounds} rounds\n"
    )
    print("| tool | time | ratio to trainguard |")
    print("|---|---|---|")
    for name, values in times.items():
        m = statistics.median(values)
        print(f"| {name} | {m * 1000:.1f} ms | {m / base:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--grace", type=float, default=2.0)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="trainguard-bench-", dir=Path(__file__).parent))
    try:
        latency(scratch, args.rounds, args.interval, args.grace)
        sweep_cpu(scratch, args.runs, args.rounds)
        holder_scan(scratch, args.rounds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
