"""The store against its peers, side by side in one process (issue 12).

Save: ``store.save`` (fenced, fsynced, hashed, validated, committed) against ``torch.save`` + fsync,
``safetensors.torch.save_file`` + fsync, ``torch.distributed.checkpoint.save`` (FileSystemWriter) + fsync, and
``dd conv=fsync`` of the same number of bytes as the physical limit. Load: ``store.load`` (every hash verified
before anything is decoded) against ``torch.load(weights_only=True)``, ``torch.load(mmap=True)``,
``safetensors.torch.load_file`` and ``dcp.load``. Every loaded tensor is touched (``.sum()``) on every side,
so lazy loaders pay for their reads. Rounds are interleaved (each round runs every side once, in a rotated
order); the report is the median of each side and its ratio to the store.

    .venv/bin/python benchmarks/bench_peers.py [--gib 1] [--rounds 7] [--cold] [--dir benchmarks/_scratch]

``--cold`` drops the page cache (root) before every load, so loads read from the disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load_state
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save_state

import trainguard as tg

sys.path.insert(0, str(Path(__file__).parent))
from bench_store import drop_caches, fsync_path, state_dict


def fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        fsync_path(path)
    fsync_path(root)


def touch_all(state: object) -> float:
    """Read every byte of every tensor (what using the weights costs)."""
    total = 0.0
    for value in state.values() if isinstance(state, dict) else []:
        if isinstance(value, torch.Tensor):
            total += float(value.sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", default="benchmarks/_scratch")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each load (root)")
    args = parser.parse_args()
    scratch = Path(args.dir).resolve()
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    state = state_dict(args.gib)
    size = sum(t.numel() * t.element_size() for t in state.values())
    store = tg.CheckpointStore(scratch / "store", run="peers", retention_policy=tg.retention.KeepLast(2))
    lease = store.registry.acquire("peers", ttl=3600)
    torch_file, st_file, dcp_dir, dd_file = (
        scratch / "state.pt",
        scratch / "state.safetensors",
        scratch / "dcp",
        scratch / "dd.bin",
    )
    episode = [0]
    names: list[str] = []

    def store_save() -> None:
        episode[0] += 1
        names.append(store.save(state, episode=episode[0], lease=lease).name)

    def torch_save() -> None:
        torch.save(state, torch_file)
        fsync_path(torch_file)
        fsync_path(scratch)

    def st_save() -> None:
        save_file(state, st_file)
        fsync_path(st_file)
        fsync_path(scratch)

    def dcp_save() -> None:
        shutil.rmtree(dcp_dir, ignore_errors=True)
        dcp_save_state(state, storage_writer=FileSystemWriter(str(dcp_dir)), no_dist=True)
        fsync_tree(dcp_dir)
        fsync_path(scratch)

    def dd_save() -> None:
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={dd_file}", "bs=8M", f"count={size // (8 << 20)}", "conv=fsync"],
            check=True,
            capture_output=True,
        )

    def store_load() -> None:
        touch_all(store.load(names[-1]).state)  # saved this round: the first load of these files

    def store_reload() -> None:
        touch_all(store.load(names[-2]).state)  # loaded last round and unchanged since: digest known

    def torch_load() -> None:
        touch_all(torch.load(torch_file, weights_only=True))

    def torch_mmap() -> None:
        touch_all(torch.load(torch_file, weights_only=True, mmap=True))

    def st_load() -> None:
        touch_all(load_file(st_file))

    def dcp_load() -> None:
        target = {k: torch.empty_like(v) for k, v in state.items()}
        dcp_load_state(target, storage_reader=FileSystemReader(str(dcp_dir)), no_dist=True)
        touch_all(target)

    saves: dict[str, Callable[[], None]] = {
        "store.save (fenced, fsynced, hashed)": store_save,
        "torch.save + fsync": torch_save,
        "safetensors save_file + fsync": st_save,
        "dcp.save (FileSystemWriter) + fsync": dcp_save,
        "dd conv=fsync (the disk's limit)": dd_save,
    }
    loads: dict[str, Callable[[], None]] = {
        "store.load (verify + decode), touched": store_load,
        "store.load again (file unchanged since verified), touched": store_reload,
        "torch.load(weights_only=True), touched": torch_load,
        "torch.load(mmap=True), touched": torch_mmap,
        "safetensors load_file, touched": st_load,
        "dcp.load, touched": dcp_load,
    }
    times: dict[str, list[float]] = {name: [] for name in (*saves, *loads)}
    store_save()  # a checkpoint for the first round's re-load
    store_load()
    for round_ in range(args.rounds):
        order = list(saves.items())
        order = order[round_ % len(order) :] + order[: round_ % len(order)]
        for name, fn in order:
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
        order = list(loads.items())
        order = order[round_ % len(order) :] + order[: round_ % len(order)]
        for name, fn in order:
            drop_caches(args.cold)
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    lease.release()
    store.close()
    cache = "cold (dropped before each load)" if args.cold else "warm"
    print(
        f"\n{size / (1 << 30):.2f} GiB fp32 state dict ({len(state)} tensors), {args.rounds} interleaved "
        f"rounds, "
        f"page cache {cache}, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs\n"
    )
    print("| operation | median | best | ratio store / peer (medians) |")
    print("|---|---|---|---|")
    for group in (saves, loads):
        ours = statistics.median(times[next(iter(group))])
        for name in group:
            median = statistics.median(times[name])
            ratio = ours / median
            print(f"| {name} | {median:.3f} s | {min(times[name]):.3f} s | {ratio:.2f} |")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
