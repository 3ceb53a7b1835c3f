"""``trainguard recover RUN --last-good CKPT --reason TEXT``: the incident's immediate actions in one
command - fence, pin the last good checkpoint, make it live, quarantine what came after. Nothing is
deleted, and the counts before and after say so."""

from __future__ import annotations

import argparse

from trainguard.cli._common import (
    ArgumentParser,
    add_location_args,
    locate,
    open_store,
    out,
    print_json,
    reason_arg,
)
from trainguard.promotion import recover_run


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    recover = commands.add_parser(
        "recover",
        help="the incident's immediate actions in one command (nothing is "
        "deleted): fence, pin the last good checkpoint, make it live, quarantine after it",
    )
    add_location_args(recover, json_flag=True)
    recover.add_argument("--last-good", required=True, metavar="CKPT")
    reason_arg(recover, required=True)
    recover.set_defaults(handler=cmd_recover)


def cmd_recover(args: argparse.Namespace) -> int:
    with open_store(locate(args), recover=True) as store:
        outcome = recover_run(store, args.last_good, reason=args.reason)
    if args.json:
        print_json(outcome.as_dict())
        return 0
    good, quarantined = outcome.last_good, outcome.quarantined
    revoked = outcome.revoked_token
    console = out()
    console.print(f"recovered run {good.run}: {args.reason}")
    console.print(
        f"  lease: {'revoked token ' + str(revoked) if revoked is not None else 'was not held'} "
        "(any process still holding it can no longer commit)"
    )
    console.print(f"  pinned and live: {good.name} (episode {good.episode})")
    console.print(
        f"  quarantined {len(quarantined)} checkpoint(s) after it: "
        f"{', '.join(r.name for r in quarantined[:5])}{' ...' if len(quarantined) > 5 else ''}"
    )
    console.print(f"  checkpoints by state before {outcome.states_before} -> after {outcome.states_after}")
    console.print(
        f"  checkpoint files (objects) before {outcome.files_before} -> after {outcome.files_after} "
        "(nothing deleted)"
    )
    return 0


__all__ = ["register"]
