"""``trainguard budget show|extend RUN``: spent / limit / remaining, and audited extensions."""

from __future__ import annotations

import argparse
from typing import Any

from trainguard.cli._common import (
    ArgumentParser,
    add_location_args,
    locate,
    out,
    print_json,
    reason_arg,
    table,
)
from trainguard.errors import ConfigError
from trainguard.registry import Registry, RunRecord
from trainguard.units import format_duration, format_size, parse_duration


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    budget = commands.add_parser("budget", help="show or extend a run's budget")
    sub = budget.add_subparsers(dest="budget_command", required=True, metavar="COMMAND")
    show = sub.add_parser("show", help="spent / limit / remaining, cumulative over every restart")
    add_location_args(show, json_flag=True)
    show.set_defaults(handler=cmd_show)
    extend = sub.add_parser("extend", help="raise a limit (the only way a run gets more budget); audited")
    add_location_args(extend)
    extend.add_argument("--episodes", type=int, metavar="N")
    extend.add_argument("--steps", type=int, metavar="N")
    extend.add_argument("--runtime", metavar="DURATION", help="e.g. 2h, 90m")
    reason_arg(extend, required=True)
    extend.set_defaults(handler=cmd_extend)


def budget_rows(info: RunRecord) -> list[dict[str, Any]]:
    limits = info.limits
    rows = []
    for name, spent, key in (
        ("episodes", info.episodes_spent, "max_episodes"),
        ("steps", info.steps_spent, "max_steps"),
        ("runtime", info.runtime_spent, "max_runtime"),
    ):
        limit = limits.get(key)
        rows.append(
            {
                "budget": name,
                "spent": spent,
                "limit": limit,
                "remaining": None if limit is None else max(0, limit - spent),
                "extended_by": limits.get("extensions", {}).get(key, 0),
            }
        )
    for name, key in (("memory", "max_memory"), ("disk", "max_disk")):
        rows.append(
            {"budget": name, "spent": None, "limit": limits.get(key), "remaining": None, "extended_by": 0}
        )
    return rows


def _shown(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name == "runtime":
        return format_duration(value)
    if name in ("memory", "disk"):
        return format_size(value)
    return f"{value:g}"


def _info(args: argparse.Namespace) -> tuple[Registry, RunRecord]:
    location = locate(args)
    registry = Registry.open(location.registry_url)
    info = registry.run_info(location.run)
    if info is None:
        registry.close()
        raise ConfigError("run", location.run, f"is not in the registry {registry.url}")
    return registry, info


def cmd_show(args: argparse.Namespace) -> int:
    registry, info = _info(args)
    registry.close()
    rows = budget_rows(info)
    if args.json:
        print_json({"run": info.name, "budgets": rows})
        return 0
    view = table("budget", "spent", "limit", "remaining", "extended by", title=f"run {info.name}")
    for row in rows:
        name = row["budget"]
        view.add_row(
            name,
            _shown(name, row["spent"]),
            _shown(name, row["limit"]) if row["limit"] else "no limit",
            _shown(name, row["remaining"]),
            _shown(name, row["extended_by"]) if row["extended_by"] else "",
        )
    out().print(view)
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    runtime = None
    if args.runtime is not None:
        try:
            runtime = parse_duration(args.runtime)
        except ValueError as error:
            raise ConfigError("--runtime", args.runtime, str(error)) from None
    registry, info = _info(args)
    try:
        limits = registry.extend_budget(
            info.name, reason=args.reason, episodes=args.episodes, steps=args.steps, runtime=runtime
        )
    finally:
        registry.close()
    shown = ", ".join(
        f"{key} {_shown(key.removeprefix('max_'), limits[key])}"
        for key in ("max_episodes", "max_steps", "max_runtime")
        if key in limits
    )
    out().print(f"extended run {info.name}: {shown} ({args.reason})")
    return 0


__all__ = ["budget_rows", "register"]
