"""PyTorch Lightning through the fenced store (issue 14): a tiny MLP trained for real on CPU."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning")

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from examples.lightning.train import Regressor
from support import torchrun_reports
from trainguard import Guard, Registry, StopReason
from trainguard.errors import LeaseLost
from trainguard.integrations.lightning import PREFIX, GuardCallback, StoreCheckpointIO, resume_path

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _data() -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)  # 8 steps an epoch


def _guard(tmp_path: Path, **settings: Any) -> Guard:
    return Guard(run="pl", store=str(tmp_path / "store"), **settings)


def _fit(
    guard: Guard, tmp_path: Path, *, max_steps: int = -1, extra: list[Any] | None = None
) -> tuple[L.Trainer, Regressor]:
    torch.manual_seed(0)
    model = Regressor(inputs=4, hidden=8, lr=1e-2)
    trainer = L.Trainer(
        max_epochs=1000,
        max_steps=max_steps,
        default_root_dir=str(tmp_path / "lightning"),
        callbacks=[
            GuardCallback(guard),
            ModelCheckpoint(monitor="train_loss", save_top_k=1, save_last=True),
            *(extra or []),
        ],
        plugins=[StoreCheckpointIO(guard)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, _data(), ckpt_path=resume_path(guard))
    return trainer, model


def _registry(tmp_path: Path) -> Registry:
    return Registry.open(f"sqlite:///{tmp_path / 'store/.trainguard/registry.db'}")


def test_the_step_budget_holds_across_two_restarts(tmp_path: Path) -> None:
    with _guard(tmp_path, max_steps=30, install_signal_handlers=False) as guard:
        first, _ = _fit(guard, tmp_path, max_steps=10)
    assert first.global_step == 10
    with _guard(tmp_path, max_steps=30, install_signal_handlers=False) as guard:
        second, _ = _fit(guard, tmp_path, max_steps=20)  # resumes at 10 from the store
    assert second.global_step == 20
    with _guard(tmp_path, max_steps=30, install_signal_handlers=False) as guard:
        third, _ = _fit(guard, tmp_path)  # Lightning would train for 1000 epochs: the budget ends it
        assert guard.stop_reason is StopReason.STEPS
    assert third.global_step == 30
    with _guard(tmp_path, max_steps=30, install_signal_handlers=False) as guard:
        fourth, _ = _fit(guard, tmp_path)  # spent: not one step more
    assert fourth.global_step == 30
    with _registry(tmp_path) as registry:
        assert registry.run("pl").steps_spent == 30


class _AtStep(L.Callback):
    """Runs ``action`` once, after the batch that makes ``step`` optimizer steps."""

    def __init__(self, step: int, action: Any) -> None:
        self.step, self.action, self.done = step, action, False

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step and not self.done:
            self.done = True
            self.action()


def test_sigterm_stops_gracefully_with_a_last_checkpoint_that_resumes_bit_exact(tmp_path: Path) -> None:
    with _guard(tmp_path, max_steps=1000) as guard:  # the Guard's SIGTERM handler: a graceful stop
        trainer, model = _fit(
            guard, tmp_path, extra=[_AtStep(13, lambda: os.kill(os.getpid(), signal.SIGTERM))]
        )
        assert guard.stop_reason is StopReason.SIGNAL
        stopped_at = trainer.global_step
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = trainer.optimizers[0].state_dict()
        last = guard.last_checkpoint
    # committed at the step it stopped (by ModelCheckpoint's save_last, else by the GuardCallback)
    assert stopped_at in (13, 14) and last is not None and last.metrics["global_step"] == stopped_at
    with _guard(tmp_path, max_steps=1000, install_signal_handlers=False) as guard:
        loaded = StoreCheckpointIO(guard).load_checkpoint(f"{PREFIX}latest")
    assert loaded["global_step"] == stopped_at
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in weights.items())
    saved_optimizer = loaded["optimizer_states"][0]
    for index, state in optimizer["state"].items():
        for key, value in state.items():
            assert torch.equal(saved_optimizer["state"][index][key], value), (index, key)
    # and Lightning resumes from it: one more step lands on the next step, not on step 1
    with _guard(tmp_path, max_steps=1000, install_signal_handlers=False) as guard:
        resumed, _ = _fit(guard, tmp_path, max_steps=stopped_at + 1)
    assert resumed.global_step == stopped_at + 1


def test_a_process_whose_lease_was_taken_over_commits_nothing_more(tmp_path: Path) -> None:
    def take_over() -> None:
        with _registry(tmp_path) as operator:
            operator.acquire("pl", takeover=True, reason="test: an operator took the run over")

    with _guard(tmp_path, max_steps=1000, install_signal_handlers=False) as guard:
        with pytest.raises(LeaseLost):  # the next checkpoint is refused by the registry: fenced
            _fit(guard, tmp_path, extra=[_AtStep(6, take_over)])
        assert guard.fenced
        token = guard.lease.token
    with _registry(tmp_path) as registry:
        assert [r for r in registry.checkpoints("pl") if r.token == token] == []  # its epoch-end save refused
        refused = [e for e in registry.events("pl") if e.kind == "commit_refused" and e.token == token]
        assert refused, "the registry never saw (and refused) the stale commit"


def test_retention_never_takes_the_best_or_the_resume_source(tmp_path: Path) -> None:
    with _guard(tmp_path, max_steps=40, keep_last=1, install_signal_handlers=False) as guard:
        _fit(guard, tmp_path, max_steps=24)
        best = next(r.name for r in guard.store.checkpoints() if r.pinned)
    with _guard(tmp_path, max_steps=40, keep_last=1, install_signal_handlers=False) as guard:
        source = guard.store.latest()
        assert source is not None
        _fit(guard, tmp_path)  # resumes from `source`, trains to the budget, saves several times
        kept = {r.name for r in guard.store.checkpoints()}
        evicted = [r for r in guard.store.checkpoints(states=None) if r.name not in kept]
    assert evicted, "keep_last=1 evicted nothing: the test would prove nothing"
    assert best in kept and source.name in kept


def test_the_example_runs_and_a_second_run_resumes_within_the_same_budget(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    command = [
        sys.executable,
        "-m",
        "examples.lightning.train",
        "--store",
        str(tmp_path / "s"),
        "--max-steps",
        "40",
    ]
    outputs = [
        subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=120, check=True).stdout
        for _ in range(2)
    ]
    assert all("stopped at step 40: steps: 40 of 40 steps spent" in out for out in outputs), outputs


def _two_ranks(tmp_path: Path, budget: int, *extra: str) -> list[dict[str, Any]]:
    out = tmp_path / "out"
    args = [str(tmp_path / "store"), str(out), str(budget), *extra]
    seen = torchrun_reports(Path(__file__).with_name("lightning_ranks.py"), args, out, ranks=2)
    assert len(seen) == 2, (out / "job.log").read_text()[-4000:]
    return seen


def test_two_ddp_processes_stop_resume_and_refuse_together(tmp_path: Path) -> None:
    """torchrun, two ranks (DDP, gloo), the Guard on rank 0: budget stops, the last checkpoint, the resume
    from the store (rank 1 reads it itself) and a spent start are every rank's; nobody hangs."""
    first = _two_ranks(tmp_path, 6)
    assert [(e["started"], e["stopped"], e.get("error")) for e in first] == [(0, 6, None), (0, 6, None)]
    assert first[0]["weights"] == first[1]["weights"]
    registry_url = f"sqlite:///{tmp_path / 'store/.trainguard/registry.db'}"
    with Registry.open(registry_url) as registry:
        names = [r.name for r in registry.checkpoints("pl-ranks")]
        registry.extend_budget("pl-ranks", steps=4, reason="test: four more steps")
    assert names[0].endswith("-s4-t1") and names[-1] == "stopped-s6-t1", names
    second = _two_ranks(tmp_path, 6)  # the config unchanged: the extension is added on top
    assert [(e["started"], e["stopped"], e.get("error")) for e in second] == [(6, 10, None), (6, 10, None)]
    assert second[0]["weights"] == second[1]["weights"]
    third = _two_ranks(tmp_path, 6)
    assert [(e["started"], e["stopped"]) for e in third] == [(10, 10), (10, 10)]  # not one step
    with Registry.open(registry_url) as registry:
        assert registry.run("pl-ranks").steps_spent == 10
        assert registry.run("pl-ranks").last_token == 3  # one lease per job: rank 1 never took one


def test_sigterm_on_a_rank_without_the_guard_stops_every_rank_with_a_last_checkpoint(tmp_path: Path) -> None:
    seen = _two_ranks(tmp_path, 1000, "3")
    stopped = {e["stopped"] for e in seen}
    assert len(stopped) == 1 and stopped <= {3, 4}, seen  # both ranks, after the batch that was signalled
    with Registry.open(f"sqlite:///{tmp_path / 'store/.trainguard/registry.db'}") as registry:
        last = registry.checkpoints("pl-ranks")[-1]
    assert last.metrics["global_step"] == stopped.pop() and last.name.startswith("stopped-")
