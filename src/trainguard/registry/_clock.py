"""Which clock judges lease expiry.

On PostgreSQL every client may sit on another machine (or in a VM whose clock drifts), so expiry is judged
by the database server's own clock inside the statement. On SQLite every client is on this host, so expiry
is judged by a clock that wall-clock jumps (NTP steps, a user changing the date) cannot move:
CLOCK_BOOTTIME, which also keeps counting while the machine is suspended, so a lease does not survive a
suspend. That clock restarts at boot, hence the domain names the boot; a lease written under another
domain is judged by the wall clock instead (a reboot, or - misconfigured - a second host on one file).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Float, bindparam, cast, func
from sqlalchemy.sql.elements import ColumnElement

from trainguard._os.identity import boot_id


def host_monotonic() -> float:
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


@dataclass
class RegistryClock:
    """``now()`` and ``wall()`` are SQL expressions, so expiry is computed where the decision is made.

    On the host side they are bind parameters (so statements can be built once and cached - statement
    construction, not SQLite, dominated the cost of a renewal); every execution that uses them passes
    ``**clock.params()``.
    """

    domain: str
    database_side: bool
    monotonic: Callable[[], float] = field(default=host_monotonic)
    wall_clock: Callable[[], float] = field(default=time.time)

    @classmethod
    def for_dialect(cls, dialect: str) -> RegistryClock:
        if dialect == "postgresql":
            return cls(domain="postgresql", database_side=True)
        return cls(domain=f"host:{boot_id()}", database_side=False)

    def now(self) -> ColumnElement[float]:
        if self.database_side:
            return _db_epoch()
        return bindparam("tg_clock_now", type_=Float)

    def wall(self) -> ColumnElement[float]:
        if self.database_side:
            return _db_epoch()
        return bindparam("tg_clock_wall", type_=Float)

    def params(self) -> dict[str, float]:
        if self.database_side:
            return {}
        return {"tg_clock_now": self.monotonic(), "tg_clock_wall": self.wall_clock()}


@dataclass(frozen=True)
class ClockReading:
    """A time in a clock domain: two readings can be subtracted only when their domains are equal."""

    domain: str
    at: float

    def since(self, domain: str | None, at: float | None) -> float | None:
        """Seconds from ``at`` (read in ``domain``) to this reading; None across domains."""
        if domain != self.domain or at is None:
            return None
        return self.at - at


def _db_epoch() -> ColumnElement[float]:
    # clock_timestamp(), not now(): now() is frozen at transaction start, and a transaction that waited on a
    # row lock would judge expiry by a time in the past.
    return cast(func.extract("epoch", func.clock_timestamp()), Float)


__all__ = ["ClockReading", "RegistryClock", "host_monotonic"]
