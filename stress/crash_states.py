"""Every crash state of the commit protocol, in the manner of ALICE (Pillai et al., OSDI 2014).

Random SIGKILLs (``crash_consistency.py``) sample the crash space; this enumerates it. A child process runs
a scenario (saves, a retention eviction, a quarantine, a recovery) under a *recorder* that logs every file
system operation the store makes - through ``os`` (open/write/fsync/rename/mkdir/unlink/rmdir, including
``shutil.rmtree``'s and the ``dir_fd``-relative ones) - and snapshots the SQLite registry after every
transaction (a registry commit is durable: ``synchronous=FULL``). The child then exits, so every writer it
names in a staging directory is dead, as after a crash.

From the trace, every state a crash could leave is generated: for every prefix of the operations,

- a directory operation (create, mkdir, rename, unlink, rmdir) whose parent directory was not fsynced
  after it may or may not have reached the disk, independently of the others (every subset when there are
  at most ``SUBSET_LIMIT`` such operations, else none/all/each one dropped/each ordered prefix);
- file data written after the file's last fsync may be all there, all missing, or the last write torn
  in half;

the registry is the last snapshot before the crash point. Each state is materialised in a fresh directory,
the store is opened on it by a writer (recovery runs) and these invariants are checked:

1. the open succeeds;
2. nothing committed is lost and nothing uncommitted becomes visible: the committed checkpoints after
   recovery are exactly those the registry had committed at the crash;
3. every committed checkpoint verifies and loads, with exactly the values that were saved under its name;
4. the registry and the directories agree: every committed checkpoint in its final place, every
   quarantined one in ``.quarantine/``, no directory in a final place without a committed row, nothing
   left in ``.staging/`` or ``.trash/`` (their writers are dead).

    .venv/bin/python stress/crash_states.py [--scenario full] [--keep DIR]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crash_recorder import RUN, SCENARIOS, record

SUBSET_LIMIT = 6


# -- generating crash states --------------------------------------------------------------------------


DIR_OPS = frozenset({"create", "mkdir", "rename", "unlink", "rmdir"})


def _parents(op: dict[str, Any]) -> set[str]:
    paths = [op["src"], op["dst"]] if op["op"] == "rename" else [op["path"]]
    return {os.path.dirname(p) for p in paths}


@dataclass
class Model:
    """A file system as a crash may have left it: names -> inode ids, inode id -> data (None: a directory).
    Inodes exist whether or not a name for them reached the disk (an fsynced file whose directory entry
    was not is data without a name)."""

    names: dict[str, int] = field(default_factory=dict)
    data: dict[int, bytearray | None] = field(default_factory=dict)

    def copy(self) -> Model:
        return Model(dict(self.names), {i: None if d is None else bytearray(d) for i, d in self.data.items()})

    def _parent_ok(self, path: str) -> bool:
        parent = os.path.dirname(path)
        return parent == "" or (parent in self.names and self.data[self.names[parent]] is None)

    def name(self, op: dict[str, Any], inode: int | None) -> None:
        """Apply a directory operation (``inode``: the one a create/mkdir made)."""
        kind = op["op"]
        if kind in ("create", "mkdir"):
            if (
                op["path"]
                and inode is not None
                and op["path"] not in self.names
                and self._parent_ok(op["path"])
            ):
                self.names[op["path"]] = inode
        elif kind == "rename" and op["src"] in self.names and self._parent_ok(op["dst"]):
            src, dst = op["src"], op["dst"]
            if any(p.startswith(dst + "/") for p in self.names):
                return  # a rename over a non-empty directory fails
            moved = {p: i for p, i in self.names.items() if p == src or p.startswith(src + "/")}
            for path in moved:
                del self.names[path]
            for path, i in moved.items():
                self.names[dst + path[len(src) :]] = i
        elif kind == "unlink" or (
            kind == "rmdir" and not any(p.startswith(op["path"] + "/") for p in self.names)
        ):
            self.names.pop(op["path"], None)

    def write(self, op: dict[str, Any], inode: int, fraction: float = 1.0) -> None:
        content = self.data.get(inode)
        if content is None:
            return
        chunk = base64.b64decode(op["data"])
        chunk = chunk[: int(len(chunk) * fraction)]
        end = op["offset"] + len(chunk)
        if len(content) < end:
            content.extend(b"\0" * (end - len(content)))
        content[op["offset"] : end] = chunk

    def digest(self) -> str:
        h = hashlib.sha256()
        for path in sorted(self.names):
            content = self.data[self.names[path]]
            h.update(
                path.encode() + b"\0" + (b"<dir>" if content is None else hashlib.sha256(content).digest())
            )
        return h.hexdigest()


@dataclass
class Trace:
    """The recorded operations, each resolved to the inode it acts on as the running process saw it."""

    ops: list[dict[str, Any]]
    initial: Model
    inodes: list[int | None]  # create/mkdir: the inode made; write/fsync: the inode written; else None

    @classmethod
    def of(cls, ops: list[dict[str, Any]], initial: Model) -> Trace:
        live, inodes = initial.copy(), []
        next_id = max(live.data, default=0)
        for op in ops:
            kind, inode = op["op"], None
            if kind in ("create", "mkdir"):
                inode = live.names.get(op["path"])
                if inode is None:
                    next_id += 1
                    inode = next_id
                    live.data[inode] = None if kind == "mkdir" else bytearray()
            elif kind in ("write", "fsync"):
                inode = live.names.get(op["path"])
            inodes.append(inode)
            if kind in DIR_OPS:
                live.name(op, inode)
        return cls(ops, initial, inodes)


def crash_states(trace: Trace) -> Iterator[tuple[int, Model, str]]:
    """(crash point, model, registry snapshot) for every distinct state a crash could leave."""
    seen: set[tuple[str, str]] = set()
    ops = trace.ops
    for k in range(len(ops) + 1):
        prefix = ops[:k]
        snapshot = next((o["snapshot"] for o in reversed(prefix) if o["op"] == "registry"), None)
        if snapshot is None:
            continue
        durable: dict[int, bool] = {}
        for i, op in enumerate(prefix):
            if op["op"] in DIR_OPS:
                later = prefix[i + 1 :]
                durable[i] = all(
                    any(o["op"] == "fsync" and o["path"] == parent for o in later) for parent in _parents(op)
                )
        synced = {i for i, d in durable.items() if d}
        for kept in _subsets([i for i, d in durable.items() if not d]):
            for variant in ("all", "none", "torn"):
                model = _replay(trace, k, synced | set(kept), variant)
                key = (model.digest(), snapshot)
                if key not in seen:
                    seen.add(key)
                    yield k, model, snapshot


def _subsets(unsynced: list[int]) -> Iterator[tuple[int, ...]]:
    if len(unsynced) <= SUBSET_LIMIT:
        for size in range(len(unsynced) + 1):
            yield from itertools.combinations(unsynced, size)
        return
    yield ()
    yield tuple(unsynced)
    for i in range(len(unsynced)):
        yield tuple(unsynced[:i]) + tuple(unsynced[i + 1 :])  # each one dropped
        yield tuple(unsynced[:i])  # persisted in order up to i


def _replay(trace: Trace, k: int, persisted: set[int], variant: str) -> Model:
    """The state after a crash at ``k``: directory operations in ``persisted`` reached the disk; file data
    written after the file's last fsync is all there, missing, or (``torn``) the last such write halved."""
    prefix, inodes = trace.ops[:k], trace.inodes[:k]
    last_sync: dict[int, int] = {}
    for i, (op, inode) in enumerate(zip(prefix, inodes, strict=True)):
        if op["op"] == "fsync" and inode is not None:
            last_sync[inode] = i
    unsynced = [
        i
        for i, (op, inode) in enumerate(zip(prefix, inodes, strict=True))
        if op["op"] == "write" and inode is not None and last_sync.get(inode, -1) < i
    ]
    torn = unsynced[-1] if unsynced else None
    model = trace.initial.copy()
    for i, (op, inode) in enumerate(zip(prefix, inodes, strict=True)):
        kind = op["op"]
        if kind in ("create", "mkdir") and inode is not None and inode not in model.data:
            model.data[inode] = None if kind == "mkdir" else bytearray()
        if kind in DIR_OPS and i in persisted:
            model.name(op, inode)
        elif kind == "write" and inode is not None:
            if i not in unsynced or variant == "all" or (variant == "torn" and i != torn):
                model.write(op, inode)
            elif variant == "torn":
                model.write(op, inode, 0.5)
    return model


def initial_model(directory: Path) -> Model:
    model = Model()
    for path in sorted(directory.rglob("*")):
        inode = len(model.data) + 1
        model.names[str(path.relative_to(directory))] = inode
        model.data[inode] = None if path.is_dir() else bytearray(path.read_bytes())
    return model


def materialise(model: Model, root: Path) -> None:
    root.mkdir(parents=True)
    for path in sorted(model.names):
        content = model.data[model.names[path]]
        target = root / path
        if content is None:
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(bytes(content))


# -- checking a state ------------------------------------------------------------------------------


def check(root: Path, registry: Path, expected: dict[str, list[float]]) -> list[str]:
    """The invariants of the module's docstring; the violated ones, described."""
    from trainguard import CheckpointState, CheckpointStore

    with sqlite3.connect(registry) as db:
        found = db.execute("SELECT name, state FROM tg_checkpoints WHERE run = ?", (RUN,)).fetchall()
    before = dict(found)
    committed_before = {n for n, s in before.items() if s == CheckpointState.COMMITTED.value}
    try:
        store = CheckpointStore(root, run=RUN, registry=f"sqlite:///{registry}", foreign_grace=0)
    except Exception as error:
        return [f"open failed: {type(error).__name__}: {error}"]
    problems = []
    with store:
        rows = {r.name: r.state for r in store.checkpoints(states=None)}
        committed = {n for n, s in rows.items() if s is CheckpointState.COMMITTED}
        if committed != committed_before:
            problems.append(f"committed {sorted(committed_before)} at the crash, {sorted(committed)} after")
        for name in sorted(committed):
            try:
                values = store.load(name).state["policy"]["w"].tolist()
            except Exception as error:
                problems.append(f"{name} does not load: {type(error).__name__}: {error}")
                continue
            if values != expected.get(name):
                problems.append(f"{name} loads other values than were saved")
        finals = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        if finals != committed:
            problems.append(f"final places {sorted(finals)} but committed {sorted(committed)}")
        for name, state in rows.items():
            if state is CheckpointState.QUARANTINED and not (root / ".quarantine" / name).is_dir():
                problems.append(f"{name} is quarantined but not in .quarantine")
        for reserved in (".staging", ".trash"):
            left = sorted(os.listdir(root / reserved)) if (root / reserved).is_dir() else []
            if left:
                problems.append(f"{reserved} still holds {left}")
    return problems


# -- the explorer ------------------------------------------------------------------------------------


@dataclass
class Exploration:
    operations: int = 0
    states: int = 0
    violations: list[tuple[int, str]] = field(default_factory=list)  # (crash point, what)


def explore(scenario: str, directory: Path) -> Exploration:
    """Record ``scenario`` in a child process, then check every crash state of it."""
    trace_dir = directory / "trace"
    trace_dir.mkdir(parents=True)
    subprocess.run([sys.executable, __file__, "--record", scenario, str(trace_dir)], check=True, timeout=600)
    recorded = json.loads((trace_dir / "trace.json").read_text())
    trace = Trace.of(recorded["ops"], initial_model(trace_dir / "initial"))
    result = Exploration(operations=len(trace.ops))
    for n, (k, model, snapshot) in enumerate(crash_states(trace)):
        state = directory / f"state-{n}"
        materialise(model, state / "store")
        shutil.copy(trace_dir / snapshot, state / "registry.db")
        result.states += 1
        result.violations.extend(
            (k, problem) for problem in check(state / "store", state / "registry.db", recorded["expected"])
        )
        shutil.rmtree(state)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=SCENARIOS, default="full")
    parser.add_argument("--record", nargs=2, metavar=("SCENARIO", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.record:
        record(args.record[0], Path(args.record[1]))
        return 0
    with tempfile.TemporaryDirectory(prefix="trainguard-crash-states-") as scratch:
        result = explore(args.scenario, Path(scratch))
    print(
        f"scenario {args.scenario}: {result.operations} operations, {result.states} crash states explored, "
        f"{len(result.violations)} invariant violations"
    )
    for k, problem in result.violations[:20]:
        print(f"  crash after operation {k}: {problem}")
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
