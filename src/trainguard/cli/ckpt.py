"""``trainguard ckpt ls|verify|pin|unpin|quarantine|release|prune``."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainguard import fingerprint as fp
from trainguard.checkpoints import CheckpointStore, adopt_directory, retention, signing_of
from trainguard.cli._common import (
    ArgumentParser,
    add_location_args,
    human_time,
    locate,
    metrics_text,
    open_store,
    out,
    print_json,
    reason_arg,
    table,
)
from trainguard.config.units import format_size
from trainguard.errors import ExitCode, InvalidArgument
from trainguard.registry import CheckpointState


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    ckpt = commands.add_parser("ckpt", help="list, verify, pin, quarantine and prune checkpoints")
    sub = ckpt.add_subparsers(dest="ckpt_command", required=True, metavar="COMMAND")

    ls = sub.add_parser("ls", help="list checkpoints as the registry records them")
    add_location_args(ls, json_flag=True)
    ls.add_argument("--all", action="store_true", help="include quarantined and evicted checkpoints")
    ls.set_defaults(handler=cmd_ls)

    verify = sub.add_parser("verify", help="check every hash; exit 1 naming the file when one does not match")
    add_location_args(verify, json_flag=True)
    verify.add_argument("names", nargs="*", metavar="CKPT", help="checkpoints (default: every committed one)")
    verify.set_defaults(handler=cmd_verify)

    for action, doc in (("pin", "never evict this checkpoint"), ("unpin", "let retention consider it again")):
        parser = sub.add_parser(action, help=doc)
        add_location_args(parser)
        parser.add_argument("name", metavar="CKPT")
        reason_arg(parser, required=False)
        parser.set_defaults(handler=cmd_pin, pinned=action == "pin")

    quarantine = sub.add_parser(
        "quarantine", help="move checkpoints aside with a reason (nothing is deleted)"
    )
    add_location_args(quarantine)
    quarantine.add_argument("name", nargs="?", metavar="CKPT")
    quarantine.add_argument(
        "--after-episode", type=int, metavar="N", help="every committed checkpoint after N"
    )
    reason_arg(quarantine, required=True)
    quarantine.set_defaults(handler=cmd_quarantine)

    adopt = sub.add_parser(
        "adopt", help="bring legacy checkpoint files under the store (loaded safely first)"
    )
    add_location_args(adopt, json_flag=True)
    adopt.add_argument("directory", metavar="DIR")
    adopt.add_argument(
        "--pattern",
        default=r"checkpoint_ep(?P<episode>\d+)\.pth",
        metavar="REGEX",
        help=r"must match the whole file name, with a named group (?P<episode>\d+) or (?P<steps>\d+); "
        r"default 'checkpoint_ep(?P<episode>\d+)\.pth' (SB3: 'model_(?P<steps>\d+)_steps\.zip')",
    )
    adopt.add_argument(
        "--features", action="append", metavar="FILE", help="the features they were trained on"
    )
    adopt.set_defaults(handler=cmd_adopt)

    release = sub.add_parser("release", help="bring a quarantined checkpoint back (after verifying it)")
    add_location_args(release)
    release.add_argument("name", metavar="CKPT")
    reason_arg(release, required=False)
    release.set_defaults(handler=cmd_release)

    prune = sub.add_parser("prune", help="evict what the retention policy does not keep")
    add_location_args(prune, json_flag=True)
    prune.add_argument("--keep-last", type=int, metavar="N")
    prune.add_argument("--keep-best", type=int, metavar="K")
    prune.add_argument("--metric", metavar="NAME", help="metric for --keep-best")
    prune.add_argument("--mode", choices=("min", "max"), default="max")
    prune.add_argument("--keep-every", type=int, metavar="N")
    prune.add_argument("--dry-run", action="store_true", help="print what would be evicted, change nothing")
    prune.set_defaults(handler=cmd_prune)


def cmd_ls(args: argparse.Namespace) -> int:
    with open_store(locate(args), read_only=True) as store:
        records = store.checkpoints(states=None if args.all else (CheckpointState.COMMITTED,))
        live = store.registry.live_pointer(store.run)
        if args.json:
            print_json(
                {
                    "run": store.run,
                    "store": str(store.root),
                    "live": live,
                    "checkpoints": [{**r.as_dict(), "live": r.name == live} for r in records],
                }
            )
            return 0
        view = table(
            "name",
            "episode",
            "token",
            "state",
            "flags",
            "size",
            "created",
            "metrics",
            title=f"run {store.run} - {store.root}",
        )
        for r in records:
            flags = " ".join(f for f, on in (("pinned", r.pinned), ("live", r.name == live)) if on)
            view.add_row(
                r.name,
                str(r.episode),
                str(r.token),
                r.state.value,
                flags,
                format_size(r.bytes),
                human_time(r.created_at),
                metrics_text(r.metrics),
            )
        out().print(view if records else f"run {store.run}: no checkpoints")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with open_store(locate(args), read_only=True) as store:
        names = args.names or [r.name for r in store.checkpoints()]
        reports = [store.verify(name) for name in names]
    bad = [r for r in reports if not r.ok]
    if args.json:
        print_json({"run": args.run, "ok": not bad, "results": [r.as_dict() for r in reports]})
    else:
        console = out()
        for report in reports:
            if report.ok:
                console.print(f"ok       {report.name}")
            for problem in report.problems:
                console.print(f"CORRUPT  {report.name}: {problem.file}: {problem.reason}")
        if not reports:
            console.print(f"run {args.run}: no committed checkpoints to verify")
    return ExitCode.PROBLEM if bad else ExitCode.OK


def cmd_pin(args: argparse.Namespace) -> int:
    with open_store(locate(args)) as store:
        record = (
            store.pin(args.name, reason=args.reason)
            if args.pinned
            else store.unpin(args.name, reason=args.reason)
        )
    out().print(f"{'pinned' if record.pinned else 'unpinned'} {record.name} (episode {record.episode})")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    if (args.name is None) == (args.after_episode is None):
        raise InvalidArgument("CKPT", args.name, "give either a checkpoint name or --after-episode N")
    with open_store(locate(args)) as store:
        if args.name is not None:
            records = [store.record(args.name)]
        else:
            records = [r for r in store.checkpoints() if r.episode > args.after_episode]
        live = store.registry.live_pointer(store.run)
        for record in records:
            store.quarantine(record.name, reason=args.reason)
    console = out()
    for record in records:
        console.print(f"quarantined {record.name} (episode {record.episode}): {args.reason}")
        if record.name == live:
            console.print(
                f"warning: {record.name} was the live checkpoint; serving now refuses it until you "
                "promote or roll back"
            )
    console.print(f"{len(records)} checkpoint(s) moved aside; nothing was deleted")
    return 0


def cmd_adopt(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    if not directory.is_dir():
        raise InvalidArgument("DIR", args.directory, "is not a directory")
    location = locate(args)
    features = fp.compute(args.features) if args.features else None
    if not isinstance(location.store, Path):
        raise InvalidArgument("--store", location.store, "ckpt adopt writes into a filesystem store only")
    location.store.mkdir(parents=True, exist_ok=True)
    signing = signing_of(location.config)
    url = location.registry_url
    with CheckpointStore(location.store, run=location.run, registry=url, signing=signing) as store:
        ttl = location.config.monitoring.lease_ttl if location.config else 30.0
        with store.registry.acquire(location.run, ttl=ttl, reason="ckpt adopt") as lease:
            report = adopt_directory(store, directory, args.pattern, lease, features)
    if args.json:
        print_json({"run": location.run, **report.as_dict()})
    else:
        console = out()
        for file, name in report.adopted:
            console.print(f"adopted  {file} -> {name}")
        for file, reason in report.refused:
            console.print(f"REFUSED  {file}: {reason}", markup=False)
        if not report.adopted:
            for file in report.ignored:  # nothing adopted: say what was skipped, and why
                console.print(
                    f"skipped  {file}: does not match {args.pattern!r} as a whole name", markup=False
                )
        console.print(
            f"{len(report.adopted)} adopted, {len(report.refused)} refused, "
            f"{len(report.ignored)} not matching; the originals were only read"
        )
    # Nothing adopted from a folder that holds files is a problem too (a pattern that matches nothing).
    nothing = not report.adopted and bool(report.ignored or report.refused)
    return ExitCode.PROBLEM if report.refused or nothing else ExitCode.OK


def cmd_release(args: argparse.Namespace) -> int:
    with open_store(locate(args)) as store:
        record = store.release(args.name, reason=args.reason or "released by operator")
    out().print(f"released {record.name} (episode {record.episode}); it verified and is committed again")
    return 0


def _policy(args: argparse.Namespace, config_policy: retention.Policy | None) -> retention.Policy:
    """The flags' policy (--keep-last and what it adds to), else the config's."""
    if args.keep_best and not args.metric:
        raise InvalidArgument("--keep-best", args.keep_best, "needs --metric NAME")
    if args.keep_last is None:
        if config_policy is None:
            raise InvalidArgument(
                "--keep-last",
                None,
                "prune needs a policy: --keep-last N (and optionally --keep-best, "
                "--keep-every) or -c CONFIG with checkpoints.keep_last",
            )
        return config_policy
    try:
        return retention.from_settings(
            args.keep_last, args.keep_best, args.metric, args.mode, args.keep_every
        )
    except InvalidArgument as error:  # the policy's own rule, told under the flag's name
        raise InvalidArgument(f"--{error.parameter.replace('_', '-')}", error.value, error.rule) from None


def cmd_prune(args: argparse.Namespace) -> int:
    location = locate(args)
    config_policy = retention.from_config(location.config.checkpoints) if location.config else None
    with open_store(location, recover=not args.dry_run) as store:
        evicted = store.prune(policy=_policy(args, config_policy), dry_run=args.dry_run)
        kept = [r.name for r in store.checkpoints()]
    if args.json:
        print_json({"run": args.run, "dry_run": args.dry_run, "evicted": evicted, "kept": kept})
    else:
        verb = "would evict" if args.dry_run else "evicted"
        out().print(f"{verb} {len(evicted)}: {', '.join(evicted) or '-'}; kept {len(kept)}")
    return 0


__all__ = ["register"]
