"""``trainguard watchdog``: sweep the registry and /proc on an interval (or ``--once``); stop what breaks its
budget, kill orphans, report (or stop) rogue writers; optionally serve Prometheus metrics."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from trainguard.cli._common import (
    ArgumentParser,
    add_registry_args,
    config_path,
    duration_arg,
    err,
    out,
    registry_url,
)
from trainguard.config import Notifications, load_config
from trainguard.errors import InvalidArgument
from trainguard.notify import Notifier
from trainguard.registry import Registry

SYSTEMD_UNIT = """\
[Unit]
Description=trainguard watchdog ({url})
After=network-online.target postgresql.service

[Service]
ExecStart={python} -m trainguard watchdog --registry {url} --interval {interval}s{metrics}
Restart=always
RestartSec=2
# The watchdog must outlive what it watches: never let the OOM killer pick it first.
OOMScoreAdjust=-900

[Install]
WantedBy=multi-user.target
"""


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    watchdog = commands.add_parser(
        "watchdog", help="sweep the registry and /proc; stop what breaks its budget"
    )
    add_registry_args(watchdog)
    watchdog.add_argument("--once", action="store_true", help="one sweep, then exit")
    watchdog.add_argument("--interval", default="5s", metavar="DURATION")
    watchdog.add_argument("--grace", metavar="DURATION", help="SIGTERM -> SIGKILL (default: each run's own)")
    watchdog.add_argument("--dry-run", action="store_true", help="record what it would do; touch nothing")
    watchdog.add_argument("--metrics-port", type=int, metavar="N", help="Prometheus metrics on 127.0.0.1:N")
    watchdog.add_argument("--print-systemd-unit", action="store_true", help="print a unit file and exit")
    watchdog.add_argument(
        "--watch-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="also name every writer of files in DIR that is not a run's (a trainer's own model folder)",
    )
    watchdog.set_defaults(handler=cmd_watchdog)


def _notifier(args: argparse.Namespace) -> Notifier | None:
    """The config's webhook (-c, $TRAINGUARD_CONFIG, ./guard.yaml), else $TRAINGUARD_WEBHOOK_URL."""
    for folder in args.watch_dir:
        if not Path(folder).is_dir():
            raise InvalidArgument("--watch-dir", folder, "is not a directory")
    path = config_path(args)
    notes = load_config(path).notifications if path else Notifications()
    return Notifier.from_settings(notes.webhook, notes.events, notes.timeout, source="watchdog")


def cmd_watchdog(args: argparse.Namespace) -> int:
    from trainguard.supervise import WATCHDOG_LOCK_WAIT, Watchdog, WatchdogMetrics

    interval = duration_arg("--interval", args.interval)
    if args.metrics_port is not None and not 1 <= args.metrics_port <= 65535:
        raise InvalidArgument("--metrics-port", args.metrics_port, "must be a TCP port, 1..65535")
    url = registry_url(args)
    if args.print_systemd_unit:
        flag = f" --metrics-port {args.metrics_port}" if args.metrics_port else ""
        out().print(
            SYSTEMD_UNIT.format(url=url, python=sys.executable, interval=f"{interval:g}", metrics=flag),
            markup=False,
            end="",
        )
        return 0
    grace = duration_arg("--grace", args.grace) if args.grace else None
    notifier = _notifier(args)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    with Registry.open(url, lock_wait=WATCHDOG_LOCK_WAIT) as registry:
        watch = [Path(d) for d in args.watch_dir]
        watchdog = Watchdog(
            registry,
            interval=interval,
            dry_run=args.dry_run,
            grace=grace,
            watch_dirs=watch,
            notifier=notifier,
        )
        metrics = WatchdogMetrics() if args.metrics_port else None
        if metrics is not None:
            metrics.serve(args.metrics_port)
        err().print(
            f"trainguard watchdog: watching {registry.url} every {interval:g}s"
            f"{' (dry run)' if args.dry_run else ''}",
            markup=False,
        )
        while True:
            started = time.monotonic()
            report = watchdog.sweep()
            if metrics is not None:
                metrics.update(registry, report, time.monotonic() - started)
            for finding, _ in report.ladders:
                err().print(f"  {finding.run}: {finding.reason}: {finding.detail}", markup=False)
            for foreign in report.foreign:
                if foreign.run is None:
                    err().print(f"  (no run): {foreign.why}", markup=False)
            if args.once or stop.wait(max(0.0, interval - (time.monotonic() - started))):
                watchdog.close()
                if notifier is not None:
                    notifier.close()
                return 0


__all__ = ["register"]
