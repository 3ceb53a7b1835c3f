"""``trainguard promote RUN [CKPT]``: move the live pointer to the best checkpoint that passes every gate
(exit 1, nothing changed, when none does)."""

from __future__ import annotations

import argparse

from trainguard import fingerprint as fp
from trainguard.checkpoints import CheckpointStore
from trainguard.cli._common import (
    ArgumentParser,
    Location,
    add_location_args,
    locate,
    open_store,
    out,
    print_json,
    reason_arg,
    table,
)
from trainguard.errors import ExitCode
from trainguard.promotion import Assessment, Promoter

GATES = ("integrity", "features", "decisions", "metrics", "vs_live")


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    promote = commands.add_parser(
        "promote", help="move the live pointer to the best checkpoint passing every gate"
    )
    add_location_args(promote, json_flag=True)
    promote.add_argument("name", nargs="?", metavar="CKPT", help="a specific checkpoint (default: the best)")
    features_arg(promote)
    reason_arg(promote, required=False)
    promote.set_defaults(handler=cmd_promote)


def features_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--features",
        action="append",
        metavar="FILE",
        help="the live side's feature files (default: the config's features)",
    )


def promoter(location: Location, store: CheckpointStore, args: argparse.Namespace) -> Promoter:
    """The gates of the config (if any), judged against --features or else the config's own features."""
    features = fp.compute(args.features) if args.features else None
    return Promoter.from_config(store, location.config, live_features=features)


def verdict_table(assessments: list[Assessment]) -> None:
    view = table("checkpoint", "episode", *GATES, title="gate verdicts")
    for a in assessments:
        cells = {v.gate: ("pass" if v.passed else "FAIL: " + v.reason) for v in a.verdicts}
        view.add_row(a.record.name, str(a.record.episode), *(cells.get(g, "-") for g in GATES))
    out().print(view)


def cmd_promote(args: argparse.Namespace) -> int:
    location = locate(args)
    with open_store(location) as store:
        gates = promoter(location, store, args)
        assessments = gates.assess_all([args.name] if args.name else None)
        chosen = gates.choose(assessments)
        before = store.registry.live_pointer(store.run)
        if chosen is not None:
            gates.move_live(chosen, reason=args.reason or "passed every gate")
    if args.json:
        print_json(
            {
                "run": location.run,
                "promoted": chosen.record.name if chosen else None,
                "previous": before,
                "candidates": [a.as_dict() for a in assessments],
            }
        )
    else:
        verdict_table(assessments)
        if chosen is None:
            out().print(f"no candidate passes every gate; the live pointer is unchanged ({before or 'none'})")
            evaluator = location.config.gates.evaluator if location.config else None
            short = [
                v for a in assessments for v in a.verdicts if v.gate == "decisions" and "only" in v.reason
            ]
            if short and evaluator is None:
                # A trainer that never reported its actions (an adopted file, a legacy script): the gate
                # needs an evaluator to measure the decisions on held-out data.
                out().print(
                    "hint: no decisions were recorded for these checkpoints; set gates.evaluator "
                    "('module:function' returning an action histogram) in the config and give it with -c",
                    markup=False,
                )
        else:
            out().print(f"live: {before or 'none'} -> {chosen.record.name}")
    return ExitCode.OK if chosen is not None else ExitCode.PROBLEM


__all__ = ["features_arg", "promoter", "register", "verdict_table"]
