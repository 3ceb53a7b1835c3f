"""PyTorch Lightning: checkpoints through the fenced store; budgets, lease and signals in the loop.

    with tg.Guard.from_config("guard.yaml") as guard:
        trainer = L.Trainer(
            callbacks=[GuardCallback(guard), ModelCheckpoint(monitor="val_loss", save_top_k=2)],
            plugins=[StoreCheckpointIO(guard)],
        )
        trainer.fit(model, ckpt_path=resume_path(guard))          # "trainguard:latest", or None for a new run

``StoreCheckpointIO``: every checkpoint ``ModelCheckpoint`` (or ``trainer.save_checkpoint``) writes is
committed by the Guard under its token (a stale process cannot commit); a removal hands the checkpoint to
the store's retention instead of deleting it; the best one (``ModelCheckpoint.best_model_path``) is
pinned, and the one a run resumed from is protected. Nothing is pickled: tensors go to safetensors, the
rest (loops, callback state, hyper-parameters) to JSON; callback bookkeeping scalars that are not finite
(``ModelCheckpoint``'s ``kth_value = inf`` before it has k checkpoints) are kept as tagged JSON values - the
model's and optimizer's tensors must still be finite. Lightning's ``save_last="link"`` makes a symlink
outside any checkpoint IO: use ``save_last=True``.

``GuardCallback``: one optimizer step is one ``tick()`` (the step budget), one training epoch one episode;
a stop (budget, lost lease, SIGTERM) is agreed across ranks (``strategy.reduce_boolean_decision``) and
ends ``fit()`` after the current batch with a last checkpoint. A run whose budget is already spent stops
before its first step. Strategies that bypass ``CheckpointIO`` (FSDP, DeepSpeed) are not covered: use
:mod:`trainguard.distributed` for sharded saves. Under torchrun (DDP) the Guard is rank 0's alone: the
other ranks pass ``None`` to both and their config to ``resume_path`` (tests/lightning_ranks.py).
"""

from __future__ import annotations

import math
import re
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from trainguard.checkpoints import LATEST, CheckpointStore
from trainguard.config import TrainguardConfig
from trainguard.errors import InvalidArgument, MissingDependency, RegistryNotFound
from trainguard.guard import Guard, StopReason
from trainguard.integrations._collective import from_rank_zero
from trainguard.registry import Registry

try:
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError as error:  # an optional integration: say which extra brings it
    raise MissingDependency("lightning", "lightning", "trainguard.integrations.lightning") from error

PREFIX = "trainguard:"  # ckpt_path="trainguard:latest" or "trainguard:<checkpoint name>"
_FLOAT_TAG = "__trainguard_float__"  # a non-finite scalar of callback state, kept in JSON
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def resume_path(guard: Guard | TrainguardConfig) -> str | None:
    """``ckpt_path`` for ``trainer.fit``: the run's newest committed checkpoint, or None for a new run. The
    ranks without the Guard (under torchrun) pass the config: every rank must give ``fit`` the same path."""
    if isinstance(guard, Guard):
        return f"{PREFIX}{LATEST}" if guard.store.checkpoints() else None
    if not guard.run:
        raise InvalidArgument("config", str(guard.source), "has no `run`: which run's checkpoints?")
    try:
        with Registry.open(guard.registry_url(), mode="read") as registry:
            return f"{PREFIX}{LATEST}" if registry.checkpoints(guard.run) else None
    except RegistryNotFound:  # rank 0's Guard has not created it yet: a new run
        return None


class StoreCheckpointIO(CheckpointIO):
    """Lightning's checkpoint IO, through the Guard's fenced store (see the module's doc).

    ``background`` (default): a save returns once the tensors are copied and commits on another thread,
    one in flight (the next save, a load and the end of ``fit`` wait for it; a failed commit is raised
    there); ModelCheckpoint's new best is pinned as soon as it is committed, before any later save's
    retention runs. ``background=False``: every save returns committed."""

    def __init__(self, guard: Guard | None, *, background: bool = True) -> None:
        self.guard = guard  # None on the ranks without the Guard: Lightning saves on global rank zero only
        self.background = background
        self.names: dict[str, str] = {}  # Lightning's path -> the store's checkpoint name
        self._best: str | None = None  # the checkpoint this IO pinned as ModelCheckpoint's best

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        guard = self.guard
        if guard is None:
            raise InvalidArgument("guard", None, "a checkpoint is saved by the process that holds the Guard")
        step = int(checkpoint.get("global_step", 0))
        stem = _UNSAFE.sub("-", Path(str(path)).stem).strip("-.") or "checkpoint"
        name = f"{stem}-s{step}-t{guard.lease.token}"
        metrics = {"lightning_file": Path(str(path)).name, "global_step": step}
        metrics |= {k: float(v) for k, v in _monitored(checkpoint).items() if math.isfinite(v)}
        best = str(path) in {str(s.get("best_model_path")) for s in _model_checkpoints(checkpoint)}
        state, episode = _storable(checkpoint), guard.episode or 0
        result = guard.save(state, episode=episode, metrics=metrics, background=self.background, name=name)
        self.names[str(path)] = result.name
        if best:
            result.when_committed(lambda record: self._pin_best(record.name))

    def _pin_best(self, name: str) -> None:
        """Pin ModelCheckpoint's best (and unpin the previous best), so retention never takes it."""
        if name == self._best or self.guard is None:
            return
        store = self.guard.store
        store.pin(name, reason="ModelCheckpoint's best")
        if self._best is not None:
            store.unpin(self._best, reason="no longer ModelCheckpoint's best")
        self._best = name

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # Every rank loads (Lightning restores on each): rank 0 resolves the name, the others learn where it
        # is from rank 0 and read it from the shared store themselves, verified the same way.
        where: tuple[str, ...] | None = None
        guard = self.guard
        if guard is not None:
            guard.wait_for_saves()
            try:
                where = ("ok", str(guard.store.root), guard.run, guard.registry_url, self._name_of(str(path)))
            except InvalidArgument as error:
                where = ("error", error.rule)
        where = from_rank_zero(where)
        if where is None:
            raise InvalidArgument(
                "guard", None, "rank 0 must hold the Guard: it names the checkpoint to load"
            )
        if where[0] == "error":
            raise InvalidArgument("ckpt_path", str(path), where[1])
        _, root, run, url, name = where
        if guard is not None:
            loaded = guard.store.load(name, mapped=False)  # a private copy: Lightning keeps references to it
            guard.store.registry.set_resumed_from(run, loaded.name)  # retention never takes the resume source
        else:
            with CheckpointStore.open_existing(root, run=run, registry=url, read_only=True) as store:
                loaded = store.load(name, mapped=False)
        restored: dict[str, Any] = _restored(loaded.state)
        return restored

    def _name_of(self, text: str) -> str:
        if text.startswith(PREFIX):
            return text.removeprefix(PREFIX) or LATEST
        if text in self.names:
            return self.names[text]
        raise InvalidArgument(
            "ckpt_path", text, f"is not a checkpoint of the store: use {PREFIX}latest or {PREFIX}<name>"
        )

    def remove_checkpoint(self, path: Any) -> None:
        """ModelCheckpoint no longer wants it: the store's retention decides (nothing is deleted here)."""
        self.names.pop(str(path), None)

    def teardown(self) -> None:
        if self.guard is not None:
            self.guard.wait_for_saves()  # fit() ends with every checkpoint committed (or its error raised)


class GuardCallback(Callback):
    """Budgets, the lease and signals in Lightning's loop (see the module's doc). ``guard``: None on the
    ranks that do not hold it (torchrun): they vote in every agreed stop (a SIGTERM they receive included)
    and take part in the last checkpoint, whose decision is rank 0's."""

    def __init__(self, guard: Guard | None, *, final_checkpoint: bool = True) -> None:
        self.guard = guard
        self.final_checkpoint = final_checkpoint
        self.stopped_by_guard = False
        self._signalled = False  # a SIGTERM on a rank without the Guard

    def _agree(self, trainer: Trainer, stop: bool) -> None:
        # Every rank must leave the loop at the same batch, or the others wait in a collective forever.
        if trainer.strategy.reduce_boolean_decision(stop or self._signalled, all=False):
            trainer.should_stop = True
            self.stopped_by_guard = True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning's own SIGTERM handler (installed just before this hook, restored by its teardown) makes
        # the loop raise SIGTERMException at the next batch: no last checkpoint. Ours asks the Guard for a
        # graceful stop instead, which ends fit() after the current batch with one.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)
        guard = self.guard
        self._agree(trainer, guard is not None and (guard.stop is not None or not guard.tick(0)))

    def _on_sigterm(self, number: int, _frame: FrameType | None) -> None:
        if self.guard is None:
            self._signalled = True
            return
        self.guard.request_stop(
            StopReason.SIGNAL, f"signal {signal.Signals(number).name}: stopping after this batch"
        )

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        guard = self.guard
        self._agree(trainer, guard is not None and (not guard.tick(1) or guard.stop is not None))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.stopped_by_guard:
            self._agree(trainer, self.guard is not None and not self.guard.complete_episode())

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.guard is not None:
            checkpoint["trainguard"] = {"run": self.guard.run, "token": self.guard.lease.token}

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A stop the Guard asked for ends with a checkpoint of where training stopped."""
        if not (self.stopped_by_guard and self.final_checkpoint):
            return  # the same on every rank: stopped_by_guard was agreed
        guard, skip = self.guard, True
        if guard is not None:
            last = guard.last_checkpoint
            # fenced: nothing can commit; or ModelCheckpoint saved this very step already
            skip = guard.fenced or (
                last is not None and last.metrics.get("global_step") == trainer.global_step
            )
        if trainer.strategy.broadcast(skip, src=0):  # rank 0 decides; saving is collective in Lightning
            return
        trainer.save_checkpoint(Path(trainer.default_root_dir) / "stopped.ckpt")


def _model_checkpoints(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    callbacks = checkpoint.get("callbacks") or {}
    return [state for key, state in callbacks.items() if str(key).startswith("ModelCheckpoint")]


def _monitored(checkpoint: dict[str, Any]) -> dict[str, float]:
    found = {}
    for state in _model_checkpoints(checkpoint):
        score, monitor = state.get("current_score"), state.get("monitor")
        if monitor and isinstance(score, torch.Tensor) and score.numel() == 1:
            found[str(monitor)] = float(score)
    return found


def _storable(value: Any, *, in_callbacks: bool = False) -> Any:
    """The checkpoint as the store keeps it: callback state's non-finite scalars tagged for JSON."""
    if isinstance(value, dict):
        return {k: _storable(v, in_callbacks=in_callbacks or k == "callbacks") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_storable(v, in_callbacks=in_callbacks) for v in value)
    if in_callbacks and isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        number = float(value)
        if not math.isfinite(number):
            return {_FLOAT_TAG: repr(number), "dtype": str(value.dtype).removeprefix("torch.")}
    return value


def _restored(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_FLOAT_TAG, "dtype"}:
            return torch.tensor(float(value[_FLOAT_TAG]), dtype=getattr(torch, str(value["dtype"])))
        return {k: _restored(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_restored(v) for v in value)
    return value


__all__ = ["PREFIX", "GuardCallback", "StoreCheckpointIO", "resume_path"]
