"""Leases with fencing tokens.

A lease says who *should* be working on a run; the guarantee comes from the checkpoint commit checking the
token in the same transaction that records the checkpoint. Tokens are strictly increasing per run and come
from ``runs.last_token``, bumped in the transaction that grants the lease.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Self, TypeVar

from sqlalchemy import (
    Connection,
    Insert,
    Select,
    Update,
    and_,
    bindparam,
    delete,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from trainguard._os.identity import ProcessIdentity, is_same_process_alive
from trainguard.errors import InvalidArgument, LeaseHeld, LeaseLost, RegistryError
from trainguard.names import validate_name
from trainguard.registry import _schema as t
from trainguard.registry._core import RegistryCore
from trainguard.registry._records import LeaseInfo
from trainguard.registry._states import EventKind, LeaseState

log = logging.getLogger("trainguard")
DEFAULT_LEASE_TTL = 30.0
T = TypeVar("T")
# Retries of a registry that cannot be reached: quick at first (a dropped connection is usually back at
# once), then at most once a second - far below any lease's renewal interval.
_RETRY_FIRST, _RETRY_MAX = 0.05, 1.0


class Lease:
    """A held lease. ``token`` is the fencing token every commit must present."""

    def __init__(self, registry: LeaseOps, run: str, token: int, ttl: float, holder: ProcessIdentity) -> None:
        self.registry = registry
        self.run = run
        self.token = token
        self.ttl = ttl
        self.holder = holder
        self.lost_reason: str | None = None
        self.released = False
        # Local view of expiry, measured from *before* the grant/renewal was requested, so it can only be
        # earlier than the registry's: used to fail fast, never to decide.
        self.local_deadline = time.monotonic() + ttl
        self._unreachable_since: float | None = None  # when renewals started failing (None: they succeed)

    def __repr__(self) -> str:
        return f"Lease(run={self.run!r}, token={self.token}, ttl={self.ttl})"

    @property
    def held_locally(self) -> bool:
        """False once this process knows the lease is gone (lost, released, or past its local deadline)."""
        return self.lost_reason is None and not self.released and time.monotonic() < self.local_deadline

    def check(self) -> None:
        """Raise :class:`LeaseLost` if this process already knows the lease is gone."""
        if self.lost_reason is not None:
            raise LeaseLost(self.run, self.token, self.lost_reason)
        if self.released:
            raise LeaseLost(self.run, self.token, "released by this process")
        if time.monotonic() >= self.local_deadline:
            raise LeaseLost(self.run, self.token, f"not renewed within its ttl of {self.ttl:g}s")

    def renewal_interval(self, heartbeat_interval: float) -> float:
        """How often a holder renews: every heartbeat, and at least three times per ttl - so one late or
        lost renewal never lets a healthy holder's lease expire."""
        return min(heartbeat_interval, self.ttl / 3)

    def renew(self) -> None:
        self.registry.renew(self)

    def keep_alive(self) -> str | None:
        """Renew the lease; None while it is held, else why it is lost - an expected outcome, so a reason,
        not an exception. The one rule for every process that holds a lease (Guard, launcher): a lease the
        registry refuses to renew is lost at once; a registry that cannot be reached costs nothing until
        the lease's own ttl has passed without a renewal (then nothing this process writes could commit
        anyway)."""
        try:
            self.renew()
        except LeaseLost as lost:
            return lost.reason
        except RegistryError as error:
            if self._unreachable_since is None:  # once per outage, not once per beat
                self._unreachable_since = time.monotonic()
                log.warning("trainguard: lease renewal failed (retried until the ttl): %s", error)
            if not self.held_locally:
                return f"registry unreachable for longer than the lease ttl ({error.reason})"
            return None
        if self._unreachable_since is not None:
            outage, self._unreachable_since = time.monotonic() - self._unreachable_since, None
            log.warning(
                "trainguard: registry reachable again; lease of run %r renewed after %.1fs", self.run, outage
            )
        return None

    def while_held(self, operation: Callable[[], T], *, what: str) -> T:
        """Run a registry operation of the training or monitor path, retrying while the registry cannot be
        reached - for as long as this lease is still held locally, and no longer. An outage shorter than the
        lease costs a pause; a longer one is the lease's end (nothing this process wrote could commit any
        more), so this raises :class:`LeaseLost` and the holder fences itself."""
        delay = _RETRY_FIRST
        warned = False
        while True:
            try:
                return operation()
            except RegistryError as error:
                if not self.held_locally:
                    reason = f"registry unreachable for longer than the lease ttl ({error.reason})"
                    self.lost_reason = self.lost_reason or reason
                    raise LeaseLost(self.run, self.token, reason) from error
                if not warned:
                    log.warning(
                        "trainguard: %s: registry unreachable, retrying within the lease: %s", what, error
                    )
                    warned = True
                time.sleep(min(delay, max(0.0, self.local_deadline - time.monotonic())))
                delay = min(2 * delay, _RETRY_MAX)

    def release(self) -> bool:
        return self.registry.release(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        if not self.released and self.lost_reason is None:
            self.release()


class LeaseOps(RegistryCore):
    # Statements are built once per registry (they depend on the clock) and executed with parameters;
    # every execution passes ``**self.clock.params()``.

    @functools.cached_property
    def _live(self) -> ColumnElement[bool]:
        lease = t.leases.c
        return and_(
            lease.state == LeaseState.HELD.value,
            or_(
                and_(lease.clock_domain == self.clock.domain, lease.expires_at > self.clock.now()),
                and_(lease.clock_domain != self.clock.domain, lease.expires_wall > self.clock.wall()),
            ),
        )

    @functools.cached_property
    def _select_lease(self) -> Select[Any]:
        return select(t.leases, self._live.label("live")).where(t.leases.c.run == bindparam("lease_run"))

    @functools.cached_property
    def _renew_lease(self) -> Update:
        ttl = bindparam("lease_ttl", type_=t.leases.c.ttl.type)
        return (
            update(t.leases)
            .where(
                t.leases.c.run == bindparam("lease_run"),
                t.leases.c.token == bindparam("lease_token"),
                self._live,
            )
            .values(
                expires_at=self.clock.now() + ttl,
                expires_wall=self.clock.wall() + ttl,
                renewed_at=bindparam("now_wall"),
                renewals=t.leases.c.renewals + 1,
            )
        )

    @functools.cached_property
    def _renew_logged(self) -> Insert:
        """PostgreSQL: the renewal and its event in one statement (one round trip, autocommitted)."""
        renewed = self._renew_lease.returning(t.leases.c.run, t.leases.c.token).cte("renewed")
        columns = ["run", "at", "kind", "token", "actor_host", "actor_pid", "detail_json"]
        rows = select(
            renewed.c.run,
            bindparam("now_wall", type_=t.events.c.at.type),
            literal("lease_renewed"),
            renewed.c.token,
            bindparam("actor_host", type_=t.events.c.actor_host.type),
            bindparam("actor_pid", type_=t.events.c.actor_pid.type),
            literal("{}"),
        )
        # RETURNING because psycopg reports no rowcount for INSERT ... SELECT from a data-modifying CTE.
        return insert(t.events).from_select(columns, rows).returning(t.events.c.id)

    def _renew_row(self, lease: Lease) -> bool:
        params: dict[str, Any] = {
            "lease_run": lease.run,
            "lease_token": lease.token,
            "lease_ttl": lease.ttl,
            "now_wall": time.time(),
            **self.clock.params(),
        }
        if self.dialect == "postgresql":
            me = self.identity
            params.update(actor_host=me.host, actor_pid=me.pid)
            with self._relaxed_autocommit() as conn:
                return conn.execute(self._renew_logged, params).first() is not None
        with self._transaction(durable=False) as conn:
            if conn.execute(self._renew_lease, params).rowcount != 1:
                return False
            self._record_event(conn, lease.run, EventKind.LEASE_RENEWED, token=lease.token)
            return True

    def _lease_row(self, conn: Connection, run: str) -> LeaseInfo | None:
        row = conn.execute(self._select_lease, {"lease_run": run, **self.clock.params()}).first()
        return LeaseInfo.from_row(row, bool(row._mapping["live"])) if row else None

    def leases(self) -> dict[str, LeaseInfo]:
        """Every run's lease row in one query (the watchdog's sweep reads them all at once)."""
        with self._reading() as conn:
            rows = conn.execute(select(t.leases, self._live.label("live")), self.clock.params()).all()
        return {row._mapping["run"]: LeaseInfo.from_row(row, bool(row._mapping["live"])) for row in rows}

    def lease_info(self, run: str) -> LeaseInfo | None:
        """The run's lease row as the registry sees it now (``live`` judged by the registry clock)."""
        with self._reading() as conn:
            return self._lease_row(conn, run)

    def _end(
        self, conn: Connection, lease: LeaseInfo, state: LeaseState, kind: EventKind, reason: str
    ) -> None:
        conn.execute(
            update(t.leases)
            .where(t.leases.c.run == lease.run, t.leases.c.token == lease.token)
            .values(state=state.value, ended_at=time.time(), end_reason=reason)
        )
        self._record_event(
            conn,
            lease.run,
            kind,
            token=lease.token,
            reason=reason,
            detail={"holder_host": lease.holder_host, "holder_pid": lease.holder_pid},
        )

    def acquire(
        self, run: str, *, ttl: float = DEFAULT_LEASE_TTL, takeover: bool = False, reason: str | None = None
    ) -> Lease:
        """Grant this process the run's lease with a fresh token.

        A live holder makes this raise :class:`LeaseHeld` unless ``takeover`` is set, which revokes it.
        A holder on this host whose process (pid *and* start time) is gone is not live, whatever its TTL.
        """
        validate_name(run, "run")
        if not ttl > 0:
            raise InvalidArgument("ttl", ttl, "must be a positive number of seconds")
        if self.run_info(run) is None:
            self.ensure_run(run)
        me = self.identity
        lease = Lease(self, run, 0, ttl, me)
        with self._transaction() as conn:
            info = self._lock_run(conn, run)
            current = self._lease_row(conn, run)
            if current is not None and current.state is LeaseState.HELD:
                self._end_previous(conn, current, me, takeover, reason)
            token = info.last_token + 1
            conn.execute(update(t.runs).where(t.runs.c.name == run).values(last_token=token))
            conn.execute(delete(t.leases).where(t.leases.c.run == run))
            now_wall = time.time()
            conn.execute(
                insert(t.leases).values(
                    run=run,
                    token=token,
                    state=LeaseState.HELD.value,
                    holder_host=me.host,
                    holder_host_key=me.host_key,
                    holder_pid=me.pid,
                    holder_start_time=me.started_at,
                    holder_start_ticks=me.start_ticks,
                    holder_uid=me.uid,
                    ttl=ttl,
                    acquired_at=now_wall,
                    renewed_at=now_wall,
                    renewals=0,
                    clock_domain=self.clock.domain,
                    expires_at=self.clock.now() + ttl,
                    expires_wall=self.clock.wall() + ttl,
                ),
                self.clock.params(),
            )
            self._record_event(
                conn,
                run,
                EventKind.LEASE_ACQUIRED,
                token=token,
                reason=reason,
                detail={"ttl": ttl, "previous_token": current.token if current else None},
            )
        lease.token = token
        return lease

    def _end_previous(
        self, conn: Connection, current: LeaseInfo, me: ProcessIdentity, takeover: bool, reason: str | None
    ) -> None:
        if not current.live:
            self._end(
                conn,
                current,
                LeaseState.EXPIRED,
                EventKind.LEASE_EXPIRED,
                f"not renewed within its ttl of {current.ttl:g}s",
            )
        elif (
            current.holder_host_key == me.host_key
            # Without ticks (a row from before schema 3) the holder cannot be shown gone: it keeps its lease.
            and current.holder_start_ticks is not None
            and not is_same_process_alive(current.holder_pid, current.holder_start_ticks)
        ):
            self._end(
                conn,
                current,
                LeaseState.EXPIRED,
                EventKind.LEASE_EXPIRED,
                f"holder pid {current.holder_pid} on {current.holder_host} is gone",
            )
        elif takeover:
            why = f"taken over by pid {me.pid} on {me.host}" + (f": {reason}" if reason else "")
            self._end(conn, current, LeaseState.REVOKED, EventKind.LEASE_REVOKED, why)
        else:
            raise LeaseHeld(
                current.run, current.holder_host, current.holder_pid, current.acquired_at, current.token
            )

    def adopt(self, run: str, token: int) -> Lease:
        """Take over the *handle* of a lease another process acquired for us (``trainguard run`` hands its
        lease to the child): no new token, the token must be the live one."""
        with self._reading() as conn:
            current = self._lease_row(conn, run)
        if current is None or current.token != token or not current.live:
            raise LeaseLost(run, token, self._describe(current, token))
        lease = Lease(self, run, token, current.ttl, self.identity)
        lease.local_deadline = time.monotonic() + max(0.0, current.expires_wall - time.time())
        return lease

    def renew(self, lease: Lease) -> None:
        """Extend the lease by its TTL; raise :class:`LeaseLost` (and remember why) if it is not current."""
        started = time.monotonic()
        if not self._renew_row(lease):
            with self._transaction() as conn:
                lost = self._describe(self._lease_row(conn, lease.run), lease.token)
                self._record_event(conn, lease.run, EventKind.LEASE_LOST, token=lease.token, reason=lost)
            lease.lost_reason = lost
            raise LeaseLost(lease.run, lease.token, lost)
        lease.local_deadline = started + lease.ttl

    def release(self, lease: Lease) -> bool:
        """Give the lease up. Returns False if it was no longer held (nothing to release)."""
        with self._transaction() as conn:
            result = conn.execute(
                update(t.leases)
                .where(
                    t.leases.c.run == lease.run,
                    t.leases.c.token == lease.token,
                    t.leases.c.state == LeaseState.HELD.value,
                )
                .values(
                    state=LeaseState.RELEASED.value, ended_at=time.time(), end_reason="released by holder"
                )
            )
            released = result.rowcount == 1
            if released:
                self._record_event(conn, lease.run, EventKind.LEASE_RELEASED, token=lease.token)
        lease.released = True
        return released

    def revoke(self, run: str, reason: str, *, token: int | None = None) -> LeaseInfo | None:
        """Revoke the run's lease (any process may). Returns the revoked lease, or None if none was held.

        From the moment this returns, no commit with the revoked token can succeed.
        """
        if not reason or not reason.strip():
            raise InvalidArgument("reason", reason, "a revoke needs a reason for the audit log")
        with self._transaction() as conn:
            self._lock_run(conn, run)
            current = self._lease_row(conn, run)
            if current is None or current.state is not LeaseState.HELD:
                return None
            if token is not None and current.token != token:
                return None
            self._end(conn, current, LeaseState.REVOKED, EventKind.LEASE_REVOKED, reason)
        return current

    @staticmethod
    def _describe(current: LeaseInfo | None, token: int) -> str:
        if current is None:
            return "the run has no lease"
        if current.token != token:
            return f"superseded by token {current.token} (pid {current.holder_pid} on {current.holder_host})"
        if current.state is LeaseState.HELD and not current.live:
            return f"expired: not renewed within its ttl of {current.ttl:g}s"
        return f"{current.state}: {current.end_reason or 'no reason recorded'}"

    def _lease_check(self, conn: Connection, run: str, token: int) -> tuple[bool, str]:
        """Inside a transaction that has locked the run: is ``token`` the live lease?"""
        current = self._lease_row(conn, run)
        if current is not None and current.token == token and current.live:
            return True, ""
        return False, self._describe(current, token)


__all__ = ["DEFAULT_LEASE_TTL", "Lease", "LeaseOps"]
