"""Ray Train: a lease per worker-group attempt, checkpoints committed by the controller, budgets across
attempts and restarts, a sweep-wide budget for Ray Tune.

    guard_callback = GuardCallback("guard.yaml")
    trainer = TorchTrainer(
        train_loop,                                     # uses RayGuard(config["trainguard"]), below
        train_loop_config={"trainguard": guard_callback.worker_settings()},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(callbacks=[guard_callback], failure_config=FailureConfig(max_failures=1)),
    )
    fit(trainer, guard_callback)                      # trainer.fit(); SIGTERM/SIGINT stop it gracefully

    def train_loop(config):
        with RayGuard(config["trainguard"]) as guard:
            state = guard.resume()                    # this rank's verified state, or None
            while guard.tick():                       # one optimizer step; False: stop (every rank)
                ...
                if guard.steps % 50 == 0:
                    guard.report({"loss": loss}, state=model_and_optimizer_state)
            if not guard.fenced:
                guard.report({"loss": loss}, state=model_and_optimizer_state)   # the last checkpoint

Where things happen. :class:`GuardCallback` runs in Ray Train's controller (a Ray Train callback of the
controller and worker-group kinds - DeveloperAPI, pinned with the ``ray`` extra): each time a worker group
starts it closes the previous attempt's Guard and opens a new one, so every attempt holds a new lease with
a higher token - the workers of a failed attempt that Ray did not manage to kill hold a stale token, and
nothing they stage is committed. It tells the workers their token, their budgets and the checkpoint to
resume from through a notice in the store (:mod:`._ray_attempt`). Workers stage their files (each rank
its own staging directory, hashed as written) and ``report`` them; after Ray's barrier, the controller
commits once per report (``after_report``): the staged files of every rank are moved into one checkpoint,
which the registry accepts only under the live token. Budgets are the run's, cumulative in the registry:
the controller charges the steps and episodes each report carries (rank 0's, once), workers stop exactly
at the limit from what was left when their group started. A checkpoint Ray itself is never given
(``Result.checkpoint`` stays None): the store keeps them, with its retention.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from trainguard.checkpoints.prepared import PreparedSave, StagedState
from trainguard.config import TrainguardConfig, load_config
from trainguard.errors import (
    CommitFenced,
    InvalidArgument,
    LeaseLost,
    MissingDependency,
    TrainguardError,
)
from trainguard.guard import Guard, StopReason
from trainguard.integrations._ray_attempt import (
    AttemptNotice,
    clear_stop_request,
    read_notice,
    request_stop,
    stop_requested,
    write_notice,
)
from trainguard.integrations._ray_worker import FACTS, RayGuard, rank_prefix
from trainguard.integrations._start import start_refusal
from trainguard.registry import EventKind, Registry

try:
    from ray.train.v2._internal.execution.callback import (
        ControllerCallback,
        ReportCallback,
        WorkerGroupCallback,
    )
except ImportError as error:  # an optional integration: say which extra brings it
    raise MissingDependency("ray", "ray", "trainguard.integrations.ray") from error


class GuardCallback(WorkerGroupCallback, ControllerCallback, ReportCallback):
    """The Guard of a Ray Train run, in the controller (see the module's doc). ``config``: a
    :class:`TrainguardConfig` or the path of one (``run`` and ``store`` must be set: the store must be a
    filesystem every worker shares). ``sweep``: the run draws every episode from that sweep's budget too
    (:func:`sweep_budget`)."""

    def __init__(self, config: TrainguardConfig | str | Path, *, sweep: str | None = None) -> None:
        self.config = config if isinstance(config, TrainguardConfig) else load_config(str(config))
        if not self.config.run or self.config.store is None:
            raise InvalidArgument("config", str(self.config.source), "a Ray run needs `run` and `store` set")
        store = self.config.store_path()
        if not isinstance(store, Path):  # workers stage their ranks' files in the shared directory
            raise InvalidArgument("store", store, "a Ray run needs a filesystem store every worker shares")
        self.run, self.store = self.config.run, store
        self.sweep = sweep
        self._guard: Guard | None = None
        self._notice: AttemptNotice | None = None
        self._attempt = 0
        self._started = False  # the open Guard's attempt has had a worker group

    def worker_settings(self) -> dict[str, str]:
        """For ``train_loop_config``: what :class:`RayGuard` needs to find its attempt."""
        return {"store": str(self.store), "run": self.run, "registry": self.config.registry_url()}

    # -- attempts ---------------------------------------------------------------------------------

    def after_controller_start(self, train_run_context: Any) -> None:
        self._open()  # a run whose budget is spent fails here, before any worker starts

    def before_worker_group_start(self, worker_group_context: Any) -> None:
        guard = self._guard
        if guard is not None and guard.fenced:
            # Fenced (revoked, taken over): a restart must not take the run back from whoever did it.
            raise LeaseLost(
                self.run, guard.lease.token, f"no new attempt after the lease was lost: {guard.stop}"
            )
        if guard is not None and self._started:  # a restart: a new lease for the new group
            guard.request_stop(
                StopReason.ERROR, f"worker group of attempt {self._attempt} failed; Ray restarts it"
            )
            self._close(None)
        if self._guard is None:
            self._open()
        self._started = True

    def _open(self) -> None:
        guard = Guard(self.config, install_signal_handlers=False)
        guard.__enter__()
        self._guard, self._attempt, self._started = guard, self._attempt + 1, False
        refusal = start_refusal(guard)  # before any worker starts: a spent budget trains zero steps
        if refusal is not None:
            self._close(refusal)
            raise refusal
        try:
            resumed = guard.resume()
        except BaseException as error:
            self._close(error)
            raise
        left = guard.remaining
        self._notice = AttemptNotice(
            run=self.run,
            token=guard.lease.token,
            attempt=self._attempt,
            steps_left=left.steps,
            episodes_left=left.episodes,
            steps_done=guard.steps,
            episodes_done=guard.next_episode - 1,
            resume=resumed.name if resumed is not None else None,
            sweep=self.sweep,
        )
        write_notice(self.store, self._notice)

    def _close(self, error: BaseException | None) -> None:
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.__exit__(type(error) if error else None, error, None)

    def after_controller_finish(self, result: Any) -> None:
        error = getattr(result, "error", None)
        self._close(error if isinstance(error, BaseException) else None)

    def before_controller_abort(self) -> None:
        self._close(None)

    # -- stops ------------------------------------------------------------------------------------

    def after_worker_group_poll_status(self, worker_group_status: Any) -> None:
        self._pass_on_stop()

    def _pass_on_stop(self) -> None:
        """A stop the Guard decided (runtime, memory, a lost lease) or the driver asked for (a signal),
        written into the notice once: the workers finish the step, save, and return."""
        guard, notice = self._guard, self._notice
        if guard is None or notice is None or notice.stop is not None:
            return
        if guard.stop is None and (asked := stop_requested(self.store, self.run)) is not None:
            guard.request_stop(StopReason.SIGNAL, asked)
        if guard.stop is not None:
            # A commit refused for the token stops the Guard without the monitor having fenced it yet.
            fenced = guard.fenced or guard.stop_reason is StopReason.LEASE_LOST
            why = guard.stop.detail if fenced else str(guard.stop)  # LeaseLost says "lease lost" itself
            self._notice = notice.stopped(why, fenced=fenced)
            write_notice(self.store, self._notice)

    # -- commits ----------------------------------------------------------------------------------

    def after_report(self, training_report: Any, metrics: list[dict[str, Any]]) -> None:
        guard = self._guard
        facts = [m[FACTS] for m in metrics if isinstance(m.get(FACTS), Mapping)]
        if guard is None or not facts:
            return
        token = guard.lease.token
        if any(f["token"] != token for f in facts):
            self._refuse_stale(guard, facts)
            return
        lead = min(facts, key=lambda f: int(f["rank"]))  # rank 0's count: charged once, not per worker
        if int(lead["steps"]):
            guard.tick(int(lead["steps"]))
        for _ in range(int(lead["episodes"])):
            guard.complete_episode()
        user = {k: v for k, v in metrics[0].items() if k != FACTS}
        numbers: dict[str, Any] = {k: float(v) for k, v in user.items() if _finite_number(v)}
        guard.report(**numbers)
        staged = sorted(
            (int(f["rank"]), StagedState.from_dict(f["staged"])) for f in facts if f.get("staged")
        )
        if staged:
            self._commit(guard, lead, staged, numbers)
        self._pass_on_stop()

    def _commit(
        self,
        guard: Guard,
        lead: Mapping[str, Any],
        staged: list[tuple[int, StagedState]],
        metrics: dict[str, float],
    ) -> None:
        if staged[0][0] != 0:
            raise InvalidArgument(
                "report", f"ranks {[r for r, _ in staged]}", "rank 0 must stage a state too"
            )
        name = lead.get("name") or self._free_name(
            guard, _default_name(int(lead["episode"]), int(lead["step"]), guard.lease.token)
        )
        prepared = PreparedSave(
            guard.store,
            guard.lease,
            int(lead["episode"]),
            "safetensors",
            name=str(name),
            metrics={**metrics, "global_step": int(lead["step"])},
        )
        try:
            prepared.begin()
            files = [f for rank, part in staged for f in prepared.gather(part, rank_prefix(rank))]
            prepared.commit(files)
        except (CommitFenced, LeaseLost) as fenced:
            prepared.abandon()
            guard.request_stop(StopReason.LEASE_LOST, str(fenced))
        except BaseException:
            prepared.abandon()
            raise

    def _free_name(self, guard: Guard, name: str) -> str:
        """Two reports at one step (a periodic save, then the last one) must not fail the run on a name:
        the second gets a suffix (names are never reused)."""
        candidate, n = name, 1
        while guard.registry.find_checkpoint(self.run, candidate) is not None:
            n += 1
            candidate = f"{name}-{n}"
        return candidate

    def _refuse_stale(self, guard: Guard, facts: list[Mapping[str, Any]]) -> None:
        """A report from a worker group whose attempt is over: nothing it staged is committed (the staged
        directories stay for recovery to judge, as any abandoned staging does), and the refusal is audited."""
        for stale in {int(f["token"]) for f in facts} - {guard.lease.token}:
            guard.registry.add_event(
                self.run,
                EventKind.COMMIT_REFUSED,
                token=stale,
                reason=f"a report of an earlier attempt (token {stale}); the live one is {guard.lease.token}",
            )


def _default_name(episode: int, step: int, token: int) -> str:
    """``step120-t3`` for a loop that counts steps, ``ep40-t3`` for one that counts episodes."""
    parts = ([f"ep{episode}"] if episode else []) + ([f"step{step}"] if step or not episode else [])
    return "-".join([*parts, f"t{token}"])


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def fit(trainer: Any, callback: GuardCallback) -> Any:
    """``trainer.fit()`` where SIGTERM or SIGINT (a preemption, Ctrl-C) stops the run gracefully: every
    worker finishes its step, reports a last checkpoint, the controller commits it. A second signal is
    left to its previous handler. Raises ``LeaseLost`` when the run ended fenced (its lease revoked or
    taken over: nothing after that was committed), where Ray itself would report a success, and a
    trainguard refusal of the controller (``BudgetExhausted`` for a spent budget) as itself."""
    store, run = callback.store, callback.run
    clear_stop_request(store, run)
    with _forwarding_signals(lambda signum: request_stop(store, run, _signal_reason(signum))):
        try:
            result = trainer.fit()
        except Exception as error:
            # Ray wraps what the controller raised; a trainguard refusal (a spent budget, a lost lease) is
            # re-raised as itself, so the caller can tell it from a crash.
            refusal = getattr(error, "controller_failure", None)
            if isinstance(refusal, TrainguardError):
                raise refusal from error
            raise
        finally:
            clear_stop_request(store, run)
    notice = read_notice(store, run)
    if notice.fenced:  # the workers stopped without a last checkpoint
        raise LeaseLost(run, notice.token, notice.stop or "the lease was lost")
    return result


def _signal_reason(signum: int) -> str:
    return f"the driver received {signal.Signals(signum).name}"


@contextmanager
def _forwarding_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    previous: dict[int, Any] = {}

    def handle(signum: int, _frame: FrameType | None) -> None:
        signal.signal(signum, previous[signum])  # the next one is the previous handler's
        on_signal(signum)

    for each in (signal.SIGTERM, signal.SIGINT):
        previous[int(each)] = signal.signal(each, handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def sweep_budget(registry_url: str, sweep: str, *, max_episodes: int, reason: str | None = None) -> int:
    """Record a sweep's episode budget (the trials' ``GuardCallback(..., sweep=sweep)`` draw from it); as
    for every run, a budget is tightened this way, never raised (``trainguard budget extend``). Returns the
    episodes left."""
    with Registry.open(registry_url) as registry:
        lease = registry.acquire(sweep, reason=reason or "sweep budget")
        try:
            limits = registry.apply_limits(sweep, {"max_episodes": max_episodes}, lease=lease, source="sweep")
        finally:
            lease.release()
        return int(limits["max_episodes"]) - registry.run(sweep).episodes_spent


__all__ = ["GuardCallback", "RayGuard", "fit", "sweep_budget"]
