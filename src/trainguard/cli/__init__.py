"""The ``trainguard`` command line: one module per command group, named after the command.

Exit codes (:class:`trainguard.errors.ExitCode`): 0 ok, 1 a check found a problem, 2 bad usage, config or
input, 3 refused by a guard rule (lease, budget, fence). Every error is one line - what, which value,
which rule - and never a traceback (``TRAINGUARD_DEBUG=1`` shows one for an internal error).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from trainguard import __version__
from trainguard.cli import (
    budget,
    ckpt,
    config,
    incident,
    key,
    promote,
    ps,
    recover,
    registry,
    report,
    rollback,
    run,
    status,
    stop,
    watchdog,
)
from trainguard.cli._common import OPENED, ArgumentParser, costs_line, err
from trainguard.cli._errors import describe
from trainguard.errors import ExitCode, TrainguardError

# In the order `trainguard --help` lists them.
COMMANDS = (
    run,
    status,
    ps,
    stop,
    watchdog,
    incident,
    budget,
    ckpt,
    promote,
    rollback,
    recover,
    config,
    key,
    registry,
    report,
)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="trainguard", description="Keeps long-running training under control.")
    parser.add_argument("--version", action="version", version=f"trainguard {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=ArgumentParser
    )
    for command in COMMANDS:
        command.register(commands)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """argparse cannot take an optional positional *after* options (``promote RUN -c CONFIG CKPT``,
    bpo-15112); such leftovers go to the command's trailing CKPT argument(s), anything else is an error."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and not any(e.startswith("-") for e in extras):
        if getattr(args, "name", False) is None and len(extras) == 1:
            args.name, extras = extras[0], []
        elif isinstance(getattr(args, "names", None), list):
            args.names, extras = [*args.names, *extras], []
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return _run(args)
    finally:
        if (line := costs_line()) is not None:
            err().print(f"trainguard: {line}", markup=False)
        OPENED.clear()


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.handler(args))
    except TrainguardError as error:
        err().print(f"trainguard: {describe(error)}", markup=False)
        return int(error.exit_code)
    except KeyboardInterrupt:
        err().print("trainguard: interrupted")
        return 130
    except Exception as error:
        if os.environ.get("TRAINGUARD_DEBUG"):
            raise
        err().print(
            f"trainguard: internal error: {type(error).__name__}: {error} "
            "(set TRAINGUARD_DEBUG=1 for a traceback)",
            markup=False,
        )
        return int(ExitCode.PROBLEM)


if __name__ == "__main__":
    sys.exit(main())
