"""``trainguard incident scan [STORE ...]``: what is writing where it should not, and what it left behind;
exit 1 when anything is found."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from trainguard._os.identity import wall_start
from trainguard.cli._common import ArgumentParser, duration_arg, err, out, print_json, registry_url
from trainguard.errors import ExitCode, InvalidArgument
from trainguard.registry import Registry, default_registry_url
from trainguard.supervise import StoreFindings, scan_store, watch_writers


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
    scan.add_argument(
        "-c", "--config", metavar="CONFIG", help="config whose registry to scan (default: guard.yaml)"
    )
    scan.add_argument(
        "--watch",
        metavar="DURATION",
        help="also watch the stores (and the runs' watched folders) this long and name every writer that is "
        "not the run's, however briefly it held its file (fanotify as root; inotify otherwise)",
    )
    scan.add_argument(
        "--watch-dir", action="append", default=[], metavar="DIR", help="another folder to watch"
    )
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
    for name in result.refused_staging:
        console.print(f"  staging of a refused commit (stale writer's evidence): {name}", markup=False)
    for line in result.writers:
        console.print(f"  WRITER: {line}", markup=False)
    for problem in result.problems:
        console.print(f"  {problem}", markup=False)


def _targets(args: argparse.Namespace) -> list[tuple[str, Path | str | None]]:
    """(registry URL, the one store to scan in it - None: every store it records)."""
    targets: list[tuple[str, Path | str | None]] = []
    if args.registry and not args.stores:
        targets.append((args.registry, None))
    for given in args.stores:
        if given.startswith("s3://"):  # its registry is never beside it: --registry or the config names it
            targets.append((args.registry or registry_url(args), given.rstrip("/")))
            continue
        path = Path(given).resolve()
        if not path.is_dir():
            raise InvalidArgument("STORE", given, "is not a directory (or an s3:// store)")
        targets.append((default_registry_url(path), path))
    if not targets:
        # No argument: every store of the registry the config names (-c, $TRAINGUARD_CONFIG, ./guard.yaml).
        targets.append((registry_url(args), None))
    return targets


def cmd_scan(args: argparse.Namespace) -> int:
    targets = _targets(args)
    watch = duration_arg("--watch", args.watch) if args.watch else None
    results, foreign = [], []
    for url, only in targets:
        with Registry.open(url, mode="read") as registry:
            runs = [r for r in registry.runs() if r.store and (only is None or _same_store(r.store, only))]
            results += [scan_store(registry, run) for run in runs]
            if watch is not None:
                extra = [Path(d) for d in args.watch_dir]
                say = lambda line: err().print(line, markup=False)  # noqa: E731
                foreign += watch_writers(registry, runs, extra, watch, say)
    by_run = {r.run: r for r in results}
    for item in foreign:
        if item.run in by_run:
            by_run[item.run].writers.append(item.why)
    unowned = [item.why for item in foreign if item.run not in by_run]
    found = any(r.anything for r in results) or bool(unowned)
    code = ExitCode.PROBLEM if found else ExitCode.OK
    if args.json:
        print_json({"found": found, "stores": [r.as_dict() for r in results], "unowned_writes": unowned})
        return code
    console = out()
    for result in results:
        _print_findings(result)
    for line in unowned:
        console.print(f"  {line}", markup=False)
    if not found:
        console.print("nothing found")
    return code


def _same_store(recorded: str, given: Path | str) -> bool:
    if isinstance(given, str):  # an s3:// URL
        return recorded.rstrip("/") == given
    return not recorded.startswith("s3://") and Path(recorded).resolve() == given


__all__ = ["register"]
