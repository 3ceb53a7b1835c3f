"""The commit protocol (docs/design.md, "The commit protocol"): stage durably, let the registry decide,
roll forward.

Everything is durable in staging *before* the registry transaction, so a crash at any point leaves either
an invisible staging directory (removed by the next open once its writer is gone) or a decided checkpoint
whose directory the next open rolls forward. The registry transaction is the only point of commit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.checkpoints._context import StoreContext
from trainguard.checkpoints._durable import (
    StepFailed,
    fsync_dir,
    make_dir,
    move_dir,
    remove_tree,
    write_small_file,
)
from trainguard.checkpoints._quarantine import free_entry, quarantine_path
from trainguard.checkpoints._tree import UnsupportedValue
from trainguard.checkpoints._values import Provenance, default_name
from trainguard.checkpoints.codecs import (
    AdoptedFile,
    FileRecord,
    NonFiniteValues,
    validate_staged,
    write_state,
)
from trainguard.checkpoints.layout import StagingName, staging_root
from trainguard.checkpoints.manifest import MANIFEST_FILE, Manifest
from trainguard.checkpoints.signing import SIGNATURE_FILE, signature_bytes
from trainguard.errors import (
    CheckpointRejected,
    CheckpointWriteError,
    CommitFenced,
    CommitOutcomeUnknown,
    CommitRefused,
    InvalidArgument,
    LeaseLost,
    RegistryError,
)
from trainguard.fingerprint import Fingerprint
from trainguard.names import validate_name
from trainguard.registry import CheckpointRecord, CommitVerdict, EventKind, Lease, Registry

MAX_EPISODE = 2**63 - 1  # what the registry can store


@dataclass(frozen=True)
class SaveRequest:
    state: object  # None for files another writer staged (commit_staged)
    episode: int
    lease: Lease
    name: str
    metrics: Mapping[str, Any]
    parent: str | None
    fingerprint: str | None
    code_hash: str | None = None
    config_hash: str | None = None
    features: dict[str, Any] | None = None
    origin: dict[str, Any] | None = None


def save_request(
    run: str,
    state: object,
    *,
    episode: int,
    lease: Lease,
    metrics: Mapping[str, Any] | None = None,
    name: str | None = None,
    parent: str | None = None,
    features: Fingerprint | None = None,
    provenance: Provenance | None = None,
) -> SaveRequest:
    """A save's arguments checked before anything is written (``CheckpointStore.save``, and saves whose
    files other processes write: ``trainguard.checkpoints.prepared``)."""
    if lease.run != run:
        raise InvalidArgument("lease", lease.run, f"is a lease of another run; this store is for {run!r}")
    if isinstance(episode, bool) or not isinstance(episode, int) or episode < 0:
        raise InvalidArgument("episode", episode, "must be a non-negative integer")
    name = validate_name(default_name(episode, lease.token) if name is None else name, "checkpoint")
    if episode > MAX_EPISODE:  # the registry stores 64-bit integers; refused before anything is written
        raise CheckpointRejected(name, f"episode {episode} is beyond the largest storable, {MAX_EPISODE}")
    provenance = provenance or Provenance()
    return SaveRequest(
        state=state,
        episode=episode,
        lease=lease,
        name=name,
        metrics=dict(metrics or {}),
        parent=parent,
        fingerprint=features.digest if features else None,
        code_hash=provenance.code_hash,
        config_hash=provenance.config_hash,
        features=features.content if features else None,
        origin=provenance.origin,
    )


def commit(store: StoreContext, request: SaveRequest) -> CheckpointRecord:
    """Commit ``request`` into ``store``; the only way a checkpoint comes into being. Raises
    ``CommitRefused``/``CommitFenced`` (nothing committed, staged files kept as evidence),
    ``CheckpointRejected`` (validation; nothing committed) or ``CheckpointWriteError`` naming the step and
    whether the registry had already decided."""
    check_commit(store, request)
    staging = stage(store, request.name, request.lease)
    try:
        # 3. files: written from the state's memory, hashed on the way, fsynced
        fmt = "torch" if isinstance(request.state, AdoptedFile) else store.format
        with _save_errors(request.name):
            files = write_state(request.state, staging, fmt=fmt, check_finite=store.validation.finite)
    except BaseException:
        remove_tree(staging, root=store.root)
        raise
    return commit_staged(store, request, staging, files, fmt)


@contextmanager
def _save_errors(name: str) -> Iterator[None]:
    """Steps 3-5 fail as the caller is told they can: a step that could not be done names itself
    (CheckpointWriteError); a state the codecs or validators refuse is CheckpointRejected."""
    try:
        yield
    except StepFailed as failed:
        raise CheckpointWriteError(failed.step, failed.path, failed.cause) from failed.cause
    except (NonFiniteValues, UnsupportedValue, ValueError, TypeError) as error:
        raise CheckpointRejected(name, str(error)) from error


def check_fresh(registry: Registry, run: str, request: SaveRequest) -> None:
    """Before other processes (ranks, uploads) spend work on a save that the registry will decide only at
    the end: the token is still the run's live lease (LeaseLost; first, so a stale writer hears that it is
    fenced, not that the name is taken), and the name is unused (names are never reused)."""
    request.lease.renew()
    if registry.find_checkpoint(run, request.name) is not None:
        raise CheckpointRejected(request.name, "a checkpoint of this name exists; names are never reused")


def check_commit(store: StoreContext, request: SaveRequest) -> None:
    """Step 1: fail fast on what this process already knows (the registry re-checks all of it in step 6)."""
    registry, run, lease = store.registry, store.run, request.lease
    lease.check()
    if (gone := registry.replaced()) is not None:  # committing into a deleted registry commits nothing
        lease.lost_reason = gone
        raise LeaseLost(run, lease.token, gone)
    if store.signing.required and store.signing.key is None:
        raise InvalidArgument("signing.key", None, "signing is required here: a writer needs the private key")
    limit = lease.while_held(lambda: registry.run(run), what="commit").limits.get("max_episodes")
    if limit is not None and request.episode > limit:
        reason = f"episode {request.episode} is beyond the run's budget of {limit} episodes"
        registry.add_event(
            run,
            EventKind.COMMIT_REFUSED,
            token=lease.token,
            checkpoint=request.name,
            reason=reason,
            detail={"episode": request.episode, "writer": registry.identity.as_dict(), "stage": "local"},
        )
        raise CommitRefused(run, request.name, lease.token, reason)


def stage(store: StoreContext, name: str, lease: Lease) -> Path:
    """Step 2: a staging directory on the same filesystem as the final place, named after its writer (so
    recovery can tell when it is abandoned) and the token it writes under."""
    staging = staging_root(store.root) / StagingName.new(name, store.registry.identity, lease.token)
    try:
        make_dir(staging, root=store.root, step="stage")
    except StepFailed as failed:
        raise CheckpointWriteError(failed.step, failed.path, failed.cause) from failed.cause
    return staging


def commit_staged(
    store: StoreContext, request: SaveRequest, staging: Path, files: list[FileRecord], fmt: str
) -> CheckpointRecord:
    """Steps 4-7 for ``files``, already durable in ``staging`` (written by :func:`commit`, or by the ranks
    of a distributed save). The staging directory is removed if anything fails before the registry
    decides, set aside as evidence if the registry refuses, rolled forward if it accepts."""
    registry, run, lease = store.registry, store.run, request.lease
    writer = registry.identity
    try:
        written = _write_manifest(store, request, staging, files, fmt, writer=writer.as_dict())
        manifest, manifest_hash = written
    except BaseException:
        remove_tree(staging, root=store.root)
        raise

    # 6. the registry decides
    record = CheckpointRecord(
        run=run,
        name=request.name,
        episode=request.episode,
        token=lease.token,
        manifest_hash=manifest_hash,
        parent=request.parent,
        fingerprint=request.fingerprint,
        metrics=dict(request.metrics),
        bytes=manifest.total_bytes,
        created_at=manifest.created_at,
    )
    verdict = _decide(store, lease, record, {**writer.as_dict(), "staging": staging.name}, staging)
    if not verdict.accepted:
        _set_aside(store, staging, request, verdict.reason, fenced=verdict.fenced)
        if verdict.fenced:
            lease.lost_reason = verdict.reason
            raise CommitFenced(run, request.name, lease.token, verdict.reason)
        raise CommitRefused(run, request.name, lease.token, verdict.reason)

    # 7. roll forward: from here on the checkpoint exists whatever happens to this process
    try:
        move_dir(staging, store.root / request.name, root=store.root, step="rename", fsync_step="store-fsync")
    except StepFailed as failed:
        raise CheckpointWriteError(failed.step, failed.path, failed.cause, committed=True) from failed.cause
    try:
        return registry.checkpoint(run, request.name)
    except RegistryError:
        return record  # committed as recorded; the registry's copy adds only its row id


def _decide(
    store: StoreContext, lease: Lease, record: CheckpointRecord, writer: dict[str, Any], staging: Path
) -> CommitVerdict:
    """Step 6, retried while the lease is held when the registry cannot be reached. An attempt whose reply
    was lost (the connection died after COMMIT was sent) may have committed: before trying again, ask -
    and only a definite answer counts. Staged files are deleted only when the registry certainly did not
    commit them; when nobody can tell, they are kept (``CommitOutcomeUnknown``) for recovery to judge."""
    unresolved: BaseException | None = None  # an attempt whose outcome the registry has not told us

    def attempt() -> CommitVerdict:
        nonlocal unresolved
        if unresolved is not None:
            found = store.registry.find_checkpoint(store.run, record.name)
            if found is not None and found.manifest_hash == record.manifest_hash:
                return CommitVerdict(accepted=True)  # the lost reply said yes
            unresolved = None  # certainly not ours: decide afresh
        try:
            return store.registry.commit_checkpoint(record, writer=writer)
        except RegistryError as error:
            unresolved = error
            raise

    try:
        return lease.while_held(attempt, what="commit")
    except LeaseLost as lost:
        cause: BaseException = unresolved or lost
        if unresolved is not None:
            try:  # one last question: only a definite answer decides what happens to the staged files
                found = store.registry.find_checkpoint(store.run, record.name)
            except RegistryError:
                raise CommitOutcomeUnknown(str(staging), cause) from cause
            if found is not None and found.manifest_hash == record.manifest_hash:
                return CommitVerdict(accepted=True)
        remove_tree(staging, root=store.root)
        raise CheckpointWriteError("registry", str(staging), cause) from cause


def _write_manifest(
    store: StoreContext,
    request: SaveRequest,
    staging: Path,
    files: list[FileRecord],
    fmt: str,
    *,
    writer: dict[str, Any],
) -> tuple[Manifest, str]:
    with _save_errors(request.name):
        manifest = Manifest(
            run=store.run,
            name=request.name,
            episode=request.episode,
            token=request.lease.token,
            format=fmt,
            files=tuple(files),
            parent=request.parent,
            fingerprint=request.fingerprint,
            metrics=dict(request.metrics),
            created_at=time.time(),
            writer=writer,
            code_hash=request.code_hash,
            config_hash=request.config_hash,
            features=request.features,
            origin=request.origin,
        )
        # 4. validators: an independent decoder reads what was written, then the user's hooks
        if store.validation.decode:
            validate_staged(staging, files)
        for hook in store.validation.hooks:
            hook(staging, manifest)
        # 5. the manifest (and its signature, when a key is configured), then the directory entries, durable
        manifest_bytes = manifest.to_bytes()
        manifest_hash = write_small_file(staging / MANIFEST_FILE, manifest_bytes, step="manifest")
        if store.signing.key is not None:
            signed = signature_bytes(store.signing.key, manifest_bytes)
            write_small_file(staging / SIGNATURE_FILE, signed, step="sign")
        fsync_dir(staging, step="dir-fsync")
    return manifest, manifest_hash


def _set_aside(
    store: StoreContext, staging: Path, request: SaveRequest, reason: str, *, fenced: bool
) -> None:
    """A refused commit is evidence (it names its writer): keep it in quarantine, never delete it."""
    label = "fenced" if fenced else "refused"
    try:
        target = quarantine_path(
            store.root,
            staging,
            free_entry(store.root, staging.name),
            {
                "reason": label,
                "detail": reason,
                "run": store.run,
                "checkpoint": request.name,
                "episode": request.episode,
                "token": request.lease.token,
            },
        )
    except StepFailed:
        return  # the staging directory stays; recovery removes it once this writer is gone
    store.registry.add_event(
        store.run,
        EventKind.CHECKPOINT_QUARANTINED,
        token=request.lease.token,
        checkpoint=request.name,
        reason=label,
        detail={"path": str(target), "detail": reason, "committed": False},
    )


__all__ = [
    "MAX_EPISODE",
    "SaveRequest",
    "check_commit",
    "check_fresh",
    "commit",
    "commit_staged",
    "save_request",
    "stage",
]
