"""A run's budget in the registry: limits that can only be tightened (or raised by an audited extension),
and the cumulative spend that survives every restart."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Row, Update, select, update

from trainguard.budget import extend_limits, loosened_settings, merge_limits
from trainguard.errors import LeaseLost, RunNotFound
from trainguard.registry import _schema as t
from trainguard.registry._leases import Lease, LeaseOps
from trainguard.registry._records import RunRecord
from trainguard.registry._states import EventKind


class BudgetOps(LeaseOps):
    def apply_limits(
        self, run: str, given: dict[str, Any], *, lease: Lease, source: str = "config"
    ) -> dict[str, Any]:
        """Record the limits a process starts with and return the run's effective limits: the rule of
        :func:`trainguard.budget.merge_limits` (tighten, never raise), applied under the run's lock - and
        only by the holder of the run's live lease (:class:`LeaseLost` otherwise): a process refused the
        lease must not rewrite the supervision of the run that holds it. A setting made looser (a longer
        timeout, ``rogue_action: report``) is an event of its own, naming the holder and the source."""
        with self._transaction() as conn:
            recorded = self._lock_run(conn, run).limits
            live, why = self._lease_check(conn, run, lease.token)
            if not live:
                raise LeaseLost(run, lease.token, f"limits are set only under the live lease: {why}")
            effective = merge_limits(run, recorded, given)
            if effective != recorded:
                conn.execute(
                    update(t.runs).where(t.runs.c.name == run).values(limits_json=json.dumps(effective))
                )
                self._record_event(
                    conn,
                    run,
                    EventKind.LIMITS_SET,
                    token=lease.token,
                    reason=f"started with {source}",
                    detail={"limits": effective, "previous": recorded},
                )
                if loosened := loosened_settings(recorded, effective):
                    self._record_event(
                        conn,
                        run,
                        EventKind.LIMITS_LOOSENED,
                        token=lease.token,
                        reason=f"{source} (lease token {lease.token}) loosened {', '.join(sorted(loosened))}",
                        detail={"changes": loosened},
                    )
        return effective

    def extend_budget(self, run: str, *, reason: str, **amounts: float | None) -> dict[str, Any]:
        """Raise limits by ``episodes=``, ``steps=``, ``runtime=`` (seconds); an audited event. The only way
        a run gets more budget (see :func:`trainguard.budget.extend_limits`)."""
        with self._transaction() as conn:
            before = self._lock_run(conn, run).limits
            limits, requested = extend_limits(run, before, amounts, reason=reason)
            conn.execute(update(t.runs).where(t.runs.c.name == run).values(limits_json=json.dumps(limits)))
            self._record_event(
                conn,
                run,
                EventKind.BUDGET_EXTENDED,
                reason=reason,
                detail={"amounts": requested, "limits": limits, "previous": before},
            )
        return limits

    def charge(self, run: str, *, episodes: int = 0, steps: int = 0, runtime: float = 0.0) -> RunRecord:
        """Add to (or, negative, refund from) the run's cumulative spend; returns the new totals.

        Durable on purpose: a charge lost to a crash would hand budget back to the next process.
        """
        with self._transaction() as conn:
            conn.execute(_spend(run, episodes, steps, runtime))
            row = conn.execute(select(t.runs).where(t.runs.c.name == run)).first()
        if row is None:
            raise RunNotFound(run, self.url)
        return RunRecord.from_row(row)

    def draw(self, run: str, *, episodes: int = 0, steps: int = 0) -> bool:
        """Charge ``episodes``/``steps`` only if they fit under the run's recorded limits; False (nothing
        charged) when they do not. Under the run's lock: processes drawing from one budget at once (the
        trials of a sweep) are never granted more than it holds between them."""
        with self._transaction() as conn:
            info = self._lock_run(conn, run)
            for amount, spent, limit in (
                (episodes, info.episodes_spent, info.limits.get("max_episodes")),
                (steps, info.steps_spent, info.limits.get("max_steps")),
            ):
                if amount and limit is not None and spent + amount > limit:
                    return False
            conn.execute(_spend(run, episodes, steps, 0.0))
        return True

    def record_heartbeat(self, run: str, token: int, detail: dict[str, Any]) -> None:
        """Latest liveness and progress of the run's holder (one row per run, overwritten)."""
        values = {
            "run": run,
            "token": token,
            "at": time.time(),
            "clock_domain": self.clock.domain,
            "clock_at": self.clock.now(),  # judged in the registry's clock, like lease expiry
            "detail_json": json.dumps(detail, default=str),
        }
        with self._transaction(durable=False) as conn:
            conn.execute(self._upsert(t.heartbeats, "run", values), self.clock.params())

    def heartbeats(self) -> dict[str, dict[str, Any]]:
        """Every run's latest heartbeat in one query."""
        with self._reading() as conn:
            rows = conn.execute(select(t.heartbeats)).all()
        return {r._mapping["run"]: _beat(r) for r in rows}

    def heartbeat(self, run: str) -> dict[str, Any] | None:
        with self._reading() as conn:
            row = conn.execute(select(t.heartbeats).where(t.heartbeats.c.run == run)).first()
        return None if row is None else _beat(row)


def _spend(run: str, episodes: int, steps: int, runtime: float) -> Update:
    """Add to a run's cumulative spend, in the database (concurrent charges add up, none is lost)."""
    return (
        update(t.runs)
        .where(t.runs.c.name == run)
        .values(
            episodes_spent=t.runs.c.episodes_spent + episodes,
            steps_spent=t.runs.c.steps_spent + steps,
            runtime_spent=t.runs.c.runtime_spent + runtime,
        )
    )


def _beat(row: Row[Any]) -> dict[str, Any]:
    """A heartbeat as the guard sent it, with the token and the registry's receipt time (wall clock for
    people; ``clock_at`` in ``clock_domain`` to judge its age by, see ``Registry.clock_reading``)."""
    m = row._mapping
    return {
        "token": m["token"],
        "at": m["at"],
        "clock_domain": m["clock_domain"],
        "clock_at": m["clock_at"],
        **json.loads(m["detail_json"]),
    }


__all__ = ["BudgetOps"]
