"""``trainguard watchdog``, ``trainguard stop``, ``trainguard ps``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from types import FrameType

from trainguard.cli._common import (
    ArgumentParser,
    add_registry_args,
    err,
    human_time,
    out,
    print_json,
    reason_arg,
    registry_url,
    table,
)
from trainguard.errors import ConfigError
from trainguard.identity import host_key, is_same_process_alive
from trainguard.names import validate_name
from trainguard.registry import Registry
from trainguard.supervise.ladder import Target, run_ladder
from trainguard.supervise.procs import marked_processes
from trainguard.units import parse_duration

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
    watchdog.set_defaults(handler=cmd_watchdog)

    stop = commands.add_parser("stop", help="revoke a run's lease, then stop its registered processes")
    stop.add_argument("run", metavar="RUN")
    add_registry_args(stop)
    stop.add_argument("--grace", default="30s", metavar="DURATION")
    reason_arg(stop, required=True)
    stop.set_defaults(handler=cmd_stop)

    ps = commands.add_parser(
        "ps", help="processes registered for runs, and every process carrying a run marker"
    )
    add_registry_args(ps, json_flag=True)
    ps.set_defaults(handler=cmd_ps)


def _duration(flag: str, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as error:
        raise ConfigError(flag, value, str(error)) from None


def cmd_watchdog(args: argparse.Namespace) -> int:
    from trainguard.supervise.linux import require_linux
    from trainguard.supervise.metrics import WatchdogMetrics
    from trainguard.supervise.watchdog import Watchdog

    interval = _duration("--interval", args.interval)
    url = registry_url(args)
    if args.print_systemd_unit:
        flag = f" --metrics-port {args.metrics_port}" if args.metrics_port else ""
        out().print(
            SYSTEMD_UNIT.format(url=url, python=sys.executable, interval=f"{interval:g}", metrics=flag),
            markup=False,
            end="",
        )
        return 0
    try:
        require_linux("trainguard watchdog")
    except RuntimeError as error:
        raise ConfigError("trainguard watchdog", None, str(error)) from None
    grace = _duration("--grace", args.grace) if args.grace else None
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    with Registry.open(url) as registry:
        watchdog = Watchdog(registry, interval=interval, dry_run=args.dry_run, grace=grace)
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
            if args.once or stop.wait(max(0.0, interval - (time.monotonic() - started))):
                return 0


def cmd_stop(args: argparse.Namespace) -> int:
    run = validate_name(args.run, "run")
    grace = _duration("--grace", args.grace)
    with Registry.open(registry_url(args)) as registry:
        lease = registry.lease_info(run)
        if registry.run_info(run) is None:
            raise ConfigError("run", run, f"is not in the registry {registry.url}")
        # Revoke first: from this moment nothing the run writes can be committed, whatever the signals do.
        revoked = registry.revoke(run, f"trainguard stop: {args.reason}")
        token = lease.token if lease is not None else None
        # Only processes the registry records for this run's lease, verified by pid *and* start time.
        targets = (
            [
                Target(p.pid, p.start_time, p.role)
                for p in registry.processes(run, token=token)
                if p.host_key == host_key()
            ]
            if token is not None
            else []
        )
        result = run_ladder(targets, grace=grace) if targets else None
        registry.add_event(
            run,
            "stopped_by_operator",
            token=token,
            reason=args.reason,
            detail={"ladder": result.as_dict() if result else None, "revoked": revoked is not None},
        )
    console = out()
    console.print(f"run {run}: lease {'revoked (token ' + str(token) + ')' if revoked else 'was not held'}")
    if result is None:
        console.print("  no registered process of the run is alive on this host")
    else:
        console.print(
            f"  signals: {', '.join(f'{pid} {sig}' for pid, sig in result.signals) or '-'}; "
            f"survivors: {result.survivors or 'none'}"
        )
        for pid, why in result.skipped:
            console.print(f"  not signalled: pid {pid}: {why}")
    return 1 if result is not None and result.survivors else 0


def cmd_ps(args: argparse.Namespace) -> int:
    rows = []
    with Registry.open(registry_url(args)) as registry:
        for p in registry.processes():
            alive = p.host_key == host_key() and is_same_process_alive(p.pid, p.start_time)
            rows.append(
                {
                    "run": p.run,
                    "token": p.token,
                    "role": p.role,
                    "pid": p.pid,
                    "start_time": p.start_time,
                    "host": p.host,
                    "alive": alive,
                    "registered_at": p.registered_at,
                    "cmdline": None,
                }
            )
    registered = {(r["pid"], round(float(r["start_time"]), 1)) for r in rows}  # type: ignore[arg-type]
    for evidence in marked_processes():
        if (evidence.pid, round(evidence.start_time, 1)) not in registered:
            rows.append(
                {
                    "run": evidence.marker,
                    "token": evidence.token,
                    "role": "marked",
                    "pid": evidence.pid,
                    "start_time": evidence.start_time,
                    "host": None,
                    "alive": True,
                    "registered_at": None,
                    "cmdline": " ".join(evidence.cmdline),
                }
            )
    if args.json:
        print_json({"processes": rows})
        return 0
    view = table("run", "role", "pid", "token", "alive", "started", "command")
    for row in rows:
        view.add_row(
            str(row["run"]),
            str(row["role"]),
            str(row["pid"]),
            str(row["token"]),
            "yes" if row["alive"] else "no",
            human_time(row["start_time"]),  # type: ignore[arg-type]
            str(row["cmdline"] or ""),
        )
    out().print(view if rows else "no registered or marked processes")
    return 0


__all__ = ["register"]
