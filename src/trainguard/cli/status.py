"""``trainguard status [RUN]`` and ``trainguard incident scan [STORE ...]``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from trainguard.cli._common import (
    ArgumentParser,
    add_registry_args,
    err,
    out,
    print_json,
    registry_url,
    table,
)
from trainguard.errors import ConfigError
from trainguard.identity import host_key, is_same_process_alive
from trainguard.names import validate_name
from trainguard.registry import Registry, RunRecord, default_registry_url
from trainguard.supervise.scan import StoreFindings, scan_store
from trainguard.units import format_duration


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    status = commands.add_parser("status", help="runs: holder, budget, heartbeat, checkpoints, watchdog")
    status.add_argument("run", nargs="?", metavar="RUN")
    add_registry_args(status, json_flag=True)
    status.set_defaults(handler=cmd_status)

    incident = commands.add_parser("incident", help="find what is writing where it should not")
    sub = incident.add_subparsers(dest="incident_command", required=True, metavar="COMMAND")
    scan = sub.add_parser(
        "scan", help="rogue writers, unregistered checkpoints; exit 1 when anything is found"
    )
    scan.add_argument(
        "stores", nargs="*", metavar="STORE", help="store directories (default: every store in the registry)"
    )
    scan.add_argument("--registry", metavar="URL")
    scan.add_argument("--json", action="store_true")
    scan.set_defaults(handler=cmd_scan)

    report = commands.add_parser("report", help="a self-contained HTML report with plots of a run")
    report.add_argument("run", metavar="RUN")
    add_registry_args(report)
    report.add_argument("-o", "--output", required=True, metavar="FILE.html")
    report.set_defaults(handler=cmd_report)


def watchdog_alive(registry: Registry) -> bool:
    now = time.time()
    for dog in registry.watchdogs():
        fresh = now - dog.beat_at <= 3 * dog.interval + 5
        if fresh and (dog.host_key != host_key() or is_same_process_alive(dog.pid, dog.start_time)):
            return True
    return False


def run_status(registry: Registry, run: RunRecord) -> dict[str, Any]:
    lease = registry.lease_info(run.name)
    beat = registry.heartbeat(run.name)
    committed = registry.checkpoints(run.name)
    holder = None
    if lease is not None and lease.state == "held":
        holder = {
            "host": lease.holder_host,
            "pid": lease.holder_pid,
            "token": lease.token,
            "live": lease.live,
            "since": lease.acquired_at,
        }
    return {
        "run": run.name,
        "store": run.store,
        "holder": holder,
        "lease_state": lease.state if lease else None,
        "episodes": {"spent": run.episodes_spent, "limit": run.limits.get("max_episodes")},
        "runtime": {"spent": run.runtime_spent, "limit": run.limits.get("max_runtime")},
        "heartbeat_age": None if beat is None else time.time() - beat["at"],
        "last_checkpoint": committed[-1].name if committed else None,
        "live_checkpoint": registry.live_pointer(run.name),
    }


def cmd_report(args: argparse.Namespace) -> int:
    from trainguard.report import build_report

    name = validate_name(args.run, "run")
    with Registry.open(registry_url(args)) as registry:
        page = build_report(registry, name)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page)
    out().print(f"report: {output.resolve()} ({len(page) // 1024} kB, self-contained)")
    return 0


def _limit(seconds: float | None) -> str:
    return format_duration(seconds) if seconds else "-"


def cmd_status(args: argparse.Namespace) -> int:
    with Registry.open(registry_url(args)) as registry:
        runs = registry.runs()
        if args.run is not None:
            name = validate_name(args.run, "run")
            runs = [r for r in runs if r.name == name]
            if not runs:
                raise ConfigError("run", name, f"is not in the registry {registry.url}")
        rows = [run_status(registry, r) for r in runs]
        alive = watchdog_alive(registry)
    if args.json:
        print_json({"runs": rows, "watchdog_alive": alive})
        return 0
    view = table("run", "holder", "token", "episodes", "runtime", "heartbeat", "last checkpoint", "live")
    for row in rows:
        holder = row["holder"]
        who = f"{holder['host']}:{holder['pid']}{'' if holder['live'] else ' (expired)'}" if holder else "-"
        episodes, runtime = row["episodes"], row["runtime"]
        view.add_row(
            row["run"],
            who,
            str(holder["token"]) if holder else "-",
            f"{episodes['spent']} / {episodes['limit'] or '-'}",
            f"{format_duration(runtime['spent'])} / {_limit(runtime['limit'])}",
            f"{row['heartbeat_age']:.0f}s ago" if row["heartbeat_age"] is not None else "-",
            row["last_checkpoint"] or "-",
            row["live_checkpoint"] or "-",
        )
    out().print(view if rows else "no runs in the registry")
    if not alive:
        err().print("warning: no watchdog is alive for this registry (start `trainguard watchdog`)")
    return 0


def _print_findings(result: StoreFindings) -> None:
    console = out()
    console.print(
        f"[bold]{result.run}[/] {result.store}: {len(result.suspects)} suspect process(es), "
        f"{len(result.unregistered)} unregistered dir(s), {result.fenced_attempts} fenced commit "
        "attempt(s) in the last hour"
    )
    for suspect in result.suspects:
        e = suspect.evidence
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.start_time))
        kind = "WRITER" if suspect.killable else "cwd only"
        console.print(f"  pid {e.pid} started {started} {kind}: {suspect.why}", markup=False)
        console.print(f"    command: {' '.join(e.cmdline)}", markup=False)
        console.print(
            f"    parents: {' <- '.join(e.parents) or '-'}; cgroup: {e.cgroup or '-'}", markup=False
        )
        for path in e.files[:10]:
            console.print(f"    open: {path}", markup=False)
        if e.cwd:
            console.print(f"    cwd: {e.cwd}", markup=False)
    for name in result.unregistered:
        console.print(f"  unregistered directory (no committed row): {name}", markup=False)
    for name in result.dead_staging:
        console.print(f"  staging left by a dead writer: {name}", markup=False)
    for problem in result.problems:
        console.print(f"  {problem}", markup=False)


def cmd_scan(args: argparse.Namespace) -> int:
    targets: list[tuple[str, Path | None]] = []
    if args.registry:
        targets.append((args.registry, None))
    for given in args.stores:
        path = Path(given).resolve()
        if not path.is_dir():
            raise ConfigError("STORE", given, "is not a directory")
        targets.append((default_registry_url(path), path))
    if not targets:
        raise ConfigError("STORE", None, "give one or more store directories or --registry URL")
    results = []
    for url, only in targets:
        with Registry.open(url) as registry:
            for run in registry.runs():
                if run.store and (only is None or Path(run.store).resolve() == only):
                    results.append(scan_store(registry, run))
    found = any(r.anything for r in results)
    if args.json:
        print_json({"found": found, "stores": [r.as_dict() for r in results]})
        return 1 if found else 0
    console = out()
    for result in results:
        _print_findings(result)
    if not found:
        console.print("nothing found")
    return 1 if found else 0


__all__ = ["register", "run_status", "watchdog_alive"]
