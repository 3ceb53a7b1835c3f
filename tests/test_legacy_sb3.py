"""A real Stable-Baselines3 trainer that knows nothing of trainguard, guarded from outside (issue 11).

`helpers/sb3_trainer.py` saves ``model_<N>_steps.zip`` through SB3's own CheckpointCallback, resumes from the
newest file, and saves a final model on KeyboardInterrupt. Under ``trainguard run --count steps
--stop-signal INT`` its step budget holds across three starts (the third is refused before the child runs),
its final save on the interrupt happens and is charged, every zip is adopted into the store, and a second,
unguarded writer into the same folder is named by pid by the watchdog - however briefly it holds its files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support import HELPERS, run_cli, spawned, wait_until
from trainguard import Registry
from trainguard.registry import EventKind

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the launcher needs Linux"),
    pytest.mark.slow,
]

PATTERN = r"model_(?P<steps>\d+)_steps\.zip"
BUDGET = 1000

# A second copy of "the trainer", started by hand with no trainguard: it writes a file every 0.2 s and holds
# each open for a moment only, so /proc/*/fd never shows it. Its files do not match the pattern, so the budget
# arithmetic below stays exact.
ROGUE = textwrap.dedent("""\
    import os, sys, time
    folder = sys.argv[1]
    for n in range(10_000):
        with open(os.path.join(folder, f"copy_model_{n}.zip"), "wb") as handle:
            handle.write(b"weights of an unguarded copy")
        time.sleep(0.2)
    """)


def _start(tmp_path: Path, total: int) -> subprocess.CompletedProcess[str]:
    models = tmp_path / "models"
    return run_cli(
        "run",
        "--run",
        "sb3-legacy",
        "--store",
        str(tmp_path / "store"),
        "--max-steps",
        str(BUDGET),
        "--count",
        "steps",
        "--stop-signal",
        "INT",
        "--grace",
        "30s",
        "--watch-pattern",
        PATTERN,
        "--watch-dir",
        str(models),
        "--",
        sys.executable,
        str(HELPERS / "sb3_trainer.py"),
        str(models),
        str(total),
        timeout=240,
    )


def _steps_spent(url: str) -> int:
    with Registry.open(url, mode="read") as registry:
        return registry.run("sb3-legacy").steps_spent


def _starts(tmp_path: Path) -> list[int]:
    log = tmp_path / "starts.log"
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_an_unmodified_sb3_trainer_is_held_to_its_step_budget_across_three_starts(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    url = f"sqlite:///{tmp_path / 'store' / '.trainguard' / 'registry.db'}"
    rogue_script = tmp_path / "rogue.py"
    rogue_script.write_text(ROGUE)

    # Start 1: the trainer finishes its own 500 steps (files 100..500) -> exit 0, 500 charged.
    first = _start(tmp_path, 500)
    assert first.returncode == 0, first.stderr
    assert "completed (exit 0)" in first.stderr and "exited with status 0" in first.stderr
    assert _steps_spent(url) == 500
    assert "steps 500 / 1000" in first.stderr

    # Start 2, with a watchdog running and an unguarded copy writing into the same folder: the trainer resumes
    # at 500, the launcher sees model_1000_steps.zip spend the budget and sends SIGINT; the trainer's
    # KeyboardInterrupt path saves a final model, which is charged too (the overshoot, shown).
    with (
        spawned(
            [sys.executable, "-m", "trainguard", "watchdog", "--registry", url, "--interval", "0.5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as watchdog,
        spawned([sys.executable, str(rogue_script), str(models)]) as rogue,
    ):
        second = _start(tmp_path, 100_000)

        def rogue_named() -> list[object]:
            with Registry.open(url, mode="read") as registry:
                return [
                    e
                    for e in registry.events("sb3-legacy", kinds=[EventKind.WATCHDOG_REPORT])
                    if e.detail.get("evidence", {}).get("write", {}).get("pid") == rogue.pid
                ]

        reports = wait_until(rogue_named, timeout=30, interval=0.2, what="the watchdog to name the rogue")
        with Registry.open(url, mode="read") as registry:
            every_report = registry.events("sb3-legacy", kinds=[EventKind.WATCHDOG_REPORT])
    assert watchdog.returncode is not None  # reaped by spawned()
    assert second.returncode == 3, second.stderr
    assert "interrupted: final save" in second.stdout, second.stdout
    final = second.stdout.split("interrupted: final save ")[1].split()[0]
    final_steps = int(final.split("_")[1])
    assert final_steps > BUDGET and (models / final).is_file()
    assert "stopped (steps) by trainguard run (exit 3)" in second.stderr
    assert "exited with status 0 after SIGINT" in second.stderr
    assert f"steps {final_steps} / {BUDGET} ({final_steps - BUDGET} past the budget)" in second.stderr
    assert _steps_spent(url) == final_steps
    written = sorted(int(p.name.split("_")[1]) for p in models.glob("model_*_steps.zip"))
    assert written == [*range(100, BUDGET + 1, 100), final_steps]

    # The watchdog named the unguarded writer by pid, with its command line, as a write without the lease -
    # and never the guarded trainer, whose own saves (the last one just before it exited) are the run's.
    why = reports[0].reason or ""  # type: ignore[attr-defined]
    assert f"pid {rogue.pid}" in why and "rogue.py" in why and "without the run's lease" in why
    trainers = set(_starts(tmp_path))
    named = {e.detail.get("evidence", {}).get("write", {}).get("pid") for e in every_report}
    assert not named & trainers, f"the guarded trainer was reported as a foreign writer: {named & trainers}"

    # Start 3: the budget is spent; refused before the child runs, one line naming spent, limit and the fix.
    before = _starts(tmp_path)
    third = _start(tmp_path, 100_000)
    assert third.returncode == 3, third.stderr
    assert _starts(tmp_path) == before  # the trainer never started
    line = third.stderr.strip().splitlines()[-1]
    assert f"spent {final_steps} steps of its {BUDGET} steps budget" in line
    assert "trainguard budget extend sb3-legacy --steps N" in line
    assert "Traceback" not in third.stderr

    # Every zip the trainer wrote is adopted into a store (read with the safe loaders, never SB3's pickles),
    # each recorded with its timesteps; the rogue's files do not match and are listed as skipped.
    adopted = run_cli(
        "ckpt",
        "adopt",
        "sb3-adopted",
        str(models),
        "--store",
        str(tmp_path / "adopted"),
        "--pattern",
        PATTERN,
        "--json",
    )
    assert adopted.returncode == 0, adopted.stderr
    body = json.loads(adopted.stdout)
    assert sorted(item["steps"] for item in body["adopted"]) == written
    with Registry.open(f"sqlite:///{tmp_path / 'adopted' / '.trainguard' / 'registry.db'}") as registry:
        assert sorted(r.episode for r in registry.checkpoints("sb3-adopted", states=None)) == written
    assert body["ignored"] and all(name.startswith("copy_model_") for name in body["ignored"])
