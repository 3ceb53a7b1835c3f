"""``trainguard status [RUN]``: who holds each run, its budget, heartbeat, checkpoints - and whether anything
is watching."""

from __future__ import annotations

import argparse
import time
from typing import Any

from trainguard._os.identity import host_key, is_same_process_alive
from trainguard.cli._common import (
    ArgumentParser,
    add_registry_args,
    err,
    out,
    print_json,
    registry_url,
    table,
)
from trainguard.config.units import format_duration
from trainguard.names import validate_name
from trainguard.registry import LeaseState, Registry, RunRecord


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    status = commands.add_parser("status", help="runs: holder, budget, heartbeat, checkpoints, watchdog")
    status.add_argument("run", nargs="?", metavar="RUN")
    add_registry_args(status, json_flag=True)
    status.set_defaults(handler=cmd_status)


def watchdog_alive(registry: Registry) -> bool:
    now = time.time()
    for dog in registry.watchdogs():
        fresh = now - dog.beat_at <= 3 * dog.interval + 5
        if fresh and (dog.host_key != host_key() or is_same_process_alive(dog.pid, dog.start_ticks)):
            return True
    return False


def run_status(registry: Registry, run: RunRecord) -> dict[str, Any]:
    lease = registry.lease_info(run.name)
    beat = registry.heartbeat(run.name)
    committed = registry.checkpoints(run.name)
    holder = None
    if lease is not None and lease.state is LeaseState.HELD:
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
        "lease_state": lease.state.value if lease else None,
        "episodes": {"spent": run.episodes_spent, "limit": run.limits.get("max_episodes")},
        "runtime": {"spent": run.runtime_spent, "limit": run.limits.get("max_runtime")},
        "heartbeat_age": None if beat is None else time.time() - beat["at"],
        "last_checkpoint": committed[-1].name if committed else None,
        "live_checkpoint": registry.live_pointer(run.name),
    }


def _limit(seconds: float | None) -> str:
    return format_duration(seconds) if seconds else "-"


def cmd_status(args: argparse.Namespace) -> int:
    with Registry.open(registry_url(args), mode="read") as registry:
        runs = [registry.run(validate_name(args.run, "run"))] if args.run is not None else registry.runs()
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


__all__ = ["register", "run_status", "watchdog_alive"]
