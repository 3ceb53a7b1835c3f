"""A Ray Train job for tests/test_ray.py (not a test module itself). Run it in a network namespace of its own
with only loopback (tests/test_ray.py does): Ray then binds and talks on 127.0.0.1 only.

    python tests/ray_job.py SCENARIO STORE OUT '{"option": value, ...}'

``train``: a TorchTrainer of ``workers`` ranks (gloo, CPU) trains a small MLP under the trainguard callback;
options make one rank SIGKILL itself on the first attempt (``kill_at``), signal the driver (``sigterm_at``)
or have an operator take the run over (``takeover_at``). ``sweep``: Ray Tune trials, each a guarded run,
drawing episodes from one sweep budget. Every rank appends what it saw to OUT/events.jsonl; the driver
writes OUT/result.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, prepare_model

from trainguard import Registry
from trainguard.config import parse_config
from trainguard.integrations.ray import GuardCallback, RayGuard, fit, sweep_budget


def state_digest(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """One hash over every tensor of the model and the optimizer (and the optimizer's step counts)."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode() + value.detach().contiguous().numpy().tobytes())
    for index, entry in sorted(optimizer.state_dict()["state"].items()):
        for key, value in sorted(entry.items()):
            digest.update(f"{index}.{key}".encode() + torch.as_tensor(value).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _log(out: Path, **event: Any) -> None:
    with open(out / "events.jsonl", "a") as log:
        log.write(json.dumps(event) + "\n")


def _once(out: Path, what: str) -> bool:
    """True the first time (across attempts and processes): a marker file made with O_EXCL."""
    try:
        os.close(os.open(out / f"done-{what}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def train_loop(config: dict[str, Any]) -> None:
    out, options = Path(config["out"]), config["options"]
    torch.manual_seed(0)
    model = prepare_model(
        torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    with RayGuard(config["trainguard"]) as guard:
        rank = guard.rank
        state = guard.resume()
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        _log(
            out,
            rank=rank,
            event="start",
            token=guard.token,
            attempt=guard.notice.attempt,
            step=guard.steps,
            resumed=guard.notice.resume,
            digest=state_digest(model, optimizer),
        )
        generator = torch.Generator().manual_seed(1000 + rank)
        inputs = torch.randn(64, 8, generator=generator)
        targets = inputs.sum(dim=1, keepdim=True)
        every = int(options.get("save_every", 4))
        loss = torch.tensor(0.0)

        def one_step() -> None:
            nonlocal loss
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(inputs), targets)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()

        if options.get("episodes"):  # one step an episode, a report after each
            for episode in guard.episodes():
                one_step()
                state = _state(model, optimizer, episode) if episode % every == 0 else None
                guard.report({"loss": float(loss)}, state=state)
        while not options.get("episodes"):
            one_step()
            if not guard.tick():
                break
            step = guard.steps
            if options.get("kill_at") == step and rank == 1 and _once(out, "kill"):
                _wait_for_a_commit(config["trainguard"]["registry"], guard.run)
                os.kill(os.getpid(), signal.SIGKILL)  # a worker dies mid-run: Ray restarts the group
            if options.get("sigterm_at") == step and rank == 0 and _once(out, "sigterm"):
                os.kill(int(options["driver"]), signal.SIGTERM)  # a preemption notice to the driver
            if options.get("takeover_at") == step and rank == 0 and _once(out, "takeover"):
                _wait_for_a_commit(config["trainguard"]["registry"], guard.run)
                with Registry.open(config["trainguard"]["registry"]) as operator:
                    operator.acquire(guard.run, takeover=True, reason="test: an operator took the run over")
            if step >= int(options.get("loop_steps", 1 << 30)):
                break  # the trainer's own end (its max_steps), short of the run's budget
            if step % every == 0:
                guard.report(_metrics(loss, step), state=_state(model, optimizer, step))
        if not guard.fenced:
            guard.report(_metrics(loss, guard.steps), state=_state(model, optimizer, guard.steps))
        _log(
            out,
            rank=rank,
            event="end",
            token=guard.token,
            step=guard.steps,
            stop=guard.stop,
            fenced=guard.fenced,
            digest=state_digest(model, optimizer),
        )


def _wait_for_a_commit(registry_url: str, run: str) -> None:
    """The controller commits after Ray's poll: wait for the first commit, so the death comes later."""
    deadline = time.monotonic() + 60
    with Registry.open(registry_url) as registry:
        while not registry.checkpoints(run) and time.monotonic() < deadline:
            time.sleep(0.05)


def _metrics(loss: torch.Tensor, step: int) -> dict[str, float]:
    # "score" is best at step 4: retention must keep that checkpoint whatever comes after it
    return {"loss": float(loss), "score": -abs(step - 4)}


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}


def _config(store: Path, run: str, options: dict[str, Any]) -> Any:
    settings = {"run": run, "store": str(store), **options.get("guard", {})}
    config, _ = parse_config(settings, strict=True)
    return config


def scenario_train(store: Path, out: Path, options: dict[str, Any]) -> list[dict[str, Any]]:
    """One fit per entry of ``runs`` (each a restart of the run: a new driver call, a new controller)."""
    results = []
    for index, run_options in enumerate(options.get("runs", [{}])):
        merged = {**options, **run_options}
        callback = GuardCallback(_config(store, "ray", merged))
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={
                "trainguard": callback.worker_settings(),
                "out": str(out),
                "options": {**merged, "driver": os.getpid()},
            },
            scaling_config=ScalingConfig(num_workers=int(merged.get("workers", 2))),
            run_config=RunConfig(
                name=f"ray{index}",
                storage_path=str(out / "ray-results"),
                callbacks=[callback],  # type: ignore[list-item]
                failure_config=FailureConfig(max_failures=int(merged.get("max_failures", 0))),
            ),
        )
        _log(out, rank=-1, event="fit", index=index)
        try:
            result = fit(trainer, callback)
        except Exception as error:  # the test asserts on what failed
            results.append({"error": f"{type(error).__name__}: {error}"})
        else:
            results.append({"error": str(result.error) if result.error else ""})
    return results


def sweep_trial(config: dict[str, Any]) -> None:
    index = int(config["index"])
    shared = {"registry": config["registry"], **config["options"].get("guard", {})}
    trial_config = _config(Path(config["store"]) / f"trial{index}", f"trial{index}", {"guard": shared})
    callback = GuardCallback(trial_config, sweep="sweep")  # a store of its own, the sweep's registry
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "trainguard": callback.worker_settings(),
            "out": config["out"],
            "options": {"episodes": True},
        },
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.9}),
        run_config=RunConfig(
            name=f"trial{index}",
            storage_path=str(Path(config["out"]) / "ray-results"),
            callbacks=[callback],  # type: ignore[list-item]
        ),
    )
    trainer.fit()
    tune.report({"done": 1})


def scenario_sweep(store: Path, out: Path, options: dict[str, Any]) -> dict[str, Any]:
    registry = f"sqlite:///{store / '.trainguard' / 'registry.db'}"
    store.mkdir(parents=True, exist_ok=True)
    left = sweep_budget(registry, "sweep", max_episodes=int(options["sweep_episodes"]))
    tuner = tune.Tuner(
        tune.with_resources(sweep_trial, {"cpu": 0.1}),
        param_space={
            "index": tune.grid_search(list(range(int(options["trials"])))),
            "store": str(store),
            "registry": registry,
            "out": str(out),
            "options": options,
        },
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(out / "tune-results"), name="sweep"),
    )
    grid = tuner.fit()
    return {"left_before": left, "errors": [str(grid[i].error) for i in range(len(grid)) if grid[i].error]}


def scenario_jobs(store: Path, out: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Several ``train`` scenarios in one Ray instance (starting one costs seconds), each with a store and
    an output directory of its own."""
    results = {}
    for name, job in options["jobs"].items():
        (out / name).mkdir(parents=True, exist_ok=True)
        results[name] = scenario_train(store / name, out / name, job)
        (out / name / "result.json").write_text(json.dumps(results[name]))
    return results


def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token written into $HOME
    scenario, store, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    out.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    try:
        scenarios = {"train": scenario_train, "jobs": scenario_jobs, "sweep": scenario_sweep}
        result: Any = scenarios[scenario](store, out, options)
    finally:
        ray.shutdown()
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
