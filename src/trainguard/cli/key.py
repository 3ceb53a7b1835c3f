"""``trainguard key init PATH``: an Ed25519 key pair for signed manifests (``PATH`` private, mode 0600;
``PATH.pub`` public). Keep the private key outside every store: whoever can write a store must not be able
to read it (see SECURITY.md)."""

from __future__ import annotations

import argparse

from trainguard.checkpoints import generate_key
from trainguard.checkpoints.signing import VerifyKey
from trainguard.cli._common import ArgumentParser, out, print_json


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    key = commands.add_parser("key", help="make the key pair that signs checkpoint manifests")
    sub = key.add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    init = sub.add_parser("init", help="write a new Ed25519 key pair (never overwrites one)")
    init.add_argument("path", metavar="PATH", help="the private key's file; the public key goes to PATH.pub")
    init.add_argument("--json", action="store_true", help="machine-readable output (see docs/cli-json.md)")
    init.set_defaults(handler=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    private, public = generate_key(args.path)
    key_id = VerifyKey.load(public).key_id
    if args.json:
        print_json({"key": str(private), "public_key": str(public), "key_id": key_id})
        return 0
    console = out()
    console.print(f"private key  {private}  (mode 600: keep it outside every store)")
    console.print(f"public key   {public}  (key id {key_id})")
    snippet = f"signing: {{key: {private}, public_key: {public}, required: true}}"
    console.print(f"config:      {snippet}", markup=False)
    return 0


__all__ = ["register"]
