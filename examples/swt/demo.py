"""`make demo`: train the reference agent under every guard, promote through the gates, write the report.

    python -m examples.swt.demo [--episodes N] [--store DIR] [--report FILE]

Starts a watchdog, runs `trainguard run -c examples/swt/guard.yaml -- python -m examples.swt.train`,
promotes the best checkpoint that passes the gates, writes the HTML report, prints a summary and stops the
watchdog. A previous demo's store is moved aside, never deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from examples.swt.scripting import HERE, ROOT, guard_config, move_aside, trainguard, write_config


def _config(store: Path | None, run: str | None) -> Path:
    """The demo's config: guard.yaml, with another store or run name when asked (tests, repeated demos)."""
    body = guard_config()
    body["store"] = str(store or HERE / body["store"])
    if run:
        body["run"] = run
    return write_config(body, Path(body["store"]).parent / f".{body['run']}.demo.yaml")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, help="episode budget (default: guard.yaml's)")
    parser.add_argument("--store", type=Path, help="store directory (default: examples/swt/checkpoints)")
    parser.add_argument("--run", help="run name (default: guard.yaml's)")
    parser.add_argument("--report", type=Path, default=ROOT / "demo-report.html")
    args = parser.parse_args()
    started = time.monotonic()
    store = (args.store or HERE / "checkpoints").resolve()
    move_aside(store, "demo")
    config = _config(store, args.run)
    body = yaml.safe_load(config.read_text())
    run = body["run"]
    watchdog = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainguard",
            "watchdog",
            "-c",
            str(config),
            "--interval",
            body["watchdog"]["interval"],
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Training starts only once the watchdog has beaten: on a loaded machine an 8-episode run can end
        # before a watchdog that is still importing has looked once, and the demo would claim a watch it
        # never had.
        _wait_for_first_beat(config, watchdog)
        print(f"== training {run} under `trainguard run` (watchdog pid {watchdog.pid}) ==", flush=True)
        overrides = ["--max-episodes", str(args.episodes)] if args.episodes else []
        trained = trainguard(
            "run", "-c", str(config), *overrides, "--", sys.executable, "-m", "examples.swt.train"
        )
        print("== promoting through the gates (evaluator on held-out data) ==", flush=True)
        promoted = trainguard("promote", run, "-c", str(config), "--json", capture=True)
        promotion: dict[str, Any] = json.loads(promoted.stdout) if promoted.stdout.strip() else {}
        reported = trainguard("report", run, "-c", str(config), "-o", str(args.report), capture=True)
        summary = trainguard("status", run, "-c", str(config), "--json", capture=True)
    finally:
        watchdog.send_signal(signal.SIGTERM)
        watchdog.wait(timeout=60)
    status = json.loads(summary.stdout)["runs"][0] if summary.returncode == 0 else {}
    listing = json.loads(
        trainguard("ckpt", "ls", run, "-c", str(config), "--all", "--json", capture=True).stdout
    )
    _print_summary(
        run,
        status,
        listing,
        promotion=promotion,
        report=args.report if reported.returncode == 0 else None,
        wall=time.monotonic() - started,
    )
    # `trainguard run` exits 3 when a guard rule ended the run - here the episode budget, as designed.
    return 0 if trained.returncode in (0, 3) and promotion.get("promoted") else 1


def _wait_for_first_beat(config: Path, watchdog: subprocess.Popen[str], timeout: float = 120.0) -> None:
    """Return once the registry holds a beat of `watchdog`; raise if it exits or the deadline passes."""
    from trainguard import Registry
    from trainguard.config import load_config

    url = load_config(config).registry_url()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if watchdog.poll() is not None:
            stderr = watchdog.stderr.read() if watchdog.stderr else ""
            raise SystemExit(f"demo: the watchdog exited with {watchdog.returncode} before it beat: {stderr}")
        with Registry.open(url) as registry:
            if any(dog.pid == watchdog.pid for dog in registry.watchdogs()):
                return
        time.sleep(0.2)
    raise SystemExit(f"demo: the watchdog (pid {watchdog.pid}) did not beat within {timeout:g}s")


def _print_summary(
    run: str,
    status: dict[str, Any],
    listing: dict[str, Any],
    *,
    promotion: dict[str, Any],
    report: Path | None,
    wall: float,
) -> None:
    checkpoints = listing.get("checkpoints", [])
    committed = [c for c in checkpoints if c["state"] == "committed"]
    episodes = status.get("episodes", {})
    runtime = status.get("runtime", {})
    print("\n================ trainguard demo summary ================")
    print(f"run                  {run}")
    print(f"episodes             {episodes.get('spent')} spent / {episodes.get('limit')} budget")
    print(
        f"runtime              {runtime.get('spent', 0):.0f}s spent / {runtime.get('limit', 0):.0f}s budget"
    )
    print(
        f"checkpoints          {len(checkpoints)} committed, {len(committed)} kept, "
        f"{sum(1 for c in checkpoints if c['pinned'])} pinned, "
        f"{sum(1 for c in checkpoints if c['state'] == 'evicted')} evicted by retention"
    )
    live = promotion.get("promoted")
    print(f"live checkpoint      {live or 'none: no candidate passed every gate'}")
    for candidate in promotion.get("candidates", []):
        if candidate["name"] == live:
            metrics = candidate.get("metrics", {})
            print(
                f"  held-out           expectancy {metrics.get('expectancy', 0):.2f} pips/trade, "
                f"{metrics.get('trades')} trades, max drawdown {metrics.get('max_drawdown', 0):.0f} pips"
            )
            for verdict in candidate["verdicts"]:
                print(
                    f"  {'pass' if verdict['passed'] else 'FAIL'} {verdict['gate']:<10} {verdict['reason']}"
                )
    refused = [c["name"] for c in promotion.get("candidates", []) if not c["passed"]]
    if refused:
        print(f"not promoted         {', '.join(refused)} (see `trainguard promote {run}` for the reasons)")
    print(f"report               {report or 'not written'}")
    print(f"wall time            {wall:.0f}s")
    print("==========================================================")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
