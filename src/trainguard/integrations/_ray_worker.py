"""The worker side of the Ray Train integration: budgets counted where the steps are taken, files staged
for the controller to commit, the stop agreed across the worker group.

A worker never commits and never holds the lease: it learns its attempt's token from the controller's
notice (:mod:`._ray_attempt`), stages its state under that token, and sends the staged files' names and
hashes with its ``ray.train.report``. What it decides alone - the step and episode budgets - it decides
from numbers every worker of the group has (what was left when the group started, the steps taken since),
so every rank reaches the same decision at the same step; what reaches it from outside (a stop, a newer
attempt) is polled from the notice and agreed with ``all_reduce`` when a process group is up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from trainguard.checkpoints import CheckpointStore
from trainguard.checkpoints.codecs import TENSORS_FILE, TREE_FILE, read_state
from trainguard.checkpoints.prepared import stage_state, verified_checkpoint, verified_file
from trainguard.errors import LeaseLost, MissingDependency
from trainguard.integrations._collective import agreed_max
from trainguard.integrations._ray_attempt import AttemptNotice, read_notice
from trainguard.registry import ProcessIdentity, ProcessRole, Registry

try:
    import ray.train
except ImportError as error:  # an optional integration: say which extra brings it
    raise MissingDependency("ray", "ray", "trainguard.integrations.ray") from error

FACTS = "trainguard"  # the key of a report's metrics that carries what the controller needs
NOTICE_POLL = 0.5  # seconds between reads of the controller's notice (a stat and a small read)
_GO, _STOP, _FENCED = 0, 1, 2  # agreed with MAX: a fenced rank wins over a graceful stop


def rank_prefix(rank: int) -> str:
    """Where a rank's files are in a committed checkpoint: rank 0's under the store's usual names (so
    ``store.load`` and every tool read it), the others' prefixed."""
    return "" if rank == 0 else f"rank{rank}."


class RayGuard:
    """Inside ``train_loop_per_worker``: ``with RayGuard(config["trainguard"]) as guard:``.

    ``tick()`` per optimizer step and ``episodes()`` (or ``complete_episode()``) per episode return False
    when the run must stop - every rank at the same step; then ``report(..., state=...)`` once more gives
    a last checkpoint (unless ``fenced``). ``report`` replaces ``ray.train.report``: every rank calls it
    at the same points (it is Ray's barrier); ranks with a ``state`` stage it and the controller commits
    one checkpoint per report. ``resume()`` returns this rank's state from the checkpoint the controller
    chose (verified: registry hash, manifest, every file), or None for a new run."""

    def __init__(self, settings: Mapping[str, str], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.store_root = Path(settings["store"])
        self.run = settings["run"]
        self._registry_url = settings["registry"]
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.notice: AttemptNotice = read_notice(self.store_root, self.run)
        self.token = self.notice.token
        self._clock = clock
        self._polled = clock()
        self._steps = self._episodes = 0  # taken by this worker group
        self._reported_steps = self._reported_episodes = 0
        self._decision = _GO
        self.stop: str | None = None
        self._registry: Registry | None = None
        self._process: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._registry = Registry.open(self._registry_url)
        # Registered for the attempt's token: the watchdog then knows this worker's staged writes are the
        # run's, not a rogue writer's.
        self._process = self._registry.register_process(
            self.run, self.token, ProcessRole.WORKER, ProcessIdentity.current()
        )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if self._registry is not None:
            if self._process is not None:
                self._registry.end_process(self._process)
            self._registry.close()
            self._registry = None

    # -- the loop --------------------------------------------------------------------------------------

    @property
    def fenced(self) -> bool:
        """The lease is gone (a newer attempt, a revocation): nothing this worker stages will commit."""
        return self._decision == _FENCED

    @property
    def steps(self) -> int:
        """Steps of the whole run (every attempt, every start) as of now."""
        return self.notice.steps_done + self._steps

    @property
    def episode(self) -> int:
        """The number of the episode in progress (or the last one finished)."""
        return self.notice.episodes_done + self._episodes

    def tick(self, steps: int = 1) -> bool:
        """Count ``steps`` (one optimizer step of this worker group); False when the run must stop."""
        self._steps += steps
        left = self.notice.steps_left
        if left is not None and self._steps >= left:
            self.stop = self.stop or f"{self.steps} steps: the step budget is spent"
            return self._agree(_STOP)
        return self._agree(_GO)

    def complete_episode(self) -> bool:
        """Count one finished episode; False when no further one may start."""
        self._episodes += 1
        return self._agree(self._episode_verdict())

    def episodes(self) -> Generator[int, None, None]:
        """Episode numbers, continuing the run's count, until a budget or a stop ends the loop."""
        while self._agree(self._episode_verdict()):
            try:
                yield self.episode + 1
            finally:  # counted when the body is done - or abandoned (break, error): it ran, it was drawn
                self._episodes += 1

    def _episode_verdict(self) -> int:
        left = self.notice.episodes_left
        if left is not None and self._episodes >= left:
            self.stop = self.stop or f"{self.episode} episodes: the episode budget is spent"
            return _STOP
        if self.notice.sweep is not None and self.rank == 0 and not self._draw_from_sweep():
            return _STOP
        return _GO

    def _draw_from_sweep(self) -> bool:
        """One episode from the sweep's budget, before it runs: the registry grants it or the sweep is
        spent (atomic across every trial: no two trials are granted the last episode)."""
        assert self._registry is not None and self.notice.sweep is not None
        if self._registry.draw(self.notice.sweep, episodes=1):
            return True
        self.stop = f"the sweep {self.notice.sweep!r} has spent its episode budget"
        return False

    def _agree(self, verdict: int) -> bool:
        now = self._clock()
        if now - self._polled >= NOTICE_POLL or verdict != _GO:
            self._polled = now
            verdict = max(verdict, self._notice_verdict())
        if self.world_size > 1:
            verdict = agreed_max(verdict)
        if verdict != _GO and self.stop is None:
            self.stop = "another worker of the group stopped"
        self._decision = max(self._decision, verdict)
        return self._decision == _GO

    def _notice_verdict(self) -> int:
        current = read_notice(self.store_root, self.run)
        if current.token != self.token:
            self.stop = f"attempt {current.attempt} (token {current.token}) owns the run now"
            return _FENCED
        if current.stop is not None:
            self.stop = current.stop
            return _FENCED if current.fenced else _STOP
        return _GO

    # -- reports and checkpoints -------------------------------------------------------------------------

    def report(
        self, metrics: Mapping[str, Any], *, state: object | None = None, name: str | None = None
    ) -> None:
        """``ray.train.report(metrics)`` with what the controller needs: this attempt's token, the steps and
        episodes since the last report, and - with ``state`` - the files this rank staged (safetensors +
        JSON, hashed while written) for the controller to commit as one checkpoint."""
        if self.fenced:
            raise LeaseLost(self.run, self.token, self.stop or "a newer attempt owns the run")
        staged = None
        if state is not None:
            label = name or f"step{self.steps}"
            staged = stage_state(
                self.store_root, f"{label}-r{self.rank}", ProcessIdentity.current(), self.token, state
            )
        facts = {
            "token": self.token,
            "rank": self.rank,
            "steps": self._steps - self._reported_steps,
            "episodes": self._episodes - self._reported_episodes,
            "step": self.steps,
            "episode": self.episode,
            "name": name,
            "staged": staged.as_dict() if staged is not None else None,
        }
        ray.train.report({**metrics, FACTS: facts})
        self._reported_steps, self._reported_episodes = self._steps, self._episodes

    def resume(self) -> Any | None:
        """This rank's state in the checkpoint the controller chose to resume from (rank 0's when this
        rank saved none), every byte verified before it is decoded; None for a new run."""
        name = self.notice.resume
        if name is None:
            return None
        assert self._registry is not None, "RayGuard.resume() inside `with RayGuard(...)`"
        with CheckpointStore.open_existing(
            self.store_root, run=self.run, registry=self._registry, read_only=True
        ) as store:
            _, manifest, directory = verified_checkpoint(store, name)
            files = {f.path: f for f in manifest.files}
            prefix = rank_prefix(self.rank)
            if prefix + TREE_FILE not in files:
                prefix = ""
            wanted = {
                plain: files[prefix + plain] for plain in (TREE_FILE, TENSORS_FILE) if prefix + plain in files
            }
            return read_state(name, {plain: verified_file(name, directory, f) for plain, f in wanted.items()})


__all__ = ["FACTS", "RayGuard", "rank_prefix"]
