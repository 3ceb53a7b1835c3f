"""``trainguard run [-c CONFIG] [--run NAME] [overrides] -- CMD ...``."""

from __future__ import annotations

import argparse
import resource
from pathlib import Path
from typing import Any

from trainguard.cli._common import ArgumentParser, duration_arg, err
from trainguard.config import TrainguardConfig, load_config, parse_config
from trainguard.config.units import format_duration, parse_size
from trainguard.errors import InvalidArgument
from trainguard.registry import Registry
from trainguard.supervise import Launcher, LaunchOptions, LaunchResult


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    run = commands.add_parser("run", help="launch a training command under a lease, budget and supervision")
    run.add_argument("-c", "--config", metavar="CONFIG")
    run.add_argument("--run", dest="run_name", metavar="NAME")
    run.add_argument("--store", metavar="DIR")
    run.add_argument("--registry", metavar="URL")
    run.add_argument("--max-episodes", type=int, metavar="N")
    run.add_argument("--max-steps", type=int, metavar="N")
    run.add_argument("--max-runtime", metavar="DURATION")
    run.add_argument("--max-memory", metavar="SIZE")
    run.add_argument("--max-disk", metavar="SIZE")
    run.add_argument("--grace", metavar="DURATION", help="SIGTERM -> SIGKILL grace (default: watchdog.grace)")
    run.add_argument(
        "--watch-pattern",
        metavar="REGEX",
        help=r"count episodes from files a legacy script writes, e.g. 'checkpoint_ep(?P<episode>\d+)\.pth'",
    )
    run.add_argument("--watch-dir", metavar="DIR", help="where those files appear (default: the store)")
    run.add_argument("--rlimit-as", metavar="SIZE", help="address-space limit for the child")
    run.add_argument("--rlimit-nofile", type=int, metavar="N")
    run.add_argument("--no-progress", action="store_true", help="no live status line, even on a terminal")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    run.set_defaults(handler=cmd_run)


def _config(args: argparse.Namespace) -> TrainguardConfig:
    overrides: dict[str, Any] = {
        "run": args.run_name,
        "store": args.store,
        "registry": args.registry,
        "limits.max_episodes": args.max_episodes,
        "limits.max_steps": args.max_steps,
        "limits.max_runtime": args.max_runtime,
        "limits.max_memory": args.max_memory,
        "limits.max_disk": args.max_disk,
    }
    if args.config:
        return load_config(args.config, overrides=overrides)
    config, _ = parse_config({}, overrides=overrides, strict=True)
    return config


def _options(args: argparse.Namespace, config: TrainguardConfig) -> LaunchOptions:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise InvalidArgument(
            "command",
            None,
            "give the training command after --, e.g. trainguard run -c g.yaml -- python train.py",
        )
    grace = duration_arg("--grace", args.grace) if args.grace else config.watchdog.grace
    rlimits = {}
    if args.rlimit_as:
        try:
            rlimits[resource.RLIMIT_AS] = parse_size(args.rlimit_as)
        except InvalidArgument as error:
            raise InvalidArgument("--rlimit-as", args.rlimit_as, error.rule) from None
    if args.rlimit_nofile is not None:
        rlimits[resource.RLIMIT_NOFILE] = args.rlimit_nofile
    for (flag, value), limit in zip(
        (("--rlimit-as", args.rlimit_as), ("--rlimit-nofile", args.rlimit_nofile)),
        (resource.RLIMIT_AS, resource.RLIMIT_NOFILE),
        strict=True,
    ):
        # Checked here: in the child (preexec) a refused setrlimit is an opaque SubprocessError.
        hard = resource.getrlimit(limit)[1]
        wanted = rlimits.get(limit)
        if wanted is not None and not (wanted >= 0 and (hard == resource.RLIM_INFINITY or wanted <= hard)):
            ceiling = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
            raise InvalidArgument(flag, value, f"must be between 0 and the hard limit ({ceiling})")
    return LaunchOptions(
        progress=False if args.no_progress else None,
        command=command,
        grace=grace,
        watch_pattern=args.watch_pattern,
        watch_dir=Path(args.watch_dir).resolve() if args.watch_dir else None,
        rlimits=rlimits,
    )


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    config.require_run()
    options = _options(args, config)
    result = Launcher(config, options).launch()
    _summary(config, result)
    return result.exit_code


def _summary(config: TrainguardConfig, result: LaunchResult) -> None:
    run = config.require_run()
    url = config.registry_url()
    with Registry.open(url) as registry:
        info = registry.run_info(run)
        committed = registry.checkpoints(run)
        live = registry.live_pointer(run)
    console = err()
    limits = info.limits if info else {}
    console.print(
        f"[bold]trainguard run {run}[/]: {result.reason} (exit {result.exit_code}, "
        f"child status {result.child_status})"
    )
    if info is not None:
        episodes = f"{info.episodes_spent} / {limits.get('max_episodes', 'no limit')}"
        runtime = (
            format_duration(info.runtime_spent)
            + " / "
            + (format_duration(limits["max_runtime"]) if "max_runtime" in limits else "no limit")
        )
        console.print(f"  episodes {episodes}   runtime {runtime}")
    if result.episodes_seen is not None:
        console.print(f"  newest watched checkpoint file: episode {result.episodes_seen}")
    last = committed[-1].name if committed else "-"
    console.print(f"  checkpoints committed {len(committed)}, last {last}, live {live or '-'}")
    if result.ladder is not None:
        ladder = result.ladder
        console.print(
            f"  stopped with {', '.join(sorted({s for _, s in ladder.signals})) or 'no signal'}; "
            f"killed {len(ladder.killed)}, survivors {len(ladder.survivors)}"
        )


__all__ = ["register"]
