"""``trainguard config check FILE``."""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable

from trainguard import fingerprint as fp
from trainguard._os import environment
from trainguard.checkpoints import signing_of
from trainguard.cli._common import ArgumentParser, out, print_json
from trainguard.config import TrainguardConfig, load_config
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
    how = config.translation
    if args.json:
        print_json(
            {
                "ok": True,
                "file": args.file,
                "warnings": problems,
                "config": config.model_dump(mode="json", by_alias=True),
                # Each original key once: translated (to its native key), honoured (a failsafe) or not
                # enforced (with why).
                "translated": how.translated,
                "failsafes_honoured": how.honoured,
                "not_enforced": how.not_enforced,
            }
        )
        return 0
    console = out()
    for problem in problems:
        console.print(f"warning: {problem}", markup=False)
    console.print(f"ok: {args.file}", markup=False)
    for name, value in _effective_lines(config):
        console.print(f"  {name:<15}{value}", markup=False)
    sections = (
        ("translated (enforced with this meaning)", [f"{k} -> {v}" for k, v in how.translated.items()]),
        ("failsafes honoured", [f"{k}: {v}" for k, v in how.honoured.items()]),
        ("not enforced by trainguard", [f"{k}: {v}" for k, v in how.not_enforced.items()]),
    )
    for title, lines in sections:
        if lines:
            console.print(f"  {title}:", markup=False)
            for line in lines:
                console.print(f"    {line}", markup=False)
    return 0


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _limit(value: float | None, shown: Callable[[float], str] = _count) -> str:
    return shown(value) if value is not None else "no limit"


def _effective_lines(config: TrainguardConfig) -> list[tuple[str, str]]:
    """What the run is held to, one line per concern, in the units people write."""
    limits, monitoring, watchdog = config.limits, config.monitoring, config.watchdog
    cpu = (
        f"{limits.max_cpu_percent:g}% of one core, sustained over {format_duration(limits.cpu_window)}"
        if limits.max_cpu_percent
        else "no limit"
    )
    warnings = [f"{limits.warn_at:.0%} of each budget"]
    if limits.warn_memory:
        warnings.append(f"memory {format_size(limits.warn_memory)}")
    if limits.warn_runtime:
        warnings.append(f"runtime {format_duration(limits.warn_runtime)}")
    if limits.warn_episodes:
        warnings.append(f"episode {limits.warn_episodes}")
    metric = config.checkpoints.best_metric
    patience = limits.max_episodes_without_improvement
    stall = (
        f"stop after {patience} episodes without the best {metric.name if metric else 'reward'} improving "
        f"by more than {limits.min_improvement:g}"
        if patience
        else "off"
    )
    webhook = config.notifications.webhook or os.environ.get(environment.WEBHOOK_URL)
    notify = (
        f"webhook for {', '.join(config.notifications.events)}"
        if webhook and config.notifications.events
        else "off"
    )
    return [
        ("run", config.run or "(not set; give --run)"),
        ("store", str(config.store_path()) if config.run or config.store else "(derived from run)"),
        ("episodes", _limit(limits.max_episodes)),
        ("steps", _limit(limits.max_steps)),
        ("runtime", _limit(limits.max_runtime, format_duration)),
        ("memory", _limit(limits.max_memory, format_size)),
        ("cpu", cpu),
        ("disk", _limit(limits.max_disk, format_size)),
        ("warnings", "; ".join(warnings)),
        ("no improvement", stall),
        (
            "heartbeat",
            f"every {format_duration(monitoring.heartbeat_interval)}, "
            f"lease ttl {format_duration(monitoring.lease_ttl)}",
        ),
        (
            "watchdog",
            f"every {format_duration(watchdog.interval)}, grace {format_duration(watchdog.grace)}, "
            f"rogue writers: {watchdog.rogue_action}",
        ),
        (
            "checkpoints",
            f"every {config.checkpoints.every_episodes} episodes, keep last {config.checkpoints.keep_last}, "
            f"format {config.checkpoints.format}",
        ),
        ("notifications", notify),
        ("evaluator", config.gates.evaluator or "none (promote needs gates.evaluator to measure decisions)"),
    ]


__all__ = ["register"]
