"""A run's budget in the registry: limits that can only be tightened (or raised by an audited extension),
and the cumulative spend that survives every restart."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from trainguard.errors import ConfigError
from trainguard.registry import _schema as t
from trainguard.registry._core import RegistryCore
from trainguard.registry._records import RunRecord

LIMIT_KEYS = ("max_episodes", "max_steps", "max_runtime", "max_memory", "max_disk")
# What `trainguard budget extend` can raise, by its flag name.
EXTENDABLE = {"episodes": "max_episodes", "steps": "max_steps", "runtime": "max_runtime"}


class BudgetOps(RegistryCore):
    def apply_limits(self, run: str, given: dict[str, Any], *, source: str = "config") -> dict[str, Any]:
        """Record the limits a process starts with and return the run's effective limits.

        The first start records them as given. Later starts may tighten a limit (lower it, or add one that
        was missing) but never raise or remove one: a restarted process must not buy itself more budget.
        Extensions granted by :meth:`extend_budget` are added on top of whatever the config says.
        """
        with self.transaction() as conn:
            recorded = self._lock_run(conn, run).limits
            extensions = dict(recorded.get("extensions", {}))
            effective: dict[str, Any] = {k: v for k, v in given.items() if k not in LIMIT_KEYS}
            for key in LIMIT_KEYS:
                wanted = given.get(key)
                if wanted is not None:
                    wanted = wanted + extensions.get(key, 0)
                before = recorded.get(key)
                if before is None or (wanted is not None and wanted <= before):
                    effective[key] = wanted
                elif wanted is None:
                    effective[key] = before  # a recorded limit cannot be dropped by leaving it out
                else:
                    raise ConfigError(
                        f"limits.{key}",
                        given[key],
                        f"the run was given {before:g} (recorded in the registry); a restart cannot raise a "
                        f"limit - use `trainguard budget extend {run} --{_flag(key)} N --reason TEXT`",
                    )
            effective = {k: v for k, v in effective.items() if v is not None}
            if extensions:
                effective["extensions"] = extensions
            if effective != recorded:
                conn.execute(
                    update(t.runs).where(t.runs.c.name == run).values(limits_json=json.dumps(effective))
                )
                self.record_event(
                    conn,
                    run,
                    "limits_set",
                    reason=f"started with {source}",
                    detail={"limits": effective, "previous": recorded},
                )
        return effective

    def extend_budget(self, run: str, *, reason: str, **amounts: float | None) -> dict[str, Any]:
        """Raise limits by ``episodes=``, ``steps=``, ``runtime=`` (seconds); an audited event."""
        if not reason or not reason.strip():
            raise ConfigError("--reason", reason, "a budget extension needs a reason for the audit log")
        requested = {k: v for k, v in amounts.items() if v is not None}
        unknown = set(requested) - set(EXTENDABLE)
        if unknown or not requested:
            raise ConfigError(
                "extend", sorted(unknown) or None, f"give one or more of {', '.join(EXTENDABLE)}"
            )
        with self.transaction() as conn:
            limits = self._lock_run(conn, run).limits
            before = dict(limits)
            extensions = dict(limits.get("extensions", {}))
            for name, amount in requested.items():
                key = EXTENDABLE[name]
                if not amount or amount <= 0:
                    raise ConfigError(f"--{name}", amount, "must be a positive amount")
                if limits.get(key) is None:
                    raise ConfigError(f"--{name}", amount, f"run {run!r} has no {key} limit to extend")
                limits[key] = limits[key] + amount
                extensions[key] = extensions.get(key, 0) + amount
            limits["extensions"] = extensions
            conn.execute(update(t.runs).where(t.runs.c.name == run).values(limits_json=json.dumps(limits)))
            self.record_event(
                conn,
                run,
                "budget_extended",
                reason=reason,
                detail={"amounts": requested, "limits": limits, "previous": before},
            )
        return limits

    def charge(self, run: str, *, episodes: int = 0, steps: int = 0, runtime: float = 0.0) -> RunRecord:
        """Add to (or, negative, refund from) the run's cumulative spend; returns the new totals.

        Durable on purpose: a charge lost to a crash would hand budget back to the next process.
        """
        with self.transaction() as conn:
            conn.execute(
                update(t.runs)
                .where(t.runs.c.name == run)
                .values(
                    episodes_spent=t.runs.c.episodes_spent + episodes,
                    steps_spent=t.runs.c.steps_spent + steps,
                    runtime_spent=t.runs.c.runtime_spent + runtime,
                )
            )
            row = conn.execute(select(t.runs).where(t.runs.c.name == run)).one()
        return RunRecord.from_row(row)

    def record_heartbeat(self, run: str, token: int, detail: dict[str, Any]) -> None:
        """Latest liveness and progress of the run's holder (one row per run, overwritten)."""
        values = {
            "run": run,
            "token": token,
            "at": time.time(),
            "detail_json": json.dumps(detail, default=str),
        }
        upsert = (pg_insert if self.dialect == "postgresql" else sqlite_insert)(t.heartbeats).values(**values)
        with self.transaction(durable=False) as conn:
            conn.execute(upsert.on_conflict_do_update(index_elements=["run"], set_=values))

    def heartbeats(self) -> dict[str, dict[str, Any]]:
        """Every run's latest heartbeat in one query."""
        with self.reading() as conn:
            rows = conn.execute(select(t.heartbeats)).all()
        return {r._mapping["run"]: _beat(r) for r in rows}

    def heartbeat(self, run: str) -> dict[str, Any] | None:
        with self.reading() as conn:
            row = conn.execute(select(t.heartbeats).where(t.heartbeats.c.run == run)).first()
        return None if row is None else _beat(row)


def _beat(row: Row[Any]) -> dict[str, Any]:
    """A heartbeat as the guard sent it, with the token and the registry's receipt time."""
    m = row._mapping
    return {"token": m["token"], "at": m["at"], **json.loads(m["detail_json"])}


def _flag(key: str) -> str:
    return next((flag for flag, limit in EXTENDABLE.items() if limit == key), key)


__all__ = ["EXTENDABLE", "LIMIT_KEYS", "BudgetOps"]
