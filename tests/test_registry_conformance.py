"""One conformance suite for the registry, run on SQLite and on PostgreSQL (``registry_url`` fixture)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import helper_command, wait_until
from trainguard import (
    CheckpointRecord,
    CheckpointState,
    InvalidArgument,
    InvalidName,
    LeaseHeld,
    LeaseLost,
    Registry,
    RegistryError,
    StateConflict,
)
from trainguard.registry import LeaseInfo, ProcessIdentity


def _kinds(registry: Registry, run: str) -> list[str]:
    return [e.kind for e in registry.events(run)]


def _lease(registry: Registry, run: str) -> LeaseInfo:
    info = registry.lease_info(run)
    assert info is not None, f"run {run!r} has no lease row"
    return info


def test_tokens_strictly_increase_and_are_never_reused(registry: Registry, run_name: str) -> None:
    tokens = []
    for _ in range(5):
        lease = registry.acquire(run_name, ttl=30)
        tokens.append(lease.token)
        lease.release()
    assert tokens == sorted(set(tokens))
    assert tokens[0] >= 1


def test_tokens_keep_increasing_after_the_registry_is_reopened(registry_url: str, run_name: str) -> None:
    with Registry.open(registry_url) as first:
        before = first.acquire(run_name, ttl=30).token
    with Registry.open(registry_url) as second:  # a new process, or the machine after a restart
        after = second.acquire(run_name, ttl=30, takeover=True, reason="restart").token
    assert after > before


def test_tokens_survive_a_process_that_acquired_and_died(registry_url: str, run_name: str) -> None:
    child = subprocess.run(
        helper_command("acquire_and_exit.py", registry_url, run_name),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    child_token = int(child.stdout.strip())
    with Registry.open(registry_url) as registry:
        # The child's process is gone: its lease is not live, so no takeover is needed...
        lease = registry.acquire(run_name, ttl=30)
        assert lease.token > child_token
        expired = [e for e in registry.events(run_name) if e.kind == "lease_expired"]
        # ...and the registry says why it was treated as ended.
        assert expired and "is gone" in (expired[-1].reason or "")


def test_live_holder_blocks_acquire_with_a_message_naming_it(registry: Registry, run_name: str) -> None:
    holder = registry.acquire(run_name, ttl=30)
    with pytest.raises(LeaseHeld) as raised:
        registry.acquire(run_name, ttl=30)
    error = raised.value
    me = ProcessIdentity.current()
    assert (error.holder_pid, error.holder_host, error.token) == (me.pid, me.host, holder.token)
    assert f"pid {me.pid} on {me.host}" in str(error) and "since" in str(error)
    assert isinstance(error, RuntimeError)


def test_takeover_revokes_the_old_holder_and_records_it(registry: Registry, run_name: str) -> None:
    old = registry.acquire(run_name, ttl=30)
    new = registry.acquire(run_name, ttl=30, takeover=True, reason="operator restart")
    assert new.token > old.token
    revoked = [e for e in registry.events(run_name) if e.kind == "lease_revoked"]
    assert revoked[-1].token == old.token and "operator restart" in (revoked[-1].reason or "")
    with pytest.raises(LeaseLost, match=f"superseded by token {new.token}"):
        old.renew()
    assert old.lost_reason is not None and not old.held_locally


def test_renew_release_and_their_events(registry: Registry, run_name: str) -> None:
    lease = registry.acquire(run_name, ttl=30)
    lease.renew()
    lease.renew()
    info = registry.lease_info(run_name)
    assert info is not None and info.renewals == 2 and info.live
    assert lease.release() is True
    assert lease.release() is False  # nothing left to release
    info = registry.lease_info(run_name)
    assert info is not None and info.state == "released" and not info.live
    assert _kinds(registry, run_name) == [
        "run_created",
        "lease_acquired",
        "lease_renewed",
        "lease_renewed",
        "lease_released",
    ]
    with pytest.raises(LeaseLost):
        lease.renew()


def test_revoke_by_another_process_fences_the_holder(
    registry_url: str, registry: Registry, run_name: str
) -> None:
    lease = registry.acquire(run_name, ttl=30)
    revoked = subprocess.run(
        helper_command("revoke.py", registry_url, run_name, "watchdog: over budget"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert int(revoked.stdout.strip()) == lease.token
    with pytest.raises(LeaseLost, match="revoked: watchdog: over budget"):
        lease.renew()
    events = registry.events(run_name)
    revoke = next(e for e in events if e.kind == "lease_revoked")
    assert revoke.actor_pid != ProcessIdentity.current().pid  # recorded with the revoking process
    assert events[-1].kind == "lease_lost"


def test_revoke_needs_a_reason_and_is_a_no_op_without_a_holder(registry: Registry, run_name: str) -> None:
    registry.ensure_run(run_name)
    with pytest.raises(InvalidArgument, match="reason"):
        registry.revoke(run_name, "  ")
    assert registry.revoke(run_name, "nothing held") is None


def test_lease_expires_by_ttl(registry: Registry, run_name: str) -> None:
    lease = registry.acquire(run_name, ttl=0.3)
    wait_until(lambda: not _lease(registry, run_name).live, timeout=5, what="lease expiry")
    with pytest.raises(LeaseLost, match="expired"):
        lease.renew()
    # Expired means a new holder needs no takeover, and the old lease's end is recorded.
    successor = registry.acquire(run_name, ttl=30)
    assert successor.token > lease.token
    assert "lease_expired" in _kinds(registry, run_name)


def test_local_deadline_fails_fast_before_the_registry_is_asked(registry: Registry, run_name: str) -> None:
    lease = registry.acquire(run_name, ttl=0.2)
    wait_until(lambda: not lease.held_locally, timeout=5)
    with pytest.raises(LeaseLost, match="not renewed within its ttl"):
        lease.check()


def test_adopt_takes_the_handle_of_the_live_token_only(registry: Registry, run_name: str) -> None:
    lease = registry.acquire(run_name, ttl=30)
    adopted = registry.adopt(run_name, lease.token)
    assert adopted.token == lease.token
    with pytest.raises(LeaseLost):
        registry.adopt(run_name, lease.token - 1)


def _record(run: str, name: str, episode: int, token: int) -> CheckpointRecord:
    return CheckpointRecord(run=run, name=name, episode=episode, token=token, manifest_hash="blake3:00")


def test_commit_accepts_only_the_live_token(registry: Registry, run_name: str) -> None:
    old = registry.acquire(run_name, ttl=30)
    assert registry.commit_checkpoint(_record(run_name, "a", 1, old.token), writer={}).accepted
    new = registry.acquire(run_name, ttl=30, takeover=True, reason="test")
    verdict = registry.commit_checkpoint(_record(run_name, "b", 2, old.token), writer={"pid": 1})
    assert (verdict.accepted, verdict.fenced) == (False, True)
    assert f"stale fencing token {old.token}" in verdict.reason
    refused = [e for e in registry.events(run_name) if e.kind == "commit_refused"]
    assert refused[-1].token == old.token and refused[-1].detail["writer"] == {"pid": 1}
    assert registry.commit_checkpoint(_record(run_name, "b", 2, new.token), writer={}).accepted
    assert [r.name for r in registry.checkpoints(run_name)] == ["a", "b"]


def test_commit_refuses_an_episode_beyond_the_budget_and_duplicates(
    registry: Registry, run_name: str
) -> None:
    lease = registry.acquire(run_name, ttl=30)
    registry.set_limits(run_name, {"max_episodes": 100})
    assert registry.commit_checkpoint(_record(run_name, "ok", 100, lease.token), writer={}).accepted
    over = registry.commit_checkpoint(_record(run_name, "over", 101, lease.token), writer={})
    assert not over.accepted and not over.fenced and "budget of 100" in over.reason
    duplicate = registry.commit_checkpoint(_record(run_name, "ok", 50, lease.token), writer={})
    assert not duplicate.accepted and "already exists" in duplicate.reason


def test_commit_after_revoke_is_refused(registry: Registry, run_name: str) -> None:
    lease = registry.acquire(run_name, ttl=30)
    registry.revoke(run_name, "incident")
    verdict = registry.commit_checkpoint(_record(run_name, "late", 1, lease.token), writer={})
    assert verdict.fenced and "revoked: incident" in verdict.reason


def test_draws_from_one_budget_by_many_processes_never_exceed_it(registry_url: str, run_name: str) -> None:
    """A sweep's budget: trials in other processes draw episodes at once; the registry grants exactly the
    limit between them and refuses every draw after it (nothing charged for a refused one)."""
    with Registry.open(registry_url) as registry:
        lease = registry.acquire(run_name)
        registry.apply_limits(run_name, {"max_episodes": 25}, lease=lease)
        lease.release()
    script = (
        "import sys; from trainguard import Registry\n"
        "with Registry.open(sys.argv[1]) as r:\n"
        "    print(sum(r.draw(sys.argv[2], episodes=1) for _ in range(20)))\n"
    )
    drawers = [
        subprocess.Popen(
            [sys.executable, "-c", script, registry_url, run_name], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    try:
        granted = [int(p.communicate(timeout=120)[0]) for p in drawers]
    finally:
        for p in drawers:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sum(granted) == 25, granted  # 60 asked for, 25 granted: none twice, none past the limit
    with Registry.open(registry_url) as registry:
        assert registry.run(run_name).episodes_spent == 25
        assert not registry.draw(run_name, episodes=1)
        assert registry.draw(run_name, steps=5)  # no step limit: granted
        assert registry.run(run_name).episodes_spent == 25


def test_live_pointer_moves_only_to_committed_checkpoints(registry: Registry, run_name: str) -> None:
    lease = registry.acquire(run_name, ttl=30)
    registry.commit_checkpoint(_record(run_name, "a", 1, lease.token), writer={})
    registry.commit_checkpoint(_record(run_name, "b", 2, lease.token), writer={})
    registry.set_live_pointer(run_name, "a", reason="first")
    registry.set_live_pointer(run_name, "b", reason="better")
    assert registry.live_pointer(run_name) == "b"
    registry.set_checkpoint_state(run_name, "a", CheckpointState.QUARANTINED, reason="bad")
    with pytest.raises(StateConflict, match="quarantined"):
        registry.set_live_pointer(run_name, "a", reason="rollback to a quarantined one")
    moves = [e for e in registry.events(run_name) if e.kind == "live_moved"]
    assert [(e.checkpoint, e.detail["from"]) for e in moves] == [("a", None), ("b", "a")]


def test_pinned_and_live_checkpoints_cannot_be_evicted(registry: Registry, run_name: str) -> None:
    lease = registry.acquire(run_name, ttl=30)
    for name in ("a", "b"):
        registry.commit_checkpoint(_record(run_name, name, 1, lease.token), writer={})
    registry.set_pinned(run_name, "a", True, reason="last good")
    registry.set_live_pointer(run_name, "b", reason="live")
    for name in ("a", "b"):
        with pytest.raises(StateConflict, match="pinned or live"):
            registry.set_checkpoint_state(run_name, name, CheckpointState.EVICTED, reason="retention")


def test_bad_run_names_are_refused(registry: Registry) -> None:
    for bad in ("", "a/b", "..", "x\x00y", ".hidden"):
        with pytest.raises(InvalidName):
            registry.acquire(bad)


def test_schema_version_newer_than_the_code_is_refused(registry_url: str) -> None:
    from sqlalchemy import create_engine, delete, insert

    from trainguard.registry import _schema
    from trainguard.registry._engine import normalise_url

    Registry.open(registry_url).close()  # install the schema
    future = _schema.SCHEMA_VERSION + 50
    engine = create_engine(normalise_url(registry_url))
    try:
        with engine.begin() as conn:
            conn.execute(insert(_schema.schema_version).values(version=future, installed_at=time.time()))
        with pytest.raises(RegistryError, match=f"schema version {future} is newer"):
            Registry.open(registry_url)
    finally:
        with engine.begin() as conn:  # the PostgreSQL database is shared by the session
            conn.execute(delete(_schema.schema_version).where(_schema.schema_version.c.version == future))
        engine.dispose()


def test_a_schema_2_registry_is_migrated_in_place(tmp_path: Path) -> None:
    import sqlite3

    from trainguard.registry import _schema

    path = tmp_path / "old.db"
    with Registry.open(f"sqlite:///{path}") as registry:
        old = registry.acquire("kept", ttl=30)
    # Make it what schema 2 wrote: without the columns schema 3 added, version 2 recorded.
    database = sqlite3.connect(path)
    try:
        with database:
            for table, columns in _schema.ADDED_COLUMNS.items():
                for column in columns:
                    database.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
            database.execute("UPDATE tg_schema_version SET version = 2")
    finally:
        database.close()
    with Registry.open(f"sqlite:///{path}") as registry:
        lease = registry.lease_info("kept")
        assert lease is not None and lease.token == old.token and lease.holder_start_ticks is None
        # A holder recorded without ticks cannot be shown gone: its lease is not taken without takeover.
        with pytest.raises(LeaseHeld):
            registry.acquire("kept", ttl=30)
        assert registry.acquire("kept", ttl=30, takeover=True).token == old.token + 1
        registry.record_heartbeat("kept", old.token + 1, {"episode": 1})
        assert (registry.heartbeat("kept") or {}).get("clock_domain") == registry.clock.domain


def test_unreachable_registry_is_one_clear_error() -> None:
    with pytest.raises(RegistryError, match="cannot open"):
        Registry.open("postgresql://postgres@127.0.0.1:1/nope?connect_timeout=2")
