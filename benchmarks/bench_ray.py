"""Ray Train's training loop with and without trainguard, same seeds, one run (issue 14).

    make bench-ray          # = unshare -n (loopback only) .venv/bin/python benchmarks/bench_ray.py

Two workers (DDP, gloo, CPU) train an MLP 256→1024→1 for ``--steps`` steps, rank 0 reporting a checkpoint
(model + Adam state) every ``--every`` steps. Plain: Ray's own way - ``torch.save`` into a temporary
directory, ``ray.train.report(checkpoint=Checkpoint.from_directory(...))``, which Ray copies into its
storage. Guarded: ``RayGuard`` - a ``tick()`` per step (agreed across ranks), ``report(state=...)`` stages
safetensors + JSON (hashed, fsynced) that the controller commits through the fenced store. Timed on rank 0:
the loop alone (wall and CPU), and the whole ``fit`` in the driver (worker start-up included). Rounds
alternate which side goes first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import train
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, prepare_model

from trainguard.config import parse_config
from trainguard.integrations.ray import GuardCallback, RayGuard, fit


def loop(config: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = prepare_model(
        torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1))
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rank = train.get_context().get_world_rank()
    x = torch.randn(512, 256, generator=torch.Generator().manual_seed(rank))
    y = x.sum(dim=1, keepdim=True)
    steps, every = int(config["steps"]), int(config["every"])

    def step() -> float:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        return float(loss)

    def state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    wall, cpu = time.perf_counter(), time.process_time()
    if config.get("trainguard"):
        with RayGuard(config["trainguard"]) as guard:
            for n in range(1, steps + 1):
                loss = step()
                guard.tick()
                if n % every == 0:
                    guard.report({"loss": loss}, state=state() if rank == 0 else None)
    else:
        for n in range(1, steps + 1):
            loss = step()
            if n % every == 0:
                if rank != 0:
                    train.report({"loss": loss})
                    continue
                with tempfile.TemporaryDirectory() as scratch:
                    torch.save(state(), os.path.join(scratch, "state.pt"))
                    train.report({"loss": loss}, checkpoint=Checkpoint.from_directory(scratch))
    if rank == 0:
        timing = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
        Path(config["out"]).write_text(json.dumps(timing))


def one_fit(base: Path, index: int, guarded: bool, steps: int, every: int) -> dict[str, float]:
    out = base / f"timing-{index}-{int(guarded)}.json"
    loop_config: dict[str, Any] = {"steps": steps, "every": every, "out": str(out)}
    callbacks: list[Any] = []
    callback = None
    if guarded:
        settings = {"run": f"bench{index}", "store": str(base / f"store{index}")}
        callback = GuardCallback(parse_config(settings, strict=True)[0])
        loop_config["trainguard"] = callback.worker_settings()
        callbacks.append(callback)
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(
            name=f"r{index}-{int(guarded)}", storage_path=str(base / "ray"), callbacks=callbacks
        ),
    )
    started = time.perf_counter()
    if callback is not None:
        fit(trainer, callback)
    else:
        trainer.fit()
    return {**json.loads(out.read_text()), "fit": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    times: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            one_fit(Path(scratch), -1, False, args.every, args.every)  # warm-up
            for index in range(args.rounds):
                for guarded in (False, True) if index % 2 else (True, False):
                    times[guarded].append(one_fit(Path(scratch), index, guarded, args.steps, args.every))
    finally:
        ray.shutdown()
    print(f"ray train, 2 workers, {args.steps} steps, a checkpoint every {args.every} steps, medians:")
    for key in ("wall", "cpu", "fit"):
        plain_time, guarded_time = (statistics.median(t[key] for t in times[side]) for side in (False, True))
        pairs = statistics.median(g[key] / p[key] for p, g in zip(times[False], times[True], strict=True))
        print(f"  {key:4}: plain {plain_time:.3f} s, guarded {guarded_time:.3f} s,"
              f" ratio {guarded_time / plain_time:.3f}"
              f" (per-round ratios, median {pairs:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
