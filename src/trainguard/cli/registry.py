"""``trainguard registry rebuild --store DIR --public-key PATH --reason TEXT``: restore a lost registry from
the store's signed manifests (see ``trainguard.checkpoints.rebuild``). It fills only an empty registry (the
store's default one, or ``--registry URL``) and then binds the store to it."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainguard.checkpoints import Signing, signing_of
from trainguard.checkpoints.rebuild import rebuild_registry
from trainguard.cli._common import ArgumentParser, out, print_json, reason_arg
from trainguard.config import load_config
from trainguard.errors import ExitCode, InvalidArgument
from trainguard.registry import Registry, default_registry_url


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    registry = commands.add_parser("registry", help="rebuild a lost registry from a store's signed manifests")
    sub = registry.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")
    rebuild = sub.add_parser(
        "rebuild", help="restore the store's runs into an empty registry from its signed, verified manifests"
    )
    rebuild.add_argument("--store", required=True, metavar="DIR", help="the store whose registry was lost")
    rebuild.add_argument("--registry", metavar="URL", help="the empty registry (default: the store's own)")
    rebuild.add_argument("-c", "--config", metavar="FILE", help="a config naming the key (signing:)")
    rebuild.add_argument("--public-key", metavar="PATH", help="the public key the manifests were signed with")
    reason_arg(rebuild, required=True)
    rebuild.add_argument("--json", action="store_true", help="machine-readable output (see docs/cli-json.md)")
    rebuild.set_defaults(handler=cmd_rebuild)


def cmd_rebuild(args: argparse.Namespace) -> int:
    store = Path(args.store).resolve()
    if not store.is_dir():
        raise InvalidArgument("--store", args.store, "is not a directory")
    config = load_config(args.config) if args.config else None
    signing = Signing.from_paths(public_key=args.public_key) if args.public_key else signing_of(config)
    if signing.verifier is None:
        raise InvalidArgument("--public-key", None, "a rebuild trusts only signed manifests: give the key")
    configured = config.registry if config is not None else None
    url = args.registry or configured or default_registry_url(store)
    with Registry.open(url) as registry:
        report = rebuild_registry(store, registry, signing, reason=args.reason)
    if args.json:
        print_json(report.as_dict())
    else:
        console = out()
        for run, names in report.restored.items():
            console.print(f"restored run {run}: {len(names)} checkpoints", markup=False)
        for directory, why in report.skipped:
            console.print(f"skipped {directory}: {why}", markup=False)
        console.print(
            f"store {store} is now bound to registry {report.registry_id}; the live pointer, pins and "
            "the event history were not restorable (promote again)",
            markup=False,
        )
    return ExitCode.OK if report.restored else ExitCode.PROBLEM


__all__ = ["register"]
