"""Crash consistency: 220 SIGKILLs of a checkpoint writer at random moments (see stress/crash_consistency.py
for the longer campaign)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crash_consistency import run_campaign

KILLS = 220


@pytest.mark.timeout(400)
def test_every_kill_leaves_a_consistent_store(tmp_path: Path) -> None:
    result = run_campaign(tmp_path, KILLS, seed=20261128)
    assert result.failures == []
    assert result.kills == KILLS
    # The campaign must actually have exercised the interesting paths, or it proved nothing.
    assert result.newest_episode > KILLS // 4, "writers rarely got a checkpoint committed"
    assert result.recovered_staging > 0, "no kill landed while a checkpoint was being staged"
    assert result.checkpoints_verified > KILLS
