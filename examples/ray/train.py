"""Ray Train under trainguard: two workers (DDP on CPU), a lease per attempt, commits by the controller.

    python -m examples.ray.train [--store DIR] [--max-steps N] [--workers N]

Starts a local Ray instance. The step budget is the run's: run it twice and the second run resumes from the
store's newest checkpoint and stops at the budget. A worker that dies restarts the group under a new
lease (FailureConfig(max_failures=1)); SIGTERM (or Ctrl-C) stops every worker with a last checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import ray
import torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, prepare_model

from trainguard.config import parse_config
from trainguard.errors import BudgetExhausted
from trainguard.integrations.ray import GuardCallback, RayGuard, fit


def train_loop(config: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = prepare_model(
        torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with RayGuard(config["trainguard"]) as guard:
        if (state := guard.resume()) is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        x = torch.randn(256, 16, generator=torch.Generator().manual_seed(guard.rank))
        loss = torch.tensor(0.0)
        while True:
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            if not guard.tick():  # the run's budget, a signal, a newer attempt: every rank at this step
                break
            if guard.steps % 25 == 0:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                guard.report({"loss": float(loss)}, state=state)
        if not guard.fenced:  # the last checkpoint (none when the lease is gone: it could not commit)
            guard.report(
                {"loss": float(loss)},
                state={"model": model.state_dict(), "optimizer": optimizer.state_dict()},
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", default="ray-store")
    parser.add_argument("--max-steps", type=int, default=100, help="the run's step budget (all restarts)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    store = Path(args.store).resolve()  # every worker must reach it: on several hosts, a shared filesystem
    config, _ = parse_config(
        {"run": "ray-example", "store": str(store), "limits": {"max_steps": args.max_steps}}, strict=True
    )
    callback = GuardCallback(config)
    ray.init(num_cpus=args.workers, _node_ip_address="127.0.0.1", include_dashboard=False)
    try:
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"trainguard": callback.worker_settings()},
            scaling_config=ScalingConfig(num_workers=args.workers),
            run_config=RunConfig(
                storage_path=str(store.parent / "ray-results"),  # Ray's own files, outside the store
                callbacks=[callback],  # type: ignore[list-item]
                failure_config=FailureConfig(max_failures=1),
            ),
        )
        fit(trainer, callback)
    except BudgetExhausted as spent:  # a run whose budget is spent does not start a worker
        print(f"trainguard: {spent}", file=sys.stderr)
        raise SystemExit(spent.exit_code) from None
    finally:
        ray.shutdown()
    print(f"committed: {', '.join(sorted(p.name for p in store.iterdir() if not p.name.startswith('.')))}")


if __name__ == "__main__":
    main()
