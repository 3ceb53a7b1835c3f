"""The Hugging Face Trainer through the fenced store (issue 14): a tiny GPT-2 built from a config (no
weights downloaded), trained for real on CPU."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from examples.hf.train import Tokens, tiny_gpt2
from support import torchrun_reports
from trainguard import Guard, Registry, StopReason
from trainguard.errors import BudgetExhausted, LeaseLost
from trainguard.integrations.hf import GuardCallback, resume

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _trainer(guard: Guard, tmp_path: Path, *, max_steps: int, extra: list[Any] | None = None) -> Trainer:
    model = tiny_gpt2(width=16, layers=1)
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=max_steps,
        per_device_train_batch_size=8,  # 8 steps an epoch
        save_strategy="steps",
        save_steps=4,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=Tokens(rows=64),
        callbacks=[GuardCallback(guard), *(extra or [])],
    )


def _guard(tmp_path: Path, **settings: Any) -> Guard:
    return Guard(run="hf", store=str(tmp_path / "store"), **settings)


def _registry(tmp_path: Path) -> Registry:
    return Registry.open(f"sqlite:///{tmp_path / 'store/.trainguard/registry.db'}")


def test_the_step_budget_holds_across_two_restarts_and_a_spent_start_runs_zero_steps(tmp_path: Path) -> None:
    steps = []
    for trainer_steps in (6, 12, 1000):
        with _guard(tmp_path, max_steps=18, install_signal_handlers=False) as guard:
            trainer = _trainer(guard, tmp_path, max_steps=trainer_steps)
            trainer.train(resume_from_checkpoint=resume(trainer, guard))
            steps.append(trainer.state.global_step)
    assert steps == [6, 12, 18]  # the third run: HF would go on to 1000, the run's budget ends it at 18
    with _guard(tmp_path, max_steps=18, install_signal_handlers=False) as guard:
        trainer = _trainer(guard, tmp_path, max_steps=1000)
        with pytest.raises(BudgetExhausted):  # refused in on_train_begin: not one step
            trainer.train(resume_from_checkpoint=resume(trainer, guard))
    with _registry(tmp_path) as registry:
        assert registry.run("hf").steps_spent == 18
    with _guard(tmp_path, max_steps=18, install_signal_handlers=False) as guard:
        codecs = {f.codec for r in guard.store.checkpoints() for f in guard.store.manifest(r.name).files}
    assert codecs == {"safetensors", "json"}  # none of HF's pickles (optimizer.pt, rng_state.pth) kept


class _AtStep(TrainerCallback):
    def __init__(self, step: int, action: Any) -> None:
        self.step, self.action, self.done = step, action, False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= self.step and not self.done:
            self.done = True
            self.action()


def test_sigterm_stops_with_a_committed_checkpoint_that_resumes_bit_exact(tmp_path: Path) -> None:
    with _guard(tmp_path, max_steps=1000) as guard:  # the Guard's SIGTERM handler: a graceful stop
        trainer = _trainer(
            guard, tmp_path, max_steps=1000, extra=[_AtStep(6, lambda: os.kill(os.getpid(), signal.SIGTERM))]
        )
        trainer.train()
        assert guard.stop_reason is StopReason.SIGNAL
        stopped_at = trainer.state.global_step
        assert trainer.model is not None and trainer.optimizer is not None
        weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        optimizer = trainer.optimizer.state_dict()
        last = guard.last_checkpoint
    assert stopped_at in (6, 7) and last is not None and last.metrics["global_step"] == stopped_at
    with _guard(tmp_path, max_steps=1000, install_signal_handlers=False) as guard:
        fresh = _trainer(guard, tmp_path, max_steps=stopped_at + 1)
        checkpoint = resume(fresh, guard)
        assert checkpoint is not None and fresh.model is not None
        assert all(torch.equal(fresh.model.state_dict()[k], v) for k, v in weights.items())
        # written by resume() from the store's verified data
        loaded = torch.load(Path(checkpoint) / "optimizer.pt", weights_only=True)
        for index, state in optimizer["state"].items():
            for key, value in state.items():
                assert torch.equal(loaded["state"][index][key], value), (index, key)
        fresh.train(resume_from_checkpoint=checkpoint)
        assert fresh.state.global_step == stopped_at + 1  # HF resumed at the stop, one more step


def test_a_process_whose_lease_was_taken_over_commits_nothing_more(tmp_path: Path) -> None:
    def take_over() -> None:
        with _registry(tmp_path) as operator:
            operator.acquire("hf", takeover=True, reason="test: an operator took the run over")

    with _guard(tmp_path, max_steps=1000, install_signal_handlers=False) as guard:
        trainer = _trainer(guard, tmp_path, max_steps=1000, extra=[_AtStep(2, take_over)])
        with pytest.raises(LeaseLost):  # the save at step 4 is refused by the registry
            trainer.train()
        token = guard.lease.token
    with _registry(tmp_path) as registry:
        assert [r for r in registry.checkpoints("hf") if r.token == token] == []
        assert [e for e in registry.events("hf") if e.kind == "commit_refused" and e.token == token]


def test_retention_never_takes_the_resume_source(tmp_path: Path) -> None:
    with _guard(tmp_path, max_steps=100, install_signal_handlers=False) as guard:
        trainer = _trainer(guard, tmp_path, max_steps=6)
        trainer.train()
    with _guard(tmp_path, max_steps=100, keep_last=1, install_signal_handlers=False) as guard:
        source = guard.store.latest()
        trainer = _trainer(guard, tmp_path, max_steps=14)
        trainer.train(resume_from_checkpoint=resume(trainer, guard))
        kept = {r.name for r in guard.store.checkpoints()}
        evicted = [r.name for r in guard.store.checkpoints(states=None) if r.name not in kept]
    assert source is not None and source.name in kept  # the one this run resumed from
    assert evicted  # keep_last=1 did evict: the protection is what kept the source


def test_retention_never_takes_the_checkpoint_hf_judges_best(tmp_path: Path) -> None:
    # greater_is_better on the eval loss: the first evaluation (the worst model) stays "best" throughout
    with _guard(tmp_path, max_steps=100, keep_last=1, install_signal_handlers=False) as guard:
        trainer = _trainer(guard, tmp_path, max_steps=16)
        trainer.eval_dataset = Tokens(rows=64)
        trainer.args.eval_strategy = "steps"
        trainer.args.eval_steps = 4
        trainer.args.metric_for_best_model = "eval_loss"
        trainer.args.greater_is_better = True
        trainer.train()
        kept = [r.name for r in guard.store.checkpoints()]
        pinned = [r.name for r in guard.store.checkpoints() if r.pinned]
    assert kept == ["checkpoint-4-t1", "checkpoint-16-t1"]  # keep_last=1 evicted 8 and 12, not the best
    assert pinned == ["checkpoint-4-t1"]


def test_the_example_runs_and_a_second_start_with_the_budget_spent_takes_no_step(tmp_path: Path) -> None:
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "examples.hf.train", "--store", str(tmp_path / "s"), "--max-steps", "20"]
    first = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0 and "stopped at step 20: steps: 20 of 20 steps spent" in first.stdout, first
    assert "checkpoints: checkpoint-20-t1" in first.stdout
    second = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 3 and "has spent 20 steps of its 20 steps budget" in second.stderr, second
    with Registry.open(f"sqlite:///{tmp_path / 's/.trainguard/registry.db'}") as registry:
        assert registry.run("hf-example").steps_spent == 20


def _two_ranks(tmp_path: Path, budget: int) -> list[dict[str, Any]]:
    out = tmp_path / "out"
    args = [str(tmp_path / "store"), str(out), str(budget)]
    seen = torchrun_reports(Path(__file__).with_name("hf_ranks.py"), args, out, ranks=2)
    assert len(seen) == 2, (out / "job.log").read_text()[-4000:]
    return seen


def test_two_processes_stop_save_resume_and_refuse_together(tmp_path: Path) -> None:
    """torchrun, two ranks (DDP, gloo), the Guard on rank 0: the budget stop, the last checkpoint, the
    resume and the refusal of a spent start are every rank's, and nobody waits in a collective forever."""
    first = _two_ranks(tmp_path, budget=6)
    assert [(e["started"], e["stopped"], e.get("error")) for e in first] == [(0, 6, None), (0, 6, None)]
    assert first[0]["weights"] == first[1]["weights"]  # DDP kept them equal
    with _registry(tmp_path) as registry:
        assert [r.name for r in registry.checkpoints("hf-ranks")] == ["checkpoint-4-t1", "checkpoint-6-t1"]
        registry.extend_budget("hf-ranks", steps=4, reason="test: four more steps")
    second = _two_ranks(tmp_path, budget=6)  # the config unchanged: the extension is added on top
    assert [(e["started"], e["stopped"], e.get("error")) for e in second] == [(6, 10, None), (6, 10, None)]
    third = _two_ranks(tmp_path, budget=6)
    assert third[0]["error"].startswith("BudgetExhausted") and "rank 0 refused" in third[1]["error"]
    assert third[0]["stopped"] == third[1]["stopped"] == 10  # refused before a step, on both ranks
    with _registry(tmp_path) as registry:
        assert registry.run("hf-ranks").steps_spent == 10
        assert registry.run("hf-ranks").last_token == 3  # one lease per job: rank 1 never took one
