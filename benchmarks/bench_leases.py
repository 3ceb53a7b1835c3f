"""Lease renewals per second on SQLite and PostgreSQL (one process, back to back, each renewal a real
transaction with its audit event).

    .venv/bin/python benchmarks/bench_leases.py [--renewals 3000] [--rounds 3]
        [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import trainguard as tg


def renewals_per_second(url: str, count: int) -> float:
    with tg.Registry.open(url) as registry:
        run = f"bench-{uuid.uuid4().hex[:8]}"
        lease = registry.acquire(run, ttl=60)
        for _ in range(50):  # warm the connection pool and statement caches
            lease.renew()
        started = time.perf_counter()
        for _ in range(count):
            lease.renew()
        elapsed = time.perf_counter() - started
        lease.release()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--renewals", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="benchmarks") as tmp:
        targets = {
            "SQLite (WAL, file on /work)": (f"sqlite:///{Path(tmp).resolve() / 'registry.db'}", 2000),
            "PostgreSQL 15 (127.0.0.1)": (args.postgres, 1000),
        }
        results: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(args.rounds):  # interleaved, so noise hits both backends
            for name, (url, _) in targets.items():
                results[name].append(renewals_per_second(url, args.renewals))
    print(f"\n{args.renewals} renewals per round, median of {args.rounds} rounds\n")
    print("| backend | renewals/s (median) | min | max | target | ratio to target |")
    print("|---|---|---|---|---|---|")
    for name, (_, target) in targets.items():
        values = results[name]
        median = statistics.median(values)
        print(
            f"| {name} | {median:,.0f} | {min(values):,.0f} | {max(values):,.0f} | >= {target:,} | "
            f"{median / target:.2f} |"
        )


if __name__ == "__main__":
    main()
