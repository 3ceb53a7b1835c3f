"""A lost registry rebuilt from what the store can prove: its *signed* manifests.

``registry.db`` deleted, a PostgreSQL database dropped: the store's checkpoints are still there, but opening
the store with an empty registry is refused (it would start a new lineage). :func:`rebuild_registry` restores
the runs into an empty registry from every checkpoint whose manifest signature and file hashes verify with
the configured public key: committed checkpoints from their final places, quarantined ones (still not
loadable) from ``.quarantine/``. Tokens continue above the highest one seen. Not restorable, and said so in
the report: unsigned or forged checkpoints (moved aside as unregistered by the next writer's open), the
live pointer and pins (promote again), spend beyond the highest checkpointed episode, the event history.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard._os.hashing import format_digest, new_hasher
from trainguard.checkpoints._binding import bind, check_binding
from trainguard.checkpoints._quarantine import read_reason
from trainguard.checkpoints._reading import Expected, verify_dir
from trainguard.checkpoints.layout import RESERVED, check_layout, quarantine_root
from trainguard.checkpoints.manifest import MANIFEST_FILE, Manifest
from trainguard.checkpoints.signing import Signing
from trainguard.errors import InvalidArgument, RegistryMismatch, RunNotFound
from trainguard.registry import CheckpointRecord, CheckpointState, Registry

_MAX_MANIFEST_BYTES = 64 << 20  # a manifest lists files and metrics; bound the read all the same


@dataclass(frozen=True)
class FoundManifest:
    directory: Path
    state: CheckpointState  # committed (final place) or quarantined (.quarantine/)
    data: bytes

    @property
    def digest(self) -> str:
        hasher = new_hasher()
        hasher.update(self.data)
        return format_digest(hasher)


def _read_manifest_bytes(directory: Path) -> bytes | None:
    try:
        fd = os.open(directory / MANIFEST_FILE, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        return os.read(fd, _MAX_MANIFEST_BYTES)
    finally:
        os.close(fd)


def _entries(directory: Path) -> list[Path]:
    try:
        with os.scandir(directory) as scan:
            return sorted(
                directory / e.name
                for e in scan
                if e.is_dir(follow_symlinks=False) and e.name not in RESERVED and not e.name.startswith(".")
            )
    except OSError:
        return []


def manifests_in(root: Path) -> Iterator[FoundManifest]:
    """Every checkpoint directory under ``root`` that has a manifest (final places first)."""
    places = ((CheckpointState.COMMITTED, root), (CheckpointState.QUARANTINED, quarantine_root(root)))
    for state, base in places:
        for directory in _entries(base):
            data = _read_manifest_bytes(directory)
            if data is not None:
                yield FoundManifest(directory, state, data)


def holds_checkpoints_of(root: Path, run: str) -> bool:
    """Does the store hold a checkpoint of ``run`` in its final place? (An empty registry must not be
    handed such a store: it would start the run's lineage again.)"""
    for found in manifests_in(root):
        if found.state is not CheckpointState.COMMITTED:
            return False
        try:
            if Manifest.from_bytes(found.data).run == run:
                return True
        except ValueError:
            continue
    return False


@dataclass
class RebuildReport:
    registry_id: str
    restored: dict[str, list[str]] = field(default_factory=dict)  # run -> checkpoint names
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (directory, why)

    def as_dict(self) -> dict[str, Any]:
        return {
            "registry_id": self.registry_id,
            "restored": self.restored,
            "skipped": [{"directory": d, "reason": r} for d, r in self.skipped],
        }


def rebuild_registry(root: Path, registry: Registry, signing: Signing, *, reason: str) -> RebuildReport:
    """Restore every run of the store at ``root`` into ``registry`` (which must not know them yet) from the
    manifests whose signature and hashes verify; then bind the store to ``registry``."""
    if signing.verifier is None:
        raise InvalidArgument("signing", None, "a rebuild trusts only signed manifests: give the public key")
    if not reason or not reason.strip():
        raise InvalidArgument("reason", reason, "a rebuild needs a reason for the audit log")
    root = root.resolve()
    check_layout(root)
    strict = Signing(public=signing.verifier, required=True)
    report = RebuildReport(registry.registry_id)
    runs: dict[str, list[CheckpointRecord]] = {}
    seen: set[tuple[str, str]] = set()
    for found in manifests_in(root):
        try:
            manifest = Manifest.from_bytes(found.data)
        except ValueError as error:
            report.skipped.append((str(found.directory), f"malformed manifest: {error}"))
            continue
        if (manifest.run, manifest.name) in seen:
            report.skipped.append((str(found.directory), f"a second copy of {manifest.name}"))
            continue
        verified = verify_dir(Expected(manifest.run, manifest.name, found.digest, strict), found.directory)
        if not verified.ok:
            problem = verified.problems[0]
            report.skipped.append((str(found.directory), f"{problem.file}: {problem.reason}"))
            continue
        seen.add((manifest.run, manifest.name))
        state_reason = None
        if found.state is CheckpointState.QUARANTINED:
            state_reason = str(read_reason(found.directory).get("reason") or "restored from .quarantine")
        runs.setdefault(manifest.run, []).append(
            CheckpointRecord(
                run=manifest.run,
                name=manifest.name,
                episode=manifest.episode,
                token=manifest.token,
                manifest_hash=found.digest,
                state=found.state,
                parent=manifest.parent,
                fingerprint=manifest.fingerprint,
                metrics=manifest.metrics,
                bytes=manifest.total_bytes,
                created_at=manifest.created_at,
                state_reason=state_reason,
            )
        )
    for run, records in sorted(runs.items()):
        registry.restore_run(
            run,
            store=str(root),
            checkpoints=records,
            reason=reason,
            detail={"key_id": signing.verifier.key_id, "skipped": len(report.skipped)},
        )
        report.restored[run] = [r.name for r in records]
    bind(root, registry.registry_id, registry.url, rebind=True)
    return report


def attach(root: Path, registry: Registry, run: str, *, writer: bool) -> None:
    """Check (a reader) or make (a writer) a directory store's binding to its registry, and the run."""
    if writer:
        check_binding(root, registry.registry_id, registry.url)
        if registry.run_info(run) is None and holds_checkpoints_of(root, run):
            # A deleted registry recreated empty (or a store without a binding yet): starting the run again
            # here would hand out token 1 and budgets from 0 beside its committed checkpoints.
            raise RegistryMismatch(
                str(root),
                registry.url,
                f"holding committed checkpoints of run {run!r}, which that registry has never seen",
            )
        bind(root, registry.registry_id, registry.url)
        registry.ensure_run(run, store=root)
        return
    check_binding(root, registry.registry_id, registry.url)
    if registry.run_info(run) is None:
        raise RunNotFound(run, registry.url)


__all__ = [
    "FoundManifest",
    "RebuildReport",
    "attach",
    "holds_checkpoints_of",
    "manifests_in",
    "rebuild_registry",
]
