"""The multi-host drill (issue 13): two hosts as network namespaces, a registry on PostgreSQL, a partition.

    python stress/hosts_drill.py            (root: it creates namespaces, veth links and its own server)

1. A PostgreSQL server of its own (``initdb`` + ``pg_ctl`` under a temp dir, its own port) listens on the
   host side of two veth links; host A and host B are network namespaces at the other ends. The store is a
   directory both see (as an NFS mount would be).
2. Host A trains under a Guard (lease ttl ``TTL``, heartbeat ``BEAT``), committing every few episodes.
3. A is partitioned from the registry (its link goes down: packets vanish, nothing is refused).
4. An operator on host B takes the run over (``trainguard run --takeover``) and training continues there,
   resuming from the newest committed checkpoint.
5. The partition heals; a zombie on A that still holds A's token (a writer that never heard it lost the
   lease) tries to commit.
6. Measured: commits accepted from A after the takeover, how long A took to stop itself after it lost the
   registry, checkpoints lost (every commit either side saw acknowledged must be in the registry and
   verify), and whether B's commits went on without a gap.

The machine's own PostgreSQL server is never touched. Everything started is stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from pg_server import private_postgres

TTL = 6.0  # the lease's ttl (seconds)
BEAT = 2.0  # heartbeat interval (not below the registry connection's own timeouts, 2 s)
EVERY = 4  # checkpoint cadence (episodes)
EPISODE = 0.05  # seconds of "training" per episode
B_EPISODES = 160  # B's run ends by its episode budget here
RUN = "drill"


# -- the hosts and the server --------------------------------------------------------------------------


def _sh(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=60)


@contextmanager
def host(name: str, subnet: int) -> Iterator[dict[str, str]]:
    """A network namespace joined to this one by a veth link: 10.213.<subnet>.1 here, .2 there."""
    suffix = secrets.token_hex(2)
    ns, outside, inside = f"tgdrill-{name}-{suffix}", f"tgd{name}{suffix}", f"tgd{name}{suffix}i"
    _sh("ip", "netns", "add", ns)
    try:
        _sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        _sh("ip", "link", "set", inside, "netns", ns)
        _sh("ip", "addr", "add", f"10.213.{subnet}.1/30", "dev", outside)
        _sh("ip", "link", "set", outside, "up")
        _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.213.{subnet}.2/30", "dev", inside)
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield {"ns": ns, "link": inside, "server": f"10.213.{subnet}.1"}
    finally:
        _sh("ip", "link", "del", outside, check=False)  # takes its peer with it
        _sh("ip", "netns", "del", ns, check=False)


@contextmanager
def registry_server(addresses: list[str]) -> Iterator[int]:
    """A PostgreSQL server of this drill's own on ``addresses`` (trusting the links' network); its port."""
    with private_postgres(listen=addresses, trust=["10.213.0.0/16"]) as server:
        yield server.port


# -- what runs on the hosts ----------------------------------------------------------------------------


def _log(path: Path, **entry: Any) -> None:
    with path.open("a") as sink:
        sink.write(json.dumps({"t": time.monotonic(), **entry}) + "\n")  # CLOCK_MONOTONIC: one per machine


def trainer(log: Path) -> int:
    """A guarded training loop (config from $TRAINGUARD_CONFIG). Logs every acknowledged commit."""
    import torch

    from trainguard import Guard
    from trainguard.errors import TrainguardError

    with Guard.from_config() as guard:
        loaded = guard.resume()
        state = {"w": loaded.state["w"].clone() if loaded else torch.zeros(4)}
        _log(log, event="start", token=guard.lease.token, resumed=loaded.name if loaded else None)
        for episode in guard.episodes():
            time.sleep(EPISODE)
            state["w"] += 1
            if guard.should_checkpoint(episode):
                try:
                    record = guard.save(state, background=False).result()
                except TrainguardError as error:
                    _log(log, event="save-failed", episode=episode, error=f"{type(error).__name__}: {error}")
                else:
                    _log(log, event="commit", name=record.name, episode=episode, token=record.token)
        _log(
            log, event="loop-ended", reason=str(guard.stop_reason), fenced=guard.fenced, episode=guard.episode
        )
    _log(log, event="exited")
    return 0


def zombie(log: Path, registry: str, store: str, token: int) -> int:
    """A writer on A that still holds A's token and never heard it lost the lease - it tries to commit."""
    import torch

    from trainguard.checkpoints import CheckpointStore
    from trainguard.errors import TrainguardError
    from trainguard.registry import Lease

    with CheckpointStore(store, run=RUN, registry=registry) as opened:
        lease = Lease(opened.registry, RUN, token, TTL, opened.registry.identity)
        lease.local_deadline = time.monotonic() + 3600  # it believes it holds the run
        try:
            record = opened.save({"w": torch.full((4,), -1.0)}, episode=1, lease=lease, name="zombie")
        except TrainguardError as error:
            _log(log, event="zombie-refused", error=type(error).__name__, detail=str(error))
        else:
            _log(log, event="zombie-committed", name=record.name)
    return 0


# -- the drill -----------------------------------------------------------------------------------------


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"drill: {what} did not happen within {timeout:g}s")
        time.sleep(0.05)


def _config(base: Path, name: str, url: str, store: Path, max_episodes: int) -> Path:
    path = base / f"{name}.yaml"
    path.write_text(
        json.dumps(
            {
                "run": RUN,
                "store": str(store),
                "registry": url,
                "limits": {"max_episodes": max_episodes},
                "checkpoints": {
                    "every_episodes": EVERY,
                    "keep_last": 1000,
                },  # every commit stays: none may be lost
                "monitoring": {"heartbeat_interval": f"{BEAT:g}s", "lease_ttl": f"{TTL:g}s"},
            }
        )
    )
    return path


def _in(namespace: str, *command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            ["ip", "netns", "exec", namespace, *command],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _reap(process: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, 9)  # the process group this drill started, by pid
        process.wait()


def run_drill(base: Path) -> dict[str, Any]:
    """Run the drill under ``base`` (a fresh directory); the closing table's numbers."""
    os.chmod(base, 0o755)
    store, logs = base / "store", base / "logs"
    logs.mkdir()
    a_log, b_log, z_log = logs / "a.jsonl", logs / "b.jsonl", logs / "zombie.jsonl"
    here = Path(__file__).resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parents[1] / "src"), str(here.parent)])}
    env.pop("TRAINGUARD_CONFIG", None)
    with ExitStack() as stack:
        a = stack.enter_context(host("a", 61))
        b = stack.enter_context(host("b", 62))
        port = stack.enter_context(registry_server([a["server"], b["server"]]))
        url_a = f"postgresql://postgres@{a['server']}:{port}/postgres"
        url_b = f"postgresql://postgres@{b['server']}:{port}/postgres"
        processes: list[subprocess.Popen[bytes]] = []
        try:
            # 2. A trains
            config_a = _config(base, "a", url_a, store, 10**6)
            trainer_a = _in(
                a["ns"],
                sys.executable,
                str(here),
                "trainer",
                str(a_log),
                env={**env, "TRAINGUARD_CONFIG": str(config_a)},
                log=logs / "a.out",
            )
            processes.append(trainer_a)
            _wait(lambda: sum(e["event"] == "commit" for e in _events(a_log)) >= 3, 120, "A's third commit")
            # 3. the partition
            _sh("ip", "netns", "exec", a["ns"], "ip", "link", "set", a["link"], "down")
            partitioned = time.monotonic()
            # 4. the operator on B takes over and training continues there
            config_b = _config(base, "b", url_b, store, B_EPISODES)
            launcher_b = _in(
                b["ns"],
                sys.executable,
                "-m",
                "trainguard",
                "run",
                "--takeover",
                "-c",
                str(config_b),
                "--",
                sys.executable,
                str(here),
                "trainer",
                str(b_log),
                env=env,
                log=logs / "b.out",
            )
            processes.append(launcher_b)
            _wait(lambda: any(e["event"] == "start" for e in _events(b_log)), 60, "B's start")
            taken_over = next(e["t"] for e in _events(b_log) if e["event"] == "start")
            _wait(
                lambda: any(e["event"] == "loop-ended" for e in _events(a_log)), 4 * TTL, "A stopping itself"
            )
            a_stopped = next(e for e in _events(a_log) if e["event"] == "loop-ended")
            _reap(trainer_a, 30)
            # 5. the partition heals; a zombie with A's token tries to commit
            _sh("ip", "netns", "exec", a["ns"], "ip", "link", "set", a["link"], "up")
            a_token = next(e["token"] for e in _events(a_log) if e["event"] == "start")
            zombie_a = _in(
                a["ns"],
                sys.executable,
                str(here),
                "zombie",
                str(z_log),
                url_a,
                str(store),
                str(a_token),
                env=env,
                log=logs / "zombie.out",
            )
            processes.append(zombie_a)
            _reap(zombie_a, 60)
            _reap(launcher_b, 120)
        finally:
            for process in processes:
                if process.poll() is None:
                    with suppress(ProcessLookupError):
                        os.killpg(process.pid, 9)
                    process.wait()
        timeline = {"partitioned": partitioned, "taken_over": taken_over, "a_stopped": a_stopped}
        return _judge(url_b, b["ns"], store, base, timeline=timeline, logs=(a_log, b_log, z_log), env=env)


def _judge(
    url: str,
    namespace: str,
    store: Path,
    base: Path,
    *,
    timeline: dict[str, Any],
    logs: tuple[Path, Path, Path],
    env: dict[str, str],
) -> dict[str, Any]:
    """Read the registry from host B (the server is still up) and compare with what each side saw."""
    partitioned, taken_over, a_stopped = (
        timeline["partitioned"],
        timeline["taken_over"],
        timeline["a_stopped"],
    )
    a_log, b_log, z_log = logs
    report = base / "registry.json"
    probe = (
        "import json,sys\n"
        "from trainguard.checkpoints import CheckpointStore\n"
        f"s = CheckpointStore.open_existing({str(store)!r}, run={RUN!r}, registry={url!r}, read_only=True)\n"
        "rows = [dict(name=r.name, token=r.token, episode=r.episode, ok=s.verify(r.name).ok,"
        " created=r.created_at) for r in s.checkpoints()]\n"
        f"json.dump(rows, open({str(report)!r}, 'w'))\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", probe], env=env, check=True, timeout=60
    )
    rows = json.loads(report.read_text())
    a_events, b_events, z_events = _events(a_log), _events(b_log), _events(z_log)
    a_token = next(e["token"] for e in a_events if e["event"] == "start")
    b_token = next(e["token"] for e in b_events if e["event"] == "start")
    in_registry = {r["name"]: r for r in rows}
    acknowledged = [e["name"] for e in a_events + b_events if e["event"] == "commit"]
    b_commits = [e["episode"] for e in b_events if e["event"] == "commit"]
    b_resumed = next(e["resumed"] for e in b_events if e["event"] == "start")
    resumed_episode = in_registry[b_resumed]["episode"] if b_resumed else 0
    b_end = next(e for e in b_events if e["event"] == "loop-ended")
    a_after_takeover = [
        r
        for r in rows
        if r["token"] == a_token
        and r["name"] not in {e["name"] for e in a_events if e["event"] == "commit" and e["t"] < taken_over}
    ]
    return {
        "ttl": TTL,
        "heartbeat": BEAT,
        "a_token": a_token,
        "b_token": b_token,
        "commits_from_a_after_takeover": len(a_after_takeover)
        + sum(e["event"] == "zombie-committed" for e in z_events),
        "zombie": next((e["error"] for e in z_events if e["event"] == "zombie-refused"), "committed"),
        "a_saves_failed_in_partition": sum(e["event"] == "save-failed" for e in a_events),
        "a_stopped_after": a_stopped["t"] - partitioned,
        "a_stop_reason": a_stopped["reason"],
        "checkpoints_lost": sum(
            1 for name in acknowledged if name not in in_registry or not in_registry[name]["ok"]
        ),
        "acknowledged": len(acknowledged),
        "b_commits": b_commits,
        "b_expected": _cadence(resumed_episode, b_end),
        "b_stop": next((e["reason"] for e in b_events if e["event"] == "loop-ended"), None),
    }


def _cadence(resumed: int, end: dict[str, Any]) -> list[int]:
    """The episodes B must have committed: every EVERY-th after the one it resumed from, up to its last."""
    return list(range(resumed + EVERY - resumed % EVERY, int(end["episode"]) + 1, EVERY))


def table(result: dict[str, Any]) -> str:
    bound = result["ttl"] + result["heartbeat"]
    b_ok = result["b_commits"] == result["b_expected"]
    first, last = (result["b_commits"][0], result["b_commits"][-1]) if result["b_commits"] else ("-", "-")
    lines = [
        "| measure | result | target |",
        "|---|---|---|",
        f"| commits accepted from host A after the takeover | {result['commits_from_a_after_takeover']} "
        "| 0 |",
        f"| a writer on A with A's token after the partition healed | refused ({result['zombie']}) "
        "| refused |",
        f"| time until A stopped itself after losing the registry | {result['a_stopped_after']:.1f} s "
        f"({result['a_stop_reason']}) | <= ttl + one heartbeat = {bound:g} s |",
        f"| A's saves while partitioned | {result['a_saves_failed_in_partition']} failed, none committed | "
        "none committed |",
        f"| checkpoints lost (acknowledged to either host, missing or not verifying) | "
        f"{result['checkpoints_lost']} of {result['acknowledged']} | 0 |",
        f"| B's commits, token {result['b_token']} | every {EVERY} episodes from {first} to {last}"
        f"{', no gap' if b_ok else ', GAPS'} | uninterrupted |",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", default="drill", choices=["drill", "trainer", "zombie"])
    parser.add_argument("args", nargs="*")
    args = parser.parse_args()
    if args.mode == "trainer":
        return trainer(Path(args.args[0]))
    if args.mode == "zombie":
        return zombie(Path(args.args[0]), args.args[1], args.args[2], int(args.args[3]))
    if os.geteuid() != 0:
        print("hosts_drill: needs root (network namespaces, veth links)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="trainguard-drill-"))
    try:
        result = run_drill(base)
    except BaseException:
        for log in sorted((base / "logs").glob("*")):  # what each host said, for the one reading the failure
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(table(result))
    if os.environ.get("TRAINGUARD_DRILL_VERBOSE"):
        print(json.dumps(result, indent=1))
    ok = (
        result["commits_from_a_after_takeover"] == 0
        and result["checkpoints_lost"] == 0
        and result["a_stopped_after"] <= result["ttl"] + result["heartbeat"]
        and result["b_commits"] == result["b_expected"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
