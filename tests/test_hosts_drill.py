"""The multi-host drill (issue 13) as a test: two hosts (network namespaces), a PostgreSQL registry of the
drill's own, host A partitioned, an operator on host B taking over - see stress/hosts_drill.py."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from hosts_drill import BEAT, TTL, run_drill, table

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("ip") is None or shutil.which("initdb") is None,
    reason="needs Linux, iproute2 and PostgreSQL's initdb (the CI image has them)",
)


def test_a_partitioned_host_stops_itself_and_commits_nothing_after_a_takeover(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the drill creates network namespaces: run the suite as root (CI does)")
    result = run_drill(tmp_path)
    print(table(result))
    assert result["commits_from_a_after_takeover"] == 0
    assert result["zombie"] == "CommitFenced"  # the registry fences A's token once A can reach it again
    assert result["a_stop_reason"] == "lease_lost"
    assert result["a_stopped_after"] <= TTL + BEAT
    assert result["checkpoints_lost"] == 0 and result["acknowledged"] >= 10
    assert result["b_token"] > result["a_token"]
    assert result["b_commits"] and result["b_commits"] == result["b_expected"]  # B's cadence, no gap
