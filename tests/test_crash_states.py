"""Every crash state of a small save (issue 10, "every crash state"): the ALICE-style explorer of
stress/crash_states.py records the save's file-system operations in a child process, generates every state
a crash could leave (prefixes, unsynced directory operations dropped in every combination, unsynced data
lost or torn), opens the store on each and checks the invariants. The wider run is `make crash-states`."""

from __future__ import annotations

from pathlib import Path

from crash_states import explore


def test_every_crash_state_of_a_save_keeps_the_invariants(tmp_path: Path) -> None:
    result = explore("save", tmp_path)
    assert result.operations >= 15  # the save was recorded: mkdir, files, fsyncs, the decision, the rename
    assert result.states >= 20
    assert result.violations == []


def test_the_explorer_finds_a_missing_fsync_barrier(tmp_path: Path) -> None:
    """Its own check: the same save without the fsync that makes the staging directory's entry durable
    loses a committed checkpoint in some crash state - the defect this explorer found in the protocol."""
    result = explore("save-without-dir-fsync", tmp_path)
    assert any("does not load" in problem for _, problem in result.violations), result.violations
