"""``trainguard ps``: the processes the registry records for runs, and every process carrying a run marker
that the registry does not know."""

from __future__ import annotations

import argparse
from typing import Any

import psutil

from trainguard._os.identity import host_key, is_same_process_alive, wall_start
from trainguard.cli._common import (
    ArgumentParser,
    add_registry_args,
    human_time,
    out,
    print_json,
    registry_url,
    table,
)
from trainguard.registry import Registry
from trainguard.supervise import marked_processes


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    ps = commands.add_parser(
        "ps", help="processes registered for runs, and every process carrying a run marker"
    )
    add_registry_args(ps, json_flag=True)
    ps.set_defaults(handler=cmd_ps)


def _command_line(pid: int) -> str | None:
    try:
        return " ".join(psutil.Process(pid).cmdline()) or None
    except psutil.Error:
        return None  # exited since, or another user's process we may not read


def cmd_ps(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    with Registry.open(registry_url(args), mode="read") as registry:
        for p in registry.processes():
            alive = p.host_key == host_key() and is_same_process_alive(p.pid, p.start_ticks)
            rows.append(
                {
                    "run": p.run,
                    "token": p.token,
                    "role": p.role.value,
                    "pid": p.pid,
                    "start_time": p.start_time,
                    "start_ticks": p.start_ticks,
                    "host": p.host,
                    "alive": alive,
                    "registered_at": p.registered_at,
                    "cmdline": _command_line(p.pid) if alive else None,
                }
            )
    registered = {(r["pid"], r["start_ticks"]) for r in rows}
    for evidence in marked_processes():
        if (evidence.pid, evidence.start_ticks) not in registered:
            rows.append(
                {
                    "run": evidence.marker,
                    "token": evidence.token,
                    "role": "marked",
                    "pid": evidence.pid,
                    "start_time": wall_start(evidence.start_ticks),
                    "start_ticks": evidence.start_ticks,
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
            human_time(row["start_time"]),
            str(row["cmdline"] or ""),
        )
    out().print(view if rows else "no registered or marked processes")
    return 0


__all__ = ["register"]
