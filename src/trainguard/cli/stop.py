"""``trainguard stop RUN --reason TEXT``: revoke the run's lease, then stop the processes the registry records
for it - each verified by pid and start time, nothing else."""

from __future__ import annotations

import argparse

from trainguard._os.identity import host_key, is_same_process_alive
from trainguard.cli._common import (
    ArgumentParser,
    add_location_args,
    duration_arg,
    out,
    reason_arg,
    registry_url,
)
from trainguard.errors import ExitCode
from trainguard.names import store_directory, validate_name
from trainguard.registry import EventKind, ProcessRole, Registry
from trainguard.supervise import LadderResult, Membership, Target, run_ladder


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    stop = commands.add_parser("stop", help="revoke a run's lease, then stop its registered processes")
    add_location_args(stop)
    stop.add_argument("--grace", default="30s", metavar="DURATION")
    reason_arg(stop, required=True)
    stop.set_defaults(handler=cmd_stop)


def cmd_stop(args: argparse.Namespace) -> int:
    run = validate_name(args.run, "run")
    grace = duration_arg("--grace", args.grace)
    with Registry.open(registry_url(args), mode="existing") as registry:
        record = registry.run(run)  # an unknown run is an error, not "nothing to stop"
        lease = registry.lease_info(run)
        # Revoke first: from this moment nothing the run writes can be committed, whatever the signals do.
        revoked = registry.revoke(run, f"trainguard stop: {args.reason}")
        token = lease.token if lease is not None else None
        # Only processes the registry records for this run's lease, verified by pid *and* start time.
        targets = (
            [
                Target(p.pid, p.start_ticks, p.role, p.uid)
                for p in registry.processes(run, token=token)
                if p.host_key == host_key()
            ]
            if token is not None
            else []
        )
        # Rows say which processes; the kernel says whether they are the run's (uid, marker, cgroup, files).
        store = store_directory(record.store) if record.store else None
        membership = Membership(run, store, registry.registry_id)
        result = _stop_in_order(targets, grace, membership) if targets else None
        registry.add_event(
            run,
            EventKind.STOPPED_BY_OPERATOR,
            token=token,
            reason=args.reason,
            detail={"ladder": result.as_dict() if result else None, "revoked": revoked is not None},
        )
    console = out()
    console.print(f"run {run}: lease {'revoked (token ' + str(token) + ')' if revoked else 'was not held'}")
    if result is None:
        console.print("  no registered process of the run is alive on this host")
    else:
        console.print(
            f"  signals: {', '.join(f'{pid} {sig}' for pid, sig in result.signals) or '-'}; "
            f"survivors: {result.survivors or 'none'}"
        )
        for pid, why in result.skipped:
            console.print(f"  not signalled: pid {pid}: {why}")
    return ExitCode.PROBLEM if result is not None and result.survivors else ExitCode.OK


def _stop_in_order(targets: list[Target], grace: float, membership: Membership) -> LadderResult:
    """Each process once (a Guard is registered as the launcher's child and as a guard: one pid, two
    rows). With a launcher alive, it alone is signalled first: it forwards the stop to its child's group,
    and a trainer signalled twice takes the second signal as "stop at once" and skips its final save. What
    is still alive after the launcher's ladder gets its own."""
    unique = list({(t.pid, t.start_ticks): t for t in targets}.values())
    launchers = [t for t in unique if t.role == ProcessRole.LAUNCHER.value]
    # The launcher alone (not its tree): its own ladder stops the child with the run's stop signal and grace.
    first = run_ladder(launchers or unique, grace=grace, allow=membership.refusal, descendants=not launchers)
    rest = [
        t for t in unique if launchers and t not in launchers and is_same_process_alive(t.pid, t.start_ticks)
    ]
    if not rest:
        return first
    second = run_ladder(rest, grace=grace, allow=membership.refusal)
    return LadderResult(
        signals=first.signals + second.signals,
        skipped=first.skipped + second.skipped,
        exited_after_term=first.exited_after_term + second.exited_after_term,
        killed=first.killed + second.killed,
        survivors=first.survivors + second.survivors,
        first_signal_at=first.first_signal_at,
    )


__all__ = ["register"]
