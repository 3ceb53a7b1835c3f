"""One rank of a torchrun job for tests/test_distributed.py (not a test module itself).

    torchrun --standalone --nproc-per-node N tests/dcp_worker.py MODE STORE OUT [options as JSON]

Every rank writes OUT/rank-R.json with what it saw; the test asserts on those files.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from trainguard import Guard
from trainguard.checkpoints import CheckpointStore
from trainguard.checkpoints.prepared import staging_directory
from trainguard.distributed import JobGuard, Reader, Writer, failures_of

RUN = "dcp"


def full_state(seed: int) -> dict[str, torch.Tensor]:
    """The model's whole state, the same on every rank (seeded): what a sharded save must round-trip."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "layer1.weight": torch.randn(64, 32, generator=generator),
        "layer1.bias": torch.randn(64, generator=generator),
        "layer2.weight": torch.randn(48, 64, generator=generator).to(torch.bfloat16),
        "embedding": torch.randint(0, 1000, (40, 8), generator=generator, dtype=torch.int64),
        "step": torch.tensor(7, dtype=torch.int64),
    }


def sharded(state: dict[str, torch.Tensor], mesh: Any) -> dict[str, Any]:
    """Row-sharded DTensors (scalars replicated), as FSDP would hold them."""
    return {
        key: distribute_tensor(value, mesh, [Shard(0)]) if value.dim() else value.clone()
        for key, value in state.items()
    }


def zeros_like(state: dict[str, Any]) -> dict[str, Any]:
    return {
        key: DTensor.from_local(torch.zeros_like(v.to_local()), v.device_mesh, v.placements, run_check=False)
        if isinstance(v, DTensor)
        else torch.zeros_like(v)
        for key, v in state.items()
    }


def gathered(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {key: v.full_tensor() if isinstance(v, DTensor) else v for key, v in state.items()}


def exact(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class KillingWriter(Writer):
    """Rank ``victim`` dies (SIGKILL) halfway through writing its shard."""

    victim = -1

    def write_data(self, plan: Any, planner: Any) -> Any:
        if plan.storage_data.rank == self.victim:
            staging = staging_directory(self.root, plan.storage_data.staging)
            (staging / f"shard-{self.victim:05d}.bin").write_bytes(b"\x01" * 4096)  # a torn shard
            os.kill(os.getpid(), signal.SIGKILL)
        return super().write_data(plan, planner)


def failures(error: BaseException) -> list[str]:
    return sorted(type(e).__name__ for e in failures_of(error))


def main() -> int:
    mode, root, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    options: dict[str, Any] = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    seen: dict[str, Any] = {"rank": rank, "world": world, "pid": os.getpid()}
    try:
        if mode == "job":
            seen.update(job(root, mesh, options))
        else:
            seen.update(saves(mode, root, mesh, options, rank))
    except BaseException as error:
        # is a BaseException): the test asserts on it
        seen["error"] = type(error).__name__
        seen["message"] = str(error)[:2000]
        seen["failures"] = failures(error)
    (out / f"rank-{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()
    return 0


def saves(mode: str, root: Path, mesh: Any, options: dict[str, Any], rank: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    # Loads: every rank opens the store read-only. Saves: only the coordinator opens it (it commits); the
    # other ranks write into its staging directory by path.
    store: CheckpointStore | None
    if mode == "load":
        store = CheckpointStore.open_existing(root, run=RUN, read_only=True)
    else:
        store = CheckpointStore(root, run=RUN) if rank == 0 else None
    where: CheckpointStore | Path = store if store is not None else root  # what this rank's Writer needs
    if mode == "save":
        lease = store.registry.acquire(RUN, ttl=60) if store else None
        token = torch.tensor([lease.token if lease else 0])
        dist.broadcast(token, 0)
        state = sharded(full_state(options["seed"]), mesh)
        writer_cls = KillingWriter if "victim" in options else Writer
        KillingWriter.victim = options.get("victim", -1)
        writer = writer_cls(
            where,
            lease,
            token=int(token.item()),
            episode=10,
            name=options["name"],
            extra={"seed": options["seed"]},
        )
        dcp_save(state, storage_writer=writer)
        seen["committed"] = writer.committed.name if writer.committed else None
    elif mode == "stale":
        # One job holds token k; a newer incarnation takes the run over (token k+1) and commits `name`;
        # then the old incarnation, still running, saves under the same name.
        old = store.registry.acquire(RUN, ttl=60) if store else None
        new = store.registry.acquire(RUN, ttl=60, takeover=True) if store else None
        tokens = torch.tensor([old.token, new.token] if old and new else [0, 0])
        dist.broadcast(tokens, 0)
        fresh = sharded(full_state(options["seed"]), mesh)
        dcp_save(
            fresh,
            storage_writer=Writer(where, new, token=int(tokens[1]), episode=20, name=options["name"]),
        )
        stale = sharded(full_state(options["seed"] + 1), mesh)
        try:
            dcp_save(
                stale,
                storage_writer=Writer(where, old, token=int(tokens[0]), episode=20, name=options["name"]),
            )
            seen["stale_saved"] = True
        except BaseException as error:
            seen["stale_refused"] = failures(error)
    elif mode == "load":
        expected = sharded(full_state(options["seed"]), mesh)
        target = zeros_like(expected)
        assert store is not None
        reader = Reader(store, options.get("name", "latest"))
        dcp_load(target, storage_reader=reader)
        seen["exact"] = exact(gathered(target), full_state(options["seed"]))
        seen["name"] = reader.name
        seen["extra"] = reader.extra
    return seen


def job(root: Path, mesh: Any, options: dict[str, Any]) -> dict[str, Any]:
    """A guarded training loop: one lease for the job, the budget charged once, the stop agreed."""
    seen: dict[str, Any] = {"episodes": []}

    def make() -> Guard:  # called on the coordinating rank only
        if options.get("from_config"):  # under `trainguard run`: the launcher's config and lease
            return Guard.from_config()
        return Guard(run=RUN, store=str(root), install_signal_handlers=True, **options.get("guard", {}))

    with JobGuard(make) as jg:
        seen["token"] = jg.token
        state = sharded(full_state(1), mesh)
        restored = zeros_like(state)
        seen["resumed"] = jg.load(restored)  # the newest committed checkpoint, if the run has one
        if seen["resumed"] is not None:
            seen["resumed_exact"] = exact(gathered(restored), full_state(1))
        for episode in jg.episodes():
            seen["episodes"].append(episode)
            if episode == options.get("signal_at") and jg.rank == options.get("signal_rank"):
                os.kill(os.getpid(), signal.SIGTERM)
            if jg.should_checkpoint(episode):
                record = jg.save(state, episode)
                if record is not None:
                    seen.setdefault("saved", []).append(record.name)
        seen["verdict"] = jg.verdict.name
        if jg.guard is not None:
            seen["stop"] = str(jg.guard.stop_reason)
    return seen


if __name__ == "__main__":
    sys.exit(main())
