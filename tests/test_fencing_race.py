"""Fencing: two processes race commits for one run, taking it over from each other at random moments and
continuing to write with their old token. Not one stale commit is accepted, on SQLite and PostgreSQL.

The audit log is the witness: every lease change and every commit decision takes the run's row lock
before writing its event, so event ids are in decision order. A commit is legitimate iff the newest lease
grant before it carried the commit's token and that grant was not ended in between.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support import helper_command, spawned
from trainguard import CheckpointStore, Registry

ATTEMPTS = 150


def test_no_stale_commit_is_ever_accepted(tmp_path: Path, registry_url: str, run_name: str) -> None:
    root, start = tmp_path / "store", tmp_path / "go"
    with CheckpointStore(root, run=run_name, registry=registry_url):
        pass  # create the run and store once, before the race
    commands = [
        helper_command(
            "race_writer.py", registry_url, str(root), run_name, str(ATTEMPTS), str(seed), str(start)
        )
        for seed in (1, 2)
    ]
    with (
        spawned(commands[0], stdout=subprocess.PIPE) as first,
        spawned(commands[1], stdout=subprocess.PIPE) as second,
    ):
        start.touch()
        outputs = [proc.communicate(timeout=240)[0] for proc in (first, second)]
        assert (first.returncode, second.returncode) == (0, 0)
    outcomes = [o for out in outputs for o in json.loads(out)]
    fenced_attempts = [token for token, outcome in outcomes if outcome == "fenced"]
    committed_attempts = [token for token, outcome in outcomes if outcome == "committed"]
    assert fenced_attempts, "the race never produced a stale writer - the test proved nothing"
    assert committed_attempts

    with Registry.open(registry_url) as registry:
        events = [e for e in registry.events(run_name) if e.kind != "lease_renewed"]
        current: int | None = None
        accepted: list[int] = []
        for event in events:
            if event.kind == "lease_acquired":
                current = event.token
            elif (
                event.kind in ("lease_revoked", "lease_expired", "lease_released") and event.token == current
            ):
                current = None
            elif event.kind == "checkpoint_committed":
                assert current is not None and event.token == current, (
                    f"commit {event.checkpoint} with stale token {event.token}"
                )
                accepted.append(current)
            elif event.kind == "commit_refused":
                assert event.token != current and event.detail["fenced"]
        refusals = [e for e in events if e.kind == "commit_refused"]
        # Each refusal the writers saw is one event carrying the stale token, and nothing else was refused.
        assert sorted(e.token or 0 for e in refusals) == sorted(fenced_attempts)
        assert sorted(accepted) == sorted(committed_attempts)
        rows = registry.checkpoints(run_name)
        assert len(rows) == len(committed_attempts)
    with CheckpointStore(root, run=run_name, registry=registry_url) as store:
        assert all(store.verify(r.name).ok for r in rows)
