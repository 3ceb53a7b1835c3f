"""``trainguard run [-c CONFIG] [--run NAME] [overrides] -- CMD ...``."""

from __future__ import annotations

import argparse
import resource
import signal
from pathlib import Path
from typing import Any

from trainguard.budget import budget_lines
from trainguard.cli._common import ArgumentParser, duration_arg, err
from trainguard.config import TrainguardConfig, load_config, parse_config
from trainguard.config.units import format_duration, parse_size
from trainguard.errors import InvalidArgument
from trainguard.registry import Registry, RunRecord
from trainguard.supervise import Launcher, LaunchOptions, LaunchResult


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    run = commands.add_parser("run", help="launch a training command under a lease, budget and supervision")
    run.add_argument("-c", "--config", metavar="CONFIG")
    run.add_argument("--run", dest="run_name", metavar="NAME")
    run.add_argument("--store", metavar="DIR|URL", help="store directory or s3://BUCKET/PREFIX")
    run.add_argument("--registry", metavar="URL")
    run.add_argument("--max-episodes", type=int, metavar="N")
    run.add_argument("--max-steps", type=int, metavar="N")
    run.add_argument("--max-runtime", metavar="DURATION")
    run.add_argument("--max-memory", metavar="SIZE")
    run.add_argument("--max-disk", metavar="SIZE")
    run.add_argument(
        "--grace", metavar="DURATION", help="stop signal -> SIGKILL grace (default: watchdog.grace)"
    )
    run.add_argument(
        "--stop-signal",
        default="TERM",
        metavar="SIG",
        help="what a stop sends first: TERM (default), INT (a trainer's KeyboardInterrupt path), HUP...",
    )
    run.add_argument(
        "--watch-pattern",
        metavar="REGEX",
        help=r"charge the budget from the checkpoint files an unmodified trainer writes: the whole name must "
        r"match, e.g. 'checkpoint_ep(?P<episode>\d+)\.pth' or SB3's 'model_(?P<steps>\d+)_steps\.zip'",
    )
    run.add_argument("--watch-dir", metavar="DIR", help="the folder the trainer writes them to (required)")
    run.add_argument(
        "--count",
        choices=("episodes", "steps"),
        help="what the number in a watched name counts (default: the group's name: episode or steps)",
    )
    run.add_argument("--takeover", action="store_true", help="revoke a live holder's lease and take the run")
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
    if args.watch_pattern and not args.watch_dir:
        raise InvalidArgument(
            "--watch-dir",
            None,
            "give the folder the trainer writes its checkpoint files to (with --watch-pattern)",
        )
    stop_signal = _signal_arg(args.stop_signal)
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
        count=args.count,
        stop_signal=stop_signal,
        takeover=args.takeover,
        rlimits=rlimits,
    )


def _signal_arg(value: str) -> int:
    name = value.upper().removeprefix("SIG")
    number = getattr(signal, f"SIG{name}", None)
    if not isinstance(number, int) or name in ("KILL", "STOP"):
        raise InvalidArgument(
            "--stop-signal", value, "must be a signal a trainer can handle: INT, TERM, HUP, USR1..."
        )
    return int(number)


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    config.require_run()
    options = _options(args, config)
    result = Launcher(config, options).launch()
    _summary(config, result)
    return result.exit_code


def _spend_lines(info: RunRecord) -> list[str]:
    """Each cumulative budget that is limited or counted: spent / limit, and how far past it (a stop lands
    at the trainer's next save, so a legacy run overshoots by up to one save interval)."""
    lines = []
    for line in budget_lines(info):
        if line.spent is None or (line.limit is None and not line.spent):
            continue
        runtime = line.budget.value == "runtime"
        shown = format_duration if runtime else (lambda v: f"{v:.0f}")
        limit = shown(line.limit) if line.limit is not None else "no limit"
        over = line.spent - line.limit if line.limit is not None else 0
        note = f" ({shown(over)} past the budget)" if over > 0 and not runtime else ""
        lines.append(f"  {line.budget.value} {shown(line.spent)} / {limit}{note}")
    return lines


def _summary(config: TrainguardConfig, result: LaunchResult) -> None:
    run = config.require_run()
    with Registry.open(config.registry_url(), mode="read") as registry:
        info = registry.run_info(run)
        states = [r.state.value for r in registry.checkpoints(run, states=None)]
        committed = registry.checkpoints(run)
        live = registry.live_pointer(run)
    console = err()
    who = _WHO.get(result.stopped_by or "", result.stopped_by)
    ended = f"stopped ({result.reason}) by {who}" if result.stop is not None else result.reason
    console.print(
        f"[bold]trainguard run {run}[/]: {ended} (exit {result.exit_code}); the child "
        f"{result.child_end or 'did not start'}",
        highlight=False,
    )
    for line in _spend_lines(info) if info is not None else []:
        console.print(line, highlight=False)
    if result.episodes_seen is not None:
        console.print(f"  newest watched checkpoint file: count {result.episodes_seen}")
    # Every checkpoint the run ever committed, and where each is now (retention evicts, incidents quarantine).
    counts = ", ".join(f"{states.count(s)} {_NOW.get(s, s)}" for s in sorted(set(states))) or "none"
    last = committed[-1].name if committed else "-"
    console.print(
        f"  checkpoints committed {len(states)} ({counts}), last kept {last}, live {live or '-'}",
        highlight=False,
    )
    if result.ladder is not None:
        ladder = result.ladder
        console.print(
            f"  stopped with {', '.join(dict.fromkeys(s for _, s in ladder.signals)) or 'no signal'}; "
            f"killed {len(ladder.killed)}, survivors {len(ladder.survivors)}"
        )


_NOW = {"committed": "kept", "evicted": "evicted by retention", "quarantined": "quarantined"}
_WHO = {
    "launcher": "trainguard run",
    "guard": "the Guard in the child",
    "watchdog": "the watchdog",
    "operator": "an operator (trainguard stop)",
}


__all__ = ["register"]
