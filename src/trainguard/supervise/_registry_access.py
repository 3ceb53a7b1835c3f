"""How the watchdog reaches a registry that may take no writes, so that it can still act.

A frozen process can hold SQLite's write lock for as long as it is frozen (stopped in the middle of a
transaction), and a PostgreSQL server can be down: the watchdog then still judges from what it can read and
acts by signals, and says in its log what it could not record. Nothing is lost that matters: the process it
killed releases the lock, and the next sweep finds what remains to be revoked.
"""

from __future__ import annotations

import logging
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


def revoke_lease(registry: Registry, run: str, reason: str) -> bool:
    """Revoke ``run``'s lease (first, so nothing the process does in its grace period can commit); False
    when the registry took no write - the caller signals anyway and tries again after the ladder."""
    try:
        registry.revoke(run, reason)
    except RegistryError as error:
        log.warning("trainguard watchdog: %s: lease not revoked (%s); signalling anyway", run, error)
        return False
    return True


def record_event(registry: Registry, run: str, kind: EventKind, reason: str, detail: dict[str, Any]) -> None:
    try:
        registry.add_event(run, kind, reason=reason, detail=detail)
    except RegistryError as error:
        log.warning("trainguard watchdog: %s: event %s not recorded (%s): %s", run, kind, error, reason)


__all__ = ["WATCHDOG_LOCK_WAIT", "reading_twin", "record_event", "revoke_lease"]
