"""Fenced DCP against plain DCP, 4 ranks, one run (issue 13).

Save: ``dcp.save`` with ``trainguard.distributed.Writer`` (staged, hashed, fsynced, per-rank records, JSON
index, registry commit, rename) against ``dcp.save`` with ``FileSystemWriter`` (its default
``sync_files=True`` fsyncs every file it writes). Load: ``dcp.load`` with ``trainguard.distributed.Reader``
(every shard read is mapped and hashed first) against ``FileSystemReader``. The state is row-sharded
DTensors (as FSDP holds them), the same on both sides; rounds alternate which side goes first; each
timing is the slowest rank's, between barriers. Rank 0 prints the table.

    torchrun --standalone --nproc-per-node 4 benchmarks/bench_dcp.py [--mib 512] [--rounds 5] [--dir D]
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
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from trainguard.checkpoints import CheckpointStore, retention
from trainguard.distributed import Reader, Writer

RUN = "bench-dcp"


def sharded_state(mib: int, mesh: Any) -> dict[str, Any]:
    """16 large tensors and 32 small ones, fp32, about ``mib`` MiB in all, row-sharded over the mesh."""
    generator = torch.Generator().manual_seed(0)
    rows = max(4, (mib << 20) // (16 * 4 * 1024))
    state = {f"layer{i}.weight": torch.randn(rows, 1024, generator=generator) for i in range(16)}
    state |= {f"layer{i}.bias": torch.randn(1024, generator=generator) for i in range(32)}
    return {key: distribute_tensor(value, mesh, [Shard(0)]) for key, value in state.items()}


def timed(action: Callable[[], None]) -> float:
    dist.barrier()
    started = time.perf_counter()
    action()
    dist.barrier()
    elapsed = torch.tensor([time.perf_counter() - started], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the job waits for its slowest rank
    return float(elapsed.item())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / "_scratch" / "dcp")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    state = sharded_state(args.mib, mesh)
    target = {
        k: DTensor.from_local(torch.empty_like(v.to_local()), mesh, v.placements, run_check=False)
        for k, v in state.items()
    }
    root = args.dir.resolve()
    if rank == 0:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    dist.barrier()
    store = (
        CheckpointStore(root / "store", run=RUN, retention_policy=retention.keep_last(1))
        if rank == 0
        else None
    )
    dist.barrier()
    lease = store.registry.acquire(RUN, ttl=3600) if store is not None else None
    token = torch.tensor([lease.token if lease else 0])
    dist.broadcast(token, 0)
    reader_store = CheckpointStore.open_existing(root / "store", run=RUN, read_only=True)
    times: dict[str, list[float]] = {"fenced save": [], "plain save": [], "fenced load": [], "plain load": []}
    plain = root / "plain"

    def fenced_save(episode: int) -> None:
        where: CheckpointStore | Path = store if store is not None else root / "store"
        dcp_save(state, storage_writer=Writer(where, lease, token=int(token.item()), episode=episode))

    def plain_save() -> None:
        if rank == 0:
            shutil.rmtree(plain, ignore_errors=True)
        dist.barrier()
        dcp_save(state, storage_writer=FileSystemWriter(plain, sync_files=True))

    for episode in range(1, args.rounds + 1):
        sides: list[tuple[str, Callable[[], None]]] = [
            ("fenced save", functools.partial(fenced_save, episode)),
            ("plain save", plain_save),
        ]
        loads: list[tuple[str, Callable[[], None]]] = [
            ("fenced load", lambda: dcp_load(target, storage_reader=Reader(reader_store))),
            ("plain load", lambda: dcp_load(target, storage_reader=FileSystemReader(plain))),
        ]
        if episode % 2:
            sides.reverse()
            loads.reverse()
        for name, action in sides + loads:
            times[name].append(timed(action))
    if rank == 0:
        gib = sum(v.numel() * v.element_size() for v in state.values()) / 2**30
        print(f"{world} ranks, {gib:.2f} GiB, {args.rounds} rounds, median (best):")
        for what in ("save", "load"):
            ours, theirs = (
                statistics.median(times[f"fenced {what}"]),
                statistics.median(times[f"plain {what}"]),
            )
            print(f"  fenced {what}: {ours:.3f} s ({min(times[f'fenced {what}']):.3f})")
            best = min(times[f"plain {what}"])
            print(f"  plain  {what}: {theirs:.3f} s ({best:.3f})  ratio {ours / theirs:.2f}")
    reader_store.close()
    if store is not None:
        store.close()
    dist.barrier()
    if rank == 0:
        shutil.rmtree(root, ignore_errors=True)
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    main()
