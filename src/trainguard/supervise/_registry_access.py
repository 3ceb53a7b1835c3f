"""How the watchdog reaches a registry that may take no writes, so that it can still act.

A frozen process can hold SQLite's write lock for as long as it is frozen (stopped in the middle of a
transaction), and a PostgreSQL server can be down: the watchdog then still judges from what it can read and
acts by signals, and says in its log what it could not record. Nothing is lost: what the registry did not take
is written at the next sweep (the process it killed released the lock).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from trainguard.errors import RegistryError
from trainguard.registry import EventKind, Registry

log = logging.getLogger("trainguard")
# Seconds a watchdog's SQLite transaction waits for another's lock (Registry.open(lock_wait=...)): legitimate
# holders keep it for milliseconds; a frozen one keeps it until the watchdog kills it.
WATCHDOG_LOCK_WAIT = 2.0


def reading_twin(registry: Registry) -> Registry | None:
    """A read-only registry beside ``registry`` for the sweep's reads, or None where it needs none. A
    writer's SQLite transactions begin IMMEDIATE (the write lock), so a frozen holder of that lock would
    blind the watchdog; a read-only connection's deferred transactions read the WAL regardless.
    (PostgreSQL's reads never wait for a writer.)"""
    if not registry.url.startswith("sqlite"):
        return None
    return Registry.open(registry.url, mode="read", lock_wait=WATCHDOG_LOCK_WAIT)


class TolerantWrites:
    """The watchdog's writes: each tried once now; one the registry does not take (locked by a frozen
    process, a server down) is kept and tried again at ``flush`` - every sweep starts with one - so an
    audit event is recorded late rather than lost, and the sweep never waits on the registry to act."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.pending: list[tuple[str, Callable[[], object]]] = []

    def revoke(self, run: str, reason: str) -> bool:
        """Revoke ``run``'s lease (first, so nothing the process does in its grace period can commit);
        False when the registry took no write - the caller signals anyway."""
        return self._try(f"{run}: lease revocation", lambda: self.registry.revoke(run, reason), keep=False)

    def revoke_later(self, run: str, reason: str) -> None:
        """Revoke now if the registry takes it, else at a later flush (the killed process may have held
        the lock; the next sweep finds the registry free)."""
        self._try(f"{run}: lease revocation", lambda: self.registry.revoke(run, reason), keep=True)

    def event(self, run: str, kind: EventKind, reason: str, detail: dict[str, Any]) -> None:
        write = lambda: self.registry.add_event(run, kind, reason=reason, detail=detail)  # noqa: E731
        self._try(f"{run}: event {kind}", write, keep=True)

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for what, write in pending:
            self._try(what, write, keep=True)

    def _try(self, what: str, write: Callable[[], object], *, keep: bool) -> bool:
        try:
            write()
        except RegistryError as error:
            later = "kept for the next sweep" if keep else "signalling anyway"
            log.warning("trainguard watchdog: %s not recorded (%s); %s", what, error, later)
            if keep:
                self.pending.append((what, write))
            return False
        return True


__all__ = ["WATCHDOG_LOCK_WAIT", "TolerantWrites", "reading_twin"]
