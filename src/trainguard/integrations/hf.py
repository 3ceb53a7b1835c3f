"""Hugging Face ``Trainer``: checkpoints through the fenced store, budgets and the lease in the loop.

    with tg.Guard.from_config("guard.yaml") as guard:
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[GuardCallback(guard)])
        trainer.train(resume_from_checkpoint=resume(trainer, guard))   # None for a new run

Under torchrun the Guard is rank 0's alone (one lease per job): the other ranks pass ``None`` to
``GuardCallback`` and ``resume`` and follow rank 0 through collectives (tests/hf_ranks.py).

What is kept: at every ``on_save`` (right after HF wrote ``checkpoint-N``) the callback commits, under the
Guard's token, the model's and the optimizer's and the scheduler's ``state_dict`` (tensors in
safetensors), the ``TrainerState`` (JSON) and the RNG states (torch's as a tensor, Python's and numpy's as
JSON) - taken from the objects in memory, never read back from HF's files, of which three are pickles
(``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``; ``training_args.bin`` too). HF's directory is then
removed (``keep_hf_checkpoints=True`` keeps it): the store's retention decides what stays, never HF's
mtime-sorted rotation. ``resume`` writes a ``checkpoint-N`` for HF to resume from out of the store's newest
verified checkpoint (``get_last_checkpoint`` would pick the highest number, complete or not).

The callback: one optimizer step is one ``tick()``, one epoch one episode; the decision to stop is
``all_reduce``d when a process group is up (HF does not sync ``should_training_stop``), and a stop saves a
last checkpoint. A start with the budget already spent raises ``BudgetExhausted`` in ``on_train_begin``:
HF would otherwise run one step before it reads ``should_training_stop``. With ``metric_for_best_model``
the checkpoint HF judges best is pinned (retention never takes it); as HF's directories are removed,
``load_best_model_at_end`` finds none: load the best from the store (``guard.store.load(name)``).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainguard.errors import MissingDependency
from trainguard.guard import Guard
from trainguard.integrations._collective import agreed_max, barrier, from_rank_zero, gathered
from trainguard.integrations._start import start_refusal

try:
    from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as error:  # an optional integration: say which extra brings it
    raise MissingDependency("transformers", "hf", "trainguard.integrations.hf") from error


class GuardCallback(TrainerCallback):
    """Budgets, the lease and the commit of every checkpoint in HF's ``Trainer`` (see the module's doc).

    ``guard``: the Guard, on the process that holds the run; with several processes (torchrun) that is
    rank 0, and the others pass ``None``: they follow rank 0's decisions, which every hook agrees with
    collectives, so all ranks stop, save and refuse together."""

    def __init__(self, guard: Guard | None, *, keep_hf_checkpoints: bool = False) -> None:
        self.guard = guard
        self.keep_hf_checkpoints = keep_hf_checkpoints
        self.committed: list[str] = []
        self._by_step: dict[int, str] = {}  # global step -> the checkpoint committed at it
        self._best: str | None = None  # the checkpoint this callback pinned as HF's best

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        guard = self.guard
        refusal = start_refusal(guard) if guard is not None else None
        told = from_rank_zero(str(refusal) if refusal is not None else None)
        if refusal is not None:
            raise refusal
        if told is not None:  # every rank refuses, or the others would wait for rank 0 forever
            raise RuntimeError(f"trainguard: rank 0 refused to train: {told}")

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        guard = self.guard
        self._follow(control, guard is not None and (not guard.tick(1) or guard.stop is not None))

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not control.should_training_stop:
            self._follow(control, self.guard is not None and not self.guard.complete_episode())

    def _follow(self, control: TrainerControl, stop: bool) -> None:
        fenced = self.guard is not None and self.guard.fenced
        verdict = agreed_max(_GO if not stop else _FENCED if fenced else _STOP)
        if verdict != _GO:
            control.should_training_stop = True
            control.should_save = verdict == _STOP  # a last checkpoint, unless nothing can commit

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        rngs = gathered(_rng_states())  # every rank's generators, for a resume of every rank
        barrier()  # every rank is done writing its part of HF's directory before rank 0 removes it
        guard = self.guard
        if guard is None:  # one commit per checkpoint, by the process that holds the Guard
            return
        snapshot: dict[str, Any] = {
            "model": kwargs["model"].state_dict(),
            "trainer_state": json.loads(json.dumps(dataclasses.asdict(state))),
            "rng": rngs[0],
        }
        if len(rngs) > 1:
            snapshot["rng_ranks"] = rngs
        if kwargs.get("optimizer") is not None:
            snapshot["optimizer"] = kwargs["optimizer"].state_dict()
        if kwargs.get("lr_scheduler") is not None:
            snapshot["scheduler"] = kwargs["lr_scheduler"].state_dict()
        name = f"checkpoint-{state.global_step}-t{guard.lease.token}"
        metrics: dict[str, Any] = {"global_step": state.global_step}
        if state.log_history and "loss" in state.log_history[-1]:
            metrics["loss"] = state.log_history[-1]["loss"]
        record = guard.save(
            snapshot, episode=guard.episode or 0, metrics=metrics, background=False, name=name
        )
        self.committed.append(record.result().name)
        self._by_step[state.global_step] = self.committed[-1]
        self._pin_best(guard, state, args)
        written = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        if not self.keep_hf_checkpoints and written.is_dir():
            shutil.rmtree(written)  # HF's copy: the store holds the checkpoint now

    def _pin_best(self, guard: Guard, state: TrainerState, args: TrainingArguments) -> None:
        """HF's best (``metric_for_best_model``, judged at evaluation before the save) is pinned, so
        retention never takes it; the one pinned before is unpinned (retention decides about it again)."""
        best = self._by_step.get(state.best_global_step) if state.best_global_step else None
        if best is None or best == self._best:
            return
        store = guard.store
        store.pin(
            best, reason=f"Hugging Face's best model ({args.metric_for_best_model} = {state.best_metric})"
        )
        if self._best is not None:
            store.unpin(self._best, reason=f"no longer Hugging Face's best ({best} is)")
        self._best = best


def resume(trainer: Trainer, guard: Guard | None) -> str | None:
    """``resume_from_checkpoint`` for ``trainer.train``: a ``checkpoint-N`` directory written from the
    store's newest verified checkpoint (weights loaded into ``trainer.model`` first), or None for a new
    run. The pickles HF reads back (optimizer, scheduler, RNG) are written here from verified data. With
    several processes, rank 0 (``guard``) writes it and every rank gets its path (``guard=None``)."""
    path: str | None = from_rank_zero(_write_resume_directory(trainer, guard) if guard is not None else None)
    return path


def _write_resume_directory(trainer: Trainer, guard: Guard) -> str | None:
    loaded = guard.resume()
    if loaded is None:
        return None
    state = loaded.state
    assert trainer.model is not None  # a Trainer is built with its model
    trainer.model.load_state_dict(state["model"])
    step = int(state["trainer_state"]["global_step"])
    target = Path(str(trainer.args.output_dir)) / f"checkpoint-{step}"
    trainer.save_model(str(target))
    TrainerState(**state["trainer_state"]).save_to_json(str(target / "trainer_state.json"))
    if "optimizer" in state:
        torch.save(state["optimizer"], target / "optimizer.pt")
    if "scheduler" in state:
        torch.save(state["scheduler"], target / "scheduler.pt")
    if "rng_ranks" in state:  # HF reads rng_state_<rank>.pth when several processes train
        for rank, saved in enumerate(state["rng_ranks"]):
            torch.save(_rng_from(saved), target / f"rng_state_{rank}.pth")
    else:
        torch.save(_rng_from(state["rng"]), target / "rng_state.pth")
    return str(target)


_GO, _STOP, _FENCED = 0, 1, 2  # agreed with MAX: a fenced rank 0 means no last checkpoint anywhere


def _rng_states() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "cpu": torch.random.get_rng_state(),
        "python": json.loads(json.dumps(random.getstate())),
        "numpy": {"kind": kind, "keys": keys, "pos": position, "has_gauss": has_gauss, "cached": cached},
    }


def _rng_from(saved: dict[str, Any]) -> dict[str, Any]:
    """The RNG states in the shape HF's ``_load_rng_state`` reads (tuples where the libraries want them)."""
    version, internal, gauss = saved["python"]
    numpy = saved["numpy"]
    keys = np.asarray(numpy["keys"], dtype=np.uint32)
    return {
        "python": (version, tuple(internal), gauss),
        "numpy": (numpy["kind"], keys, int(numpy["pos"]), int(numpy["has_gauss"]), float(numpy["cached"])),
        "cpu": torch.as_tensor(saved["cpu"], dtype=torch.uint8),
    }


__all__ = ["GuardCallback", "resume"]
