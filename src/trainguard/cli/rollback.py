"""``trainguard rollback RUN --to CKPT --reason TEXT``: move the live pointer back to an earlier checkpoint,
if its bytes verify and it was made with the live side's features."""

from __future__ import annotations

import argparse

from trainguard.cli._common import ArgumentParser, add_location_args, locate, open_store, out, reason_arg
from trainguard.cli.promote import features_arg, promoter, verdict_table
from trainguard.errors import ExitCode


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    rollback = commands.add_parser("rollback", help="move the live pointer back to an earlier checkpoint")
    add_location_args(rollback)
    rollback.add_argument("--to", required=True, metavar="CKPT", dest="name")
    features_arg(rollback)
    reason_arg(rollback, required=True)
    rollback.set_defaults(handler=cmd_rollback)


def cmd_rollback(args: argparse.Namespace) -> int:
    location = locate(args)
    with open_store(location) as store:
        before = store.registry.live_pointer(store.run)
        assessment = promoter(location, store, args).rollback(args.name, reason=args.reason)
    if not assessment.passed:
        verdict_table([assessment])
        out().print(
            f"refusing to roll back to {args.name}; the live pointer is unchanged ({before or 'none'})"
        )
        return ExitCode.PROBLEM
    out().print(f"live: {before or 'none'} -> {args.name} (rollback: {args.reason})")
    return ExitCode.OK


__all__ = ["register"]
