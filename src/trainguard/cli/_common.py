"""What every CLI command shares: argument parsing that fails in one line, output, opening a run's store."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

from trainguard._os import environment
from trainguard.checkpoints import CheckpointStore
from trainguard.checkpoints.signing import signing_of
from trainguard.config import TrainguardConfig, load_config
from trainguard.config.units import parse_duration
from trainguard.errors import InvalidArgument
from trainguard.names import URL_SCHEME, validate_name
from trainguard.registry import Registry, default_registry_url

JSON_VERSION = 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad usage in one line (what, which value, which rule) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def out() -> Console:
    # Piped output (logs, CI) gets wide tables instead of rich's 80-column default that truncates names.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(
        json.dumps({"version": JSON_VERSION, **payload}, indent=2, sort_keys=True, default=str) + "\n"
    )


def table(*columns: str, title: str | None = None) -> Table:
    result = Table(title=title, show_edge=False, header_style="bold")
    for column in columns:
        result.add_column(column)
    return result


def add_registry_args(parser: argparse.ArgumentParser, *, json_flag: bool = False) -> None:
    parser.add_argument("-c", "--config", metavar="CONFIG", help="config file (gives store and registry)")
    parser.add_argument(
        "--store", metavar="DIR|URL", help="store directory (and its default registry) or s3://BUCKET/PREFIX"
    )
    parser.add_argument("--registry", metavar="URL", help="registry URL (sqlite:///PATH or postgresql://...)")
    if json_flag:
        parser.add_argument(
            "--json", action="store_true", help="machine-readable output (see docs/cli-json.md)"
        )


def add_location_args(parser: argparse.ArgumentParser, *, json_flag: bool = False) -> None:
    """RUN plus where to find it (the registry arguments)."""
    parser.add_argument("run", metavar="RUN", help="run name")
    add_registry_args(parser, json_flag=json_flag)


def _registry_url(args: argparse.Namespace, config: TrainguardConfig | None) -> str | None:
    """One precedence for every command: --registry, then the config's registry, then the default registry
    of the store (--store, else the config's store)."""
    if getattr(args, "registry", None):
        return str(args.registry)
    if config is not None and config.registry:
        return config.registry
    if getattr(args, "store", None):
        return default_registry_url(args.store if URL_SCHEME.match(args.store) else Path(args.store))
    return config.registry_url() if config is not None else None


DEFAULT_CONFIG = "guard.yaml"


def config_path(args: argparse.Namespace) -> str | None:
    """The config a command uses: -c, else $TRAINGUARD_CONFIG, else ./guard.yaml when it exists - but only
    when nothing else says where the registry is (--registry, --store)."""
    if getattr(args, "config", None):
        return str(args.config)
    if getattr(args, "registry", None) or getattr(args, "store", None):
        return None
    from_env = os.environ.get(environment.CONFIG)
    if from_env:
        return from_env
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None


def registry_url(args: argparse.Namespace) -> str:
    path = config_path(args)
    config = load_config(path) if path else None
    url = _registry_url(args, config)
    if url is None:
        raise InvalidArgument(
            "--registry",
            None,
            f"give --registry URL, --store DIR or -c CONFIG (or run where {DEFAULT_CONFIG} is)",
        )
    return url


@dataclass
class Location:
    run: str
    store: Path | str  # a str is an s3:// URL
    registry_url: str
    config: TrainguardConfig | None


def locate(args: argparse.Namespace) -> Location:
    """Resolve run, store and registry; the store comes from --store, the config, or the registry's record
    of the run."""
    run = validate_name(args.run, "run")
    path = config_path(args)
    config = load_config(path, overrides={"run": run}) if path else None
    store: Path | str | None = None
    if args.store and URL_SCHEME.match(args.store):  # Path() would turn it into a local "s3:/..." directory
        if not args.store.startswith("s3://"):
            rule = "a store is a directory or an s3://BUCKET[/PREFIX] URL"
            raise InvalidArgument("--store", args.store, rule)
        store = args.store
    elif args.store:
        store = Path(args.store)
    elif config:
        store = config.store_path()
    url = _registry_url(args, config)
    if url is None:
        raise InvalidArgument(
            "--store", None, "give --store DIR, --registry URL or -c CONFIG to find the run"
        )
    if store is None:
        with Registry.open(url, mode="read") as registry:
            recorded = registry.run(run).store
        if not recorded:
            raise InvalidArgument(
                "--store", None, f"the registry records no store for run {run!r}; give --store"
            )
        store = recorded if URL_SCHEME.match(recorded) else Path(recorded)
    return Location(run, store.resolve() if isinstance(store, Path) else store, url, config)


def open_store(location: Location, *, recover: bool = False, read_only: bool = False) -> CheckpointStore:
    """Open an existing run's store; never creates a run (a typo must not start a new lineage).
    ``read_only``: for commands that only look - nothing is written, a read-only store works."""
    fmt = location.config.checkpoints.format if location.config else "safetensors"
    store = CheckpointStore.open_existing(
        location.store,
        run=location.run,
        registry=location.registry_url,
        format=fmt,
        recover=recover,
        read_only=read_only,
        signing=signing_of(location.config),
    )
    OPENED.append(store)
    return store


OPENED: list[CheckpointStore] = []  # this command's stores: an object store's costs are shown at exit


def costs_line() -> str | None:
    """What this command cost on object storage, in the units providers bill (None: no object store)."""
    costs = [s.costs for s in OPENED if s.costs is not None]
    if not costs:
        return None
    by_operation: dict[str, int] = {}
    for c in costs:
        for operation, count in c.requests.items():
            by_operation[operation] = by_operation.get(operation, 0) + count
    detail = ", ".join(f"{op} {n}" for op, n in sorted(by_operation.items()))
    sent, received = sum(c.bytes_sent for c in costs), sum(c.bytes_received for c in costs)
    return (
        f"object storage: {sum(by_operation.values())} requests ({detail}); "
        f"{received} bytes received, {sent} bytes sent"
    )


def human_time(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    from datetime import datetime

    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def metrics_text(metrics: dict[str, Any], limit: int = 3) -> str:
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(metrics.items())[:limit]]
    return " ".join(parts) + (" ..." if len(metrics) > limit else "")


def duration_arg(flag: str, value: str) -> float:
    """A duration flag's value in seconds (``30s``, ``5m``); bad input is one line naming the flag."""
    try:
        return parse_duration(value)
    except InvalidArgument as error:
        raise InvalidArgument(flag, value, error.rule) from None


def reason_arg(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--reason", required=required, metavar="TEXT", help="recorded in the audit log")


__all__ = [
    "ArgumentParser",
    "Location",
    "add_location_args",
    "add_registry_args",
    "duration_arg",
    "err",
    "human_time",
    "locate",
    "metrics_text",
    "open_store",
    "out",
    "print_json",
    "reason_arg",
    "registry_url",
    "table",
]
