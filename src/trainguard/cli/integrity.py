"""``trainguard promote``, ``rollback``, ``recover``: the live pointer, moved only through gates."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

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
from trainguard.config import Gates
from trainguard.errors import CheckpointNotFound
from trainguard.health.promotion import Assessment, Promoter


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    promote = commands.add_parser(
        "promote", help="move the live pointer to the best checkpoint passing every gate"
    )
    add_location_args(promote, json_flag=True)
    promote.add_argument("name", nargs="?", metavar="CKPT", help="a specific checkpoint (default: the best)")
    _features_arg(promote)
    reason_arg(promote, required=False)
    promote.set_defaults(handler=cmd_promote)

    rollback = commands.add_parser("rollback", help="move the live pointer back to an earlier checkpoint")
    add_location_args(rollback)
    rollback.add_argument("--to", required=True, metavar="CKPT", dest="name")
    _features_arg(rollback)
    reason_arg(rollback, required=True)
    rollback.set_defaults(handler=cmd_rollback)

    recover = commands.add_parser(
        "recover",
        help="the incident's immediate actions in one command (nothing is "
        "deleted): fence, pin the last good checkpoint, make it live, quarantine after it",
    )
    add_location_args(recover, json_flag=True)
    recover.add_argument("--last-good", required=True, metavar="CKPT")
    reason_arg(recover, required=True)
    recover.set_defaults(handler=cmd_recover)


def _features_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--features",
        action="append",
        metavar="FILE",
        help="the live side's feature files (default: the config's features)",
    )


def _promoter(location: Location, store: CheckpointStore, args: argparse.Namespace) -> Promoter:
    config = location.config
    settings = config.gates if config else Gates()
    if args.features:
        features = fp.compute(args.features)
    elif config is not None and config.features:
        features = fp.compute(config.features, base=config.source.parent if config.source else None)
    else:
        features = None
    return Promoter(
        store,
        settings,
        best_metric=config.checkpoints.best_metric if config else None,
        live_features=features,
    )


def _verdict_table(assessments: list[Assessment]) -> None:
    gates = ["integrity", "features", "decisions", "metrics", "vs_live"]
    view = table("checkpoint", "episode", *gates, title="gate verdicts")
    for a in assessments:
        cells = {v.gate: ("pass" if v.passed else "FAIL: " + v.reason) for v in a.verdicts}
        view.add_row(a.record.name, str(a.record.episode), *(cells.get(g, "-") for g in gates))
    out().print(view)


def cmd_promote(args: argparse.Namespace) -> int:
    location = locate(args)
    with open_store(location) as store:
        promoter = _promoter(location, store, args)
        assessments = promoter.assess_all([args.name] if args.name else None)
        chosen = promoter.choose(assessments)
        before = store.registry.live_pointer(store.run)
        if chosen is not None:
            promoter.move_live(chosen, reason=args.reason or "passed every gate")
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
        _verdict_table(assessments)
        if chosen is None:
            out().print(f"no candidate passes every gate; the live pointer is unchanged ({before or 'none'})")
        else:
            out().print(f"live: {before or 'none'} -> {chosen.record.name}")
    return 0 if chosen is not None else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    location = locate(args)
    with open_store(location) as store:
        promoter = _promoter(location, store, args)
        assessment = promoter.assess(store.record(args.name), decisions=False)
        before = store.registry.live_pointer(store.run)
        if not assessment.passed:
            _verdict_table([assessment])
            out().print(
                f"refusing to roll back to {args.name}; the live pointer is unchanged ({before or 'none'})"
            )
            return 1
        promoter.move_live(assessment, reason=args.reason, kind="rollback")
    out().print(f"live: {before or 'none'} -> {args.name} (rollback: {args.reason})")
    return 0


def _on_disk(root: Path) -> int:
    """Checkpoint files under the store, wherever they sit (in place or in quarantine); not the registry,
    and not the reason records a quarantine adds next to what it moves."""
    count = 0
    for directory, subdirectories, files in os.walk(root):
        if Path(directory) == root:
            subdirectories[:] = [d for d in subdirectories if d not in (".trainguard", ".staging", ".trash")]
        count += sum(1 for f in files if not f.endswith(".reason.json"))
    return count


def cmd_recover(args: argparse.Namespace) -> int:
    location = locate(args)
    with open_store(location, recover=True) as store:
        registry, run = store.registry, store.run
        good = store.record(args.last_good)
        if good.state != "committed":
            raise CheckpointNotFound(
                run, good.name, f"is {good.state}; the last good checkpoint must be committed"
            )
        report = store.verify(good.name)
        if not report.ok:
            raise CheckpointNotFound(
                run, good.name, f"does not verify ({report.problems[0].reason}); pick another"
            )
        before = Counter(r.state for r in store.list(states=None))
        files_before = _on_disk(store.root)
        # Fence first: from this moment no process holding the old token can commit anything.
        revoked = registry.revoke(run, f"recover: {args.reason}")
        store.pin(good.name, reason=f"last good: {args.reason}")
        registry.set_live_pointer(run, good.name, reason=f"recover: {args.reason}", detail={"recover": True})
        after_good = [r for r in store.list() if (r.episode, r.id or 0) > (good.episode, good.id or 0)]
        for record in after_good:
            store.quarantine(record.name, reason=f"after last good {good.name}: {args.reason}")
        after = Counter(r.state for r in store.list(states=None))
        files_after = _on_disk(store.root)
        registry.add_event(
            run,
            "recovered",
            checkpoint=good.name,
            reason=args.reason,
            detail={
                "quarantined": [r.name for r in after_good],
                "revoked_token": revoked.token if revoked else None,
                "before": dict(before),
                "after": dict(after),
            },
        )
    summary = {
        "run": run,
        "last_good": good.name,
        "revoked_token": revoked.token if revoked else None,
        "quarantined": [r.name for r in after_good],
        "states_before": dict(before),
        "states_after": dict(after),
        "files_before": files_before,
        "files_after": files_after,
    }
    if args.json:
        print_json(summary)
        return 0
    console = out()
    console.print(f"recovered run {run}: {args.reason}")
    console.print(
        f"  lease: {'revoked token ' + str(revoked.token) if revoked else 'was not held'} "
        "(any process still holding it can no longer commit)"
    )
    console.print(f"  pinned and live: {good.name} (episode {good.episode})")
    console.print(
        f"  quarantined {len(after_good)} checkpoint(s) after it: "
        f"{', '.join(r.name for r in after_good[:5])}{' ...' if len(after_good) > 5 else ''}"
    )
    console.print(f"  checkpoints by state before {dict(before)} -> after {dict(after)}")
    console.print(
        f"  checkpoint files on disk before {files_before} -> after {files_after} (nothing deleted)"
    )
    return 0


__all__ = ["register"]
