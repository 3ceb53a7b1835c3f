"""The Guard's costs to a training loop, side by side in one run.

1. one ``guard.tick()`` vs a no-op Python function call, in the same loop;
2. how long a 1 GiB ``guard.save`` blocks the loop: async (snapshot into reusable buffers, commit in the
   background) vs sync (the whole commit protocol), interleaved rounds.

    .venv/bin/python benchmarks/bench_guard.py [--ticks 5000000] [--rounds 5] [--gib 1]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_store import state_dict

import trainguard as tg


def noop(steps: int = 1) -> bool:
    return True


def per_call(function: Callable[[], object], count: int) -> float:
    call = function  # a local, exactly as a training loop would hold guard.tick
    started = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - started) / count


def bench_tick(count: int, rounds: int, scratch: Path) -> None:
    with tg.Guard(run="tick", store=str(scratch / "tick"), install_signal_handlers=False) as guard:
        ticks, noops = [], []
        for _ in range(rounds):
            noops.append(per_call(noop, count))
            ticks.append(per_call(guard.tick, count))
        empty = per_call(lambda: None, count)
    t, n = statistics.median(ticks), statistics.median(noops)
    print(
        f"\n{count:,} calls per round, median of {rounds} interleaved rounds (an empty lambda call: "
        f"{empty * 1e9:.0f} ns)\n"
    )
    print("| operation | per call | no-op function call | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| `guard.tick()` | {t * 1e9:.0f} ns | {n * 1e9:.0f} ns | {t / n:.2f} | <= 3x, <= 500 ns |")


def bench_async(gib: float, rounds: int, scratch: Path) -> None:
    state = state_dict(gib)
    size = sum(t.numel() * 4 for t in state.values())
    blocked: dict[str, list[float]] = {"sync": [], "async": []}
    guards = {
        mode: tg.Guard(
            run=f"save-{mode}",
            store=str(scratch / mode),
            async_=(mode == "async"),
            keep_last=1,
            install_signal_handlers=False,
        )
        for mode in blocked
    }
    for guard in guards.values():
        guard.__enter__()
    try:
        for episode in range(1, rounds + 1):
            for mode, guard in guards.items():
                started = time.perf_counter()
                guard.save(state, episode=episode)
                blocked[mode].append(time.perf_counter() - started)
                guard.wait_for_saves()  # let the writer finish before the next round measures
            print(
                f"round {episode}: sync {blocked['sync'][-1]:.3f}s, async {blocked['async'][-1]:.3f}s",
                flush=True,
            )
    finally:
        for guard in guards.values():
            guard.__exit__(None, None, None)
    s, a = statistics.median(blocked["sync"]), statistics.median(blocked["async"])
    steady = statistics.median(blocked["async"][1:]) if rounds > 1 else a
    print(
        f"\n{size / (1 << 30):.2f} GiB fp32 state dict, median of {rounds} interleaved rounds "
        f"(async's first round allocates its buffers: {blocked['async'][0]:.3f}s)\n"
    )
    print("| operation | loop blocked (median) | sync save (median) | ratio | target |")
    print("|---|---|---|---|---|")
    print(
        f"| async `guard.save` (1 GiB) | {a:.3f} s (steady state {steady:.3f} s) | {s:.3f} s | {a / s:.2f} "
        f"| <= 0.10 |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ticks", type=int, default=5_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="trainguard-bench-", dir=Path(__file__).parent))
    try:
        bench_tick(args.ticks, args.rounds, scratch)
        bench_async(args.gib, args.rounds, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
