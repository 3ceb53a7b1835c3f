"""Memory budget: the RSS of the whole process tree, sampled off the hot path."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard_support import run_worker, write_config


@pytest.mark.parametrize("who", ["process", "child"])
def test_memory_budget_stops_the_loop_with_reason_memory(tmp_path: Path, who: str) -> None:
    # The worker starts near 100 MB (numpy, SQLAlchemy, pydantic); the budget leaves room for that.
    config = write_config(
        tmp_path,
        f"mem-{who}",
        limits={"max_memory": "400MB"},
        monitoring={"resource_check_interval": "0.05s"},
    )
    flags = ["--allocate-mb", "40"] if who == "process" else ["--child-allocate-mb", "450"]
    summary = run_worker(config, "--episode-seconds", "0.05", *flags, timeout=120)
    assert summary["stop_reason"] == "memory", summary
    assert "RSS" in summary["stop_detail"] and "max_memory 400000000" in summary["stop_detail"]
    if who == "process":
        # It stopped soon after crossing the line, not whenever: at most a few episodes of 40 MB over.
        assert 5 <= len(summary["episodes"]) <= 12
    else:
        assert len(summary["episodes"]) <= 3  # the child's memory counts from the first sample
