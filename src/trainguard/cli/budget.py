"""``trainguard budget show|extend RUN``: spent / limit / remaining, and audited extensions."""

from __future__ import annotations

import argparse

from trainguard.budget import EXTENDABLE, Budget, budget_lines
from trainguard.cli._common import (
    ArgumentParser,
    add_location_args,
    duration_arg,
    locate,
    out,
    print_json,
    reason_arg,
    table,
)
from trainguard.config.units import format_duration, format_size
from trainguard.registry import Registry, RunRecord


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


def _shown(budget: Budget, value: float | None) -> str:
    if value is None:
        return "-"
    if budget is Budget.RUNTIME:
        return format_duration(value)
    if budget in (Budget.MEMORY, Budget.DISK):
        return format_size(value)
    return f"{value:.0f}"


def _run(args: argparse.Namespace) -> RunRecord:
    location = locate(args)
    with Registry.open(location.registry_url, mode="read") as registry:
        return registry.run(location.run)


def cmd_show(args: argparse.Namespace) -> int:
    info = _run(args)
    lines = budget_lines(info)
    if args.json:
        print_json({"run": info.name, "budgets": [line.as_dict() for line in lines]})
        return 0
    view = table("budget", "spent", "limit", "remaining", "extended by", title=f"run {info.name}")
    for line in lines:
        view.add_row(
            line.budget.value,
            _shown(line.budget, line.spent),
            _shown(line.budget, line.limit) if line.limit else "no limit",
            _shown(line.budget, line.remaining),
            _shown(line.budget, line.extended_by) if line.extended_by else "",
        )
    out().print(view)
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    runtime = duration_arg("--runtime", args.runtime) if args.runtime is not None else None
    location = locate(args)
    with Registry.open(location.registry_url, mode="existing") as registry:
        limits = registry.extend_budget(
            location.run, reason=args.reason, episodes=args.episodes, steps=args.steps, runtime=runtime
        )
    shown = ", ".join(
        f"{key} {_shown(Budget(name), limits[key])}" for name, key in EXTENDABLE.items() if key in limits
    )
    out().print(f"extended run {location.run}: {shown} ({args.reason})")
    return 0


__all__ = ["register"]
