"""``trainguard config check FILE``."""

from __future__ import annotations

import argparse
import warnings

from trainguard import fingerprint as fp
from trainguard.checkpoints import signing_of
from trainguard.cli._common import ArgumentParser, out, print_json
from trainguard.config import load_config
from trainguard.config.units import format_duration, format_size
from trainguard.promotion import load_evaluator


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    config = commands.add_parser("config", help="check a config file")
    sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    check = sub.add_parser("check", help="validate a config (native or the incident report's training.yaml)")
    check.add_argument("file", metavar="FILE")
    check.add_argument("--strict", action="store_true", help="unknown keys are errors, not warnings")
    check.add_argument("--json", action="store_true", help="print the effective config as JSON")
    check.set_defaults(handler=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_config(args.file, strict=args.strict)
    # What the run would only find out at start: the feature files exist and parse, the evaluator imports,
    # the signing keys load (each raises a ConfigError naming the key).
    fp.compute(config.features, base=config.source.parent if config.source else None)
    load_evaluator(config.gates.evaluator)
    signing_of(config)
    problems = [str(w.message) for w in caught]
    if args.json:
        print_json(
            {
                "ok": True,
                "file": args.file,
                "warnings": problems,
                "config": config.model_dump(mode="json", by_alias=True),
            }
        )
        return 0
    console = out()
    for problem in problems:
        console.print(f"warning: {problem}")
    limits = config.limits
    console.print(f"ok: {args.file}")
    console.print(f"  run          {config.run or '(not set; give --run)'}")
    console.print(
        f"  store        {config.store_path() if config.run or config.store else '(derived from run)'}"
    )
    console.print(f"  episodes     {limits.max_episodes or 'no limit'}")
    console.print(
        f"  runtime      {format_duration(limits.max_runtime) if limits.max_runtime else 'no limit'}"
    )
    console.print(f"  memory       {format_size(limits.max_memory) if limits.max_memory else 'no limit'}")
    console.print(f"  disk         {format_size(limits.max_disk) if limits.max_disk else 'no limit'}")
    console.print(
        f"  heartbeat    every {format_duration(config.monitoring.heartbeat_interval)}, "
        f"lease ttl {format_duration(config.monitoring.lease_ttl)}"
    )
    console.print(
        f"  checkpoints  every {config.checkpoints.every_episodes} episodes, keep last "
        f"{config.checkpoints.keep_last}, format {config.checkpoints.format}"
    )
    return 0


__all__ = ["register"]
