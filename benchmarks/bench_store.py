"""Store save/load of a 1 GiB fp32 state dict vs torch.save(+fsync) / torch.load(weights_only=True).

Both sides run in the same process, on the same data, on the same filesystem, interleaved round by round
(A, B, A, B, ...) so machine noise hits both; the report is the ratio of medians.

    .venv/bin/python benchmarks/bench_store.py [--gib 1] [--rounds 5] [--dir benchmarks/_scratch]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import trainguard as tg


def state_dict(gib: float) -> dict[str, torch.Tensor]:
    # A model-shaped dict: a few large matrices and many small tensors, fp32.
    total = int(gib * (1 << 30)) // 4
    torch.manual_seed(0)
    tensors = {f"layers.{i}.bias": torch.randn(1024) for i in range(64)}
    big = (total - 64 * 1024) // 16
    tensors.update({f"layers.{i}.weight": torch.randn(big) for i in range(16)})
    return tensors


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_caches(enabled: bool) -> None:
    if enabled:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default="benchmarks/_scratch")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="drop the page cache before each load (root only): reads come from the disk",
    )
    args = parser.parse_args()
    scratch = Path(args.dir)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    state = state_dict(args.gib)
    size = sum(t.numel() * 4 for t in state.values())
    store = tg.CheckpointStore(scratch / "store", run="bench")
    lease = store.registry.acquire("bench", ttl=3600)
    baseline = scratch / "baseline.pt"

    def torch_save() -> None:
        torch.save(state, baseline)
        fsync_path(baseline)
        fsync_path(scratch)

    save_ours, save_torch, load_ours, load_torch = [], [], [], []
    for episode in range(args.rounds):
        baseline.unlink(missing_ok=True)
        store.prune(policy=tg.retention.keep_last(0))  # each round writes into an empty store
        save_torch.append(timed(torch_save))
        name = f"ep{episode}"
        save_ours.append(timed(functools.partial(store.save, state, episode=episode, lease=lease, name=name)))
        drop_caches(args.cold)
        load_torch.append(timed(lambda: torch.load(baseline, weights_only=True)))
        drop_caches(args.cold)
        load_ours.append(timed(functools.partial(store.load, name)))
        print(
            f"round {episode}: save {save_ours[-1]:.3f}s vs {save_torch[-1]:.3f}s, "
            f"load {load_ours[-1]:.3f}s vs {load_torch[-1]:.3f}s",
            flush=True,
        )

    def row(what: str, ours: list[float], theirs: list[float]) -> str:
        a, b = statistics.median(ours), statistics.median(theirs)
        return (
            f"| {what} | {a:.3f} s ({size / a / 1e9:.2f} GB/s) | {b:.3f} s ({size / b / 1e9:.2f} GB/s) "
            f"| {a / b:.2f} | {min(ours) / min(theirs):.2f} |"
        )

    cache = "cold page cache before each load" if args.cold else "warm page cache"
    rounds = f"median of {args.rounds} interleaved rounds"
    print(f"\n{size / (1 << 30):.2f} GiB fp32, {len(state)} tensors, {rounds}, {cache}\n")
    print("| operation | trainguard (median) | baseline (median) | ratio of medians | ratio of best |")
    print("|---|---|---|---|---|")
    print(row("save: store.save vs torch.save + fsync", save_ours, save_torch))
    print(row("load: store.load (verify + decode) vs torch.load(weights_only=True)", load_ours, load_torch))
    store.close()
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
