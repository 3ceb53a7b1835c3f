"""``trainguard incident scan [STORE ...]``: what is writing where it should not, and what it left behind;
exit 1 when anything is found."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from trainguard._os.identity import wall_start
from trainguard.cli._common import ArgumentParser, out, print_json
from trainguard.errors import ExitCode, InvalidArgument
from trainguard.registry import Registry, default_registry_url
from trainguard.supervise import StoreFindings, scan_store


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    incident = commands.add_parser("incident", help="find what is writing where it should not")
    sub = incident.add_subparsers(dest="incident_command", required=True, metavar="COMMAND")
    scan = sub.add_parser(
        "scan", help="rogue writers, unregistered checkpoints; exit 1 when anything is found"
    )
    scan.add_argument(
        "stores", nargs="*", metavar="STORE", help="store directories (default: every store in the registry)"
    )
    scan.add_argument("--registry", metavar="URL")
    scan.add_argument("--json", action="store_true")
    scan.set_defaults(handler=cmd_scan)


def _print_findings(result: StoreFindings) -> None:
    console = out()
    console.print(
        f"[bold]{result.run}[/] {result.store}: {len(result.suspects)} suspect process(es), "
        f"{len(result.unregistered)} unregistered dir(s), {result.fenced_attempts} fenced commit "
        "attempt(s) in the last hour"
    )
    for suspect in result.suspects:
        e = suspect.evidence
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall_start(e.start_ticks)))
        kind = "WRITER" if suspect.killable else "cwd only"
        console.print(f"  pid {e.pid} started {started} {kind}: {suspect.why}", markup=False)
        console.print(f"    command: {' '.join(e.cmdline)}", markup=False)
        console.print(
            f"    parents: {' <- '.join(e.parents) or '-'}; cgroup: {e.cgroup or '-'}", markup=False
        )
        for path in e.files[:10]:
            console.print(f"    open: {path}", markup=False)
        if e.cwd:
            console.print(f"    cwd: {e.cwd}", markup=False)
    for name in result.unregistered:
        console.print(f"  unregistered directory (no committed row): {name}", markup=False)
    for name in result.dead_staging:
        console.print(f"  staging left by a dead writer: {name}", markup=False)
    for problem in result.problems:
        console.print(f"  {problem}", markup=False)


def cmd_scan(args: argparse.Namespace) -> int:
    targets: list[tuple[str, Path | None]] = []
    if args.registry:
        targets.append((args.registry, None))
    for given in args.stores:
        path = Path(given).resolve()
        if not path.is_dir():
            raise InvalidArgument("STORE", given, "is not a directory")
        targets.append((default_registry_url(path), path))
    if not targets:
        raise InvalidArgument("STORE", None, "give one or more store directories or --registry URL")
    results = []
    for url, only in targets:
        with Registry.open(url, mode="read") as registry:
            for run in registry.runs():
                if run.store and (only is None or Path(run.store).resolve() == only):
                    results.append(scan_store(registry, run))
    found = any(r.anything for r in results)
    code = ExitCode.PROBLEM if found else ExitCode.OK
    if args.json:
        print_json({"found": found, "stores": [r.as_dict() for r in results]})
        return code
    console = out()
    for result in results:
        _print_findings(result)
    if not found:
        console.print("nothing found")
    return code


__all__ = ["register"]
