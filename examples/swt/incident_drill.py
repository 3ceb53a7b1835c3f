"""`make incident`: replay the incident end to end with real processes and show each defence working.

1. A good run trains to episode N under `trainguard run`; the checkpoint at the last known good episode is
   promoted (it is what the live trading system loads).
2. A rogue trainer - detached (double fork, setsid), holding the good run's old token, with a changed feature
   file - starts writing a checkpoint every half second.
3. Its commits are refused; the live model never changes; `incident scan` names it; the watchdog
   (`rogue_action: kill`) stops it; `recover` pins the last good checkpoint and quarantines what came after;
   nothing is deleted. A closing table gives the numbers.

    python -m examples.swt.incident_drill [--episodes 300] [--every 100] [--last-good 200] [--store DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from examples.swt.scripting import HERE, ROOT, guard_config, move_aside, trainguard, write_config
from trainguard import Registry, live
from trainguard.registry import EventKind
from trainguard.supervise import is_same_process_alive


def say(text: str) -> None:
    print(text, flush=True)


def _config(store: Path, run: str, every: int) -> Path:
    body = guard_config()
    body.update(run=run, store=str(store))
    body["checkpoints"].update(every_episodes=every, keep_last=50)
    body["watchdog"].update(interval="1s", grace="3s", rogue_action="kill")
    # The drill is about fencing, not about model quality: the operator names the last good checkpoint.
    body["gates"].update(min_decisions=0, metrics={}, max_action_share=1.0)
    return write_config(body, store.parent / f".{run}.drill.yaml")


def _checkpoint_files(store: Path, names: set[str]) -> int:
    """Files of the named checkpoints, wherever they are now (in place, or moved to quarantine)."""
    count = 0
    for name in names:
        for directory in (store / name, store / ".quarantine" / name):
            if directory.is_dir():
                count += sum(1 for entry in directory.iterdir() if entry.is_file())
    return count


def _evidence(store: Path) -> int:
    """Refused attempts kept in quarantine (their manifests name the writer)."""
    quarantine = store / ".quarantine"
    if not quarantine.is_dir():
        return 0
    return sum(1 for entry in quarantine.glob("*.reason.json") if '"fenced"' in entry.read_text())


@dataclass
class Drill:
    store: Path
    config: Path
    run: str
    url: str
    numbers: dict[str, Any] = field(default_factory=dict)


def _good_run(drill: Drill, episodes: int, last_good: str) -> bool:
    say(f"== 1. a good run trains to episode {episodes} ==")
    trained = trainguard(
        "run",
        "-c",
        str(drill.config),
        "--max-episodes",
        str(episodes),
        "--no-progress",
        "--",
        sys.executable,
        "-m",
        "examples.swt.train",
        capture=True,
    )
    if trained.returncode not in (0, 3):  # 3: its episode budget ended it, as designed
        say(trained.stdout + trained.stderr)
        return False
    promoted = trainguard("promote", drill.run, "-c", str(drill.config), last_good, capture=True)
    say("   " + (promoted.stdout.strip().splitlines()[-1] if promoted.stdout.strip() else promoted.stderr))
    return promoted.returncode == 0


def _rogue_phase(
    drill: Drill, old_token: int, first_episode: int, serving: live.LiveModel
) -> tuple[int, int]:
    say("== 2. a rogue trainer starts: detached, holding the old token, with changed features ==")
    wrong = drill.store.parent / f".{drill.run}.wrong-features.yaml"
    wrong.write_text((HERE / "features.yaml").read_text().replace("window: 32", "window: 48"))
    pidfile = drill.store.parent / f".{drill.run}.rogue.pid"
    pidfile.unlink(missing_ok=True)
    started = time.time()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.swt.rogue",
            drill.url,
            str(drill.store),
            drill.run,
            str(old_token),
            str(wrong),
            str(pidfile),
            "120",
            str(first_episode),
        ],
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    rogue = _wait_for_pid(pidfile)
    say(f"   rogue pid {rogue[0]}, re-parented to {_parent(rogue[0])}, writing every 0.5 s")
    say(f"   with token {old_token}, which its run released when it finished")
    with Registry.open(drill.url) as registry:
        while len(_refusals(registry, drill.run, rogue[0])) < 3 and time.time() - started < 60:
            time.sleep(0.1)
        first = min(e.at for e in _refusals(registry, drill.run, rogue[0]))
    say(
        f"   its commits are refused ({first - started:.1f}s after it started); the live model still serves "
        f"{serving.current.name if serving.current else None}"
    )
    scan = trainguard("incident", "scan", str(drill.store), capture=True)
    detected = time.time()
    named = scan.returncode == 1 and f"pid {rogue[0]}" in scan.stdout
    verdict = "names it" if named else "DID NOT name it"
    say(f"   `trainguard incident scan` (exit {scan.returncode}) {verdict}:")
    for line in scan.stdout.splitlines()[:5]:
        say(f"     {line}")
    say("   starting `trainguard watchdog` (rogue_action: kill) ...")
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "trainguard", "watchdog", "-c", str(drill.config), "--interval", "1s"],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    watch_started = time.time()
    try:
        while is_same_process_alive(*rogue) and time.time() - watch_started < 60:
            time.sleep(0.05)
        stopped = time.time() if not is_same_process_alive(*rogue) else None
    finally:
        watchdog.send_signal(signal.SIGTERM)
        watchdog.wait(timeout=60)
        if is_same_process_alive(*rogue):  # only if the watchdog failed: the drill never leaves it running
            os.kill(rogue[0], signal.SIGKILL)
    say(
        f"   the watchdog stopped it {stopped - watch_started:.1f}s after it started"
        if stopped
        else "   the watchdog DID NOT stop it (the drill killed it)"
    )
    drill.numbers.update(
        first_refusal_after_s=round(first - started, 2),
        time_to_detection_s=round(detected - started, 2) if named else None,
        time_to_stop_s=round(stopped - started, 2) if stopped else None,
        watchdog_stop_after_s=round(stopped - watch_started, 2) if stopped else None,
        live_during_rogue=serving.current.name if serving.current else None,
    )
    return rogue


def _refusals(registry: Registry, run: str, pid: int) -> list[Any]:
    return [
        e
        for e in registry.events(run, kinds=[EventKind.COMMIT_REFUSED])
        if e.detail.get("writer", {}).get("pid") == pid
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument(
        "--last-good", type=int, default=200, help="the episode of the last known good checkpoint"
    )
    parser.add_argument("--store", type=Path, default=HERE / "incident-checkpoints")
    parser.add_argument("--summary-json", type=Path, help="also write the closing numbers here")
    args = parser.parse_args()
    store = args.store.resolve()
    move_aside(store, "drill")
    drill = Drill(
        store,
        _config(store, "swt-incident", args.every),
        "swt-incident",
        f"sqlite:///{store / '.trainguard' / 'registry.db'}",
    )
    last_good = f"ep{args.last_good:08d}-t1"
    if not _good_run(drill, args.episodes, last_good):
        return 1
    with Registry.open(drill.url) as registry:
        live_before = registry.live_pointer(drill.run)
        committed_before = {r.name for r in registry.checkpoints(drill.run)}
        old_token = max(
            e.token for e in registry.events(drill.run, kinds=[EventKind.LEASE_ACQUIRED]) if e.token
        )
    files_before = _checkpoint_files(store, committed_before)
    with live.LiveModel(
        drill.run, registry=drill.url, features=HERE / "features.yaml", poll_interval=0.25
    ) as serving:
        say(f"   live (what the trading system serves): {serving.current.name if serving.current else None}")
        # It carries on from the last good episode, within the budget: only the fence can stop its commits.
        rogue = _rogue_phase(drill, old_token, args.last_good + 1, serving)

    say(f"== 3. recover: pin {last_good}, make it live, quarantine what came after ==")
    recovered = trainguard(
        "recover",
        drill.run,
        "-c",
        str(drill.config),
        "--last-good",
        last_good,
        "--reason",
        "drill: rogue trainer with a stale token and changed features",
        "--json",
        capture=True,
    )
    recovery: dict[str, Any] = json.loads(recovered.stdout) if recovered.returncode == 0 else {}
    with Registry.open(drill.url) as registry:
        refused = _refusals(registry, drill.run, rogue[0])
        after = {r.name: r.state for r in registry.checkpoints(drill.run, states=None)}
        live_after = registry.live_pointer(drill.run)
        stopped_by_watchdog = any(
            e.detail.get("reason") == "rogue"
            for e in registry.events(drill.run, kinds=[EventKind.WATCHDOG_STOPPED])
        )
    lost = [name for name in committed_before if after.get(name) not in ("committed", "quarantined")]
    numbers = drill.numbers
    numbers.update(
        stopped_by="watchdog (rogue_action: kill)" if stopped_by_watchdog else "drill cleanup",
        commits_refused=len(refused),
        checkpoints_lost=len(lost),
        checkpoint_files_before=files_before,
        checkpoint_files_after=_checkpoint_files(store, committed_before),
        refused_attempts_kept_as_evidence=_evidence(store),
        quarantined_by_recover=recovery.get("quarantined", []),
        live_before=live_before,
        live_after=live_after,
    )
    _table(numbers)
    if args.summary_json:
        args.summary_json.write_text(json.dumps(numbers, indent=2))
    ok = (
        numbers["commits_refused"] > 0
        and numbers["time_to_stop_s"] is not None
        and stopped_by_watchdog
        and numbers["time_to_detection_s"] is not None
        and not lost
        and live_before == numbers["live_during_rogue"] == live_after
    )
    say("drill: every defence held" if ok else "drill: SOMETHING FAILED - see above")
    return 0 if ok else 1


def _wait_for_pid(pidfile: Path) -> tuple[int, int]:
    deadline = time.time() + 60
    while not pidfile.exists():
        if time.time() > deadline:
            raise TimeoutError("the rogue never wrote its pid")
        time.sleep(0.05)
    pid, start = pidfile.read_text().split()
    return int(pid), int(start)


def _parent(pid: int) -> str:
    import psutil

    try:
        parent = psutil.Process(pid).parent()
        return f"{parent.pid} {parent.name()}" if parent else "none"
    except psutil.Error:
        return "gone"


def _table(numbers: dict[str, Any]) -> None:
    say("\n================ incident drill ================")
    for key, value in numbers.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        say(f"{key.replace('_', ' '):<28} {shown if shown not in ('', None) else '-'}")
    say("=================================================")


if __name__ == "__main__":
    sys.exit(main())
