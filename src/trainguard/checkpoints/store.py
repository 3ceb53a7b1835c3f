"""CheckpointStore: fenced, atomic, hashed checkpoints of one run, with retention and quarantine."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self

from trainguard._os.resources import tree_bytes
from trainguard.checkpoints import retention
from trainguard.checkpoints._bucket import Costs
from trainguard.checkpoints._bucket_recovery import Survey
from trainguard.checkpoints._commit import SaveRequest, commit, save_request
from trainguard.checkpoints._context import StoreContext, Validation
from trainguard.checkpoints._durable import StepFailed, entry_exists, make_dir
from trainguard.checkpoints._quarantine import discard, park, release_path
from trainguard.checkpoints._reading import Expected, VerifyReport, load_dir, read_manifest, verify_dir
from trainguard.checkpoints._recovery import RecoveryReport, find_staged, recover
from trainguard.checkpoints._values import LoadedCheckpoint, Provenance, default_name
from trainguard.checkpoints.codecs import FORMATS
from trainguard.checkpoints.layout import check_layout, quarantine_root, staging_root
from trainguard.checkpoints.manifest import Manifest
from trainguard.checkpoints.rebuild import attach
from trainguard.checkpoints.signing import Signing
from trainguard.errors import (
    CheckpointNotFound,
    CheckpointWriteError,
    CorruptCheckpoint,
    InvalidArgument,
    RegistryError,
    StateConflict,
)
from trainguard.fingerprint import Fingerprint
from trainguard.names import URL_SCHEME, validate_name
from trainguard.registry import (
    DEFAULT_LEASE_TTL,
    CheckpointRecord,
    CheckpointState,
    Lease,
    OpenMode,
    Registry,
    default_registry_url,
)

log = logging.getLogger("trainguard")
LATEST = "latest"
COMMITTED = (CheckpointState.COMMITTED,)


class CheckpointStore:
    """The checkpoints of one run under ``root``.

    ``registry`` is a :class:`Registry` or a URL; by default ``<root>/.trainguard/registry.db``. A writer
    (the default) creates what is missing, binds the store to its registry, records the run's store and runs
    recovery (see ``_recovery``) unless ``recover_on_open=False``. ``signing`` (see
    :mod:`trainguard.checkpoints.signing`): the key manifests are signed with and checked against; by default
    from the environment. ``create_run=False`` opens an existing
    store of a known run and changes nothing on open (see :meth:`open_existing`); ``read_only=True`` also
    opens the registry so that it cannot write (a read-only store can be listed, verified and served).
    """

    object_store: type[CheckpointStore] | None = None  # set by _bucket_store (imported by the package)

    def __new__(cls, root: str | os.PathLike[str], *args: Any, **kwargs: Any) -> CheckpointStore:
        # An s3:// URL selects the object-storage store wherever a store is opened (API, CLI, config).
        if cls is CheckpointStore and URL_SCHEME.match(str(root)) and cls.object_store is not None:
            return super().__new__(cls.object_store)
        return super().__new__(cls)

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        run: str,
        registry: Registry | str | None = None,
        retention_policy: retention.Policy | None = None,
        format: str = "safetensors",
        validation: Validation | None = None,
        recover_on_open: bool = True,
        foreign_grace: float = 10 * DEFAULT_LEASE_TTL,
        create_run: bool = True,
        read_only: bool = False,
        signing: Signing | None = None,
    ) -> None:
        self.run = validate_name(run, "run")
        if format not in FORMATS:
            raise InvalidArgument("format", format, f"must be one of {', '.join(FORMATS)}")
        writer = create_run and not read_only
        if URL_SCHEME.match(str(root)):  # not a path: Path("s3://b/p") is the local directory "s3:/b/p"
            raise InvalidArgument("root", str(root), "only s3:// URLs name an object store")
        self.root = Path(root).resolve()
        if writer:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as error:  # a file in the way (`/dev/null`), or a directory not ours to write
                rule = f"cannot be created: {error.strerror}"
                raise InvalidArgument("root", str(self.root), rule) from None
        elif not self.root.is_dir():
            raise InvalidArgument("root", str(self.root), "is not a directory (a store that must exist)")
        check_layout(self.root)  # before anything is created, moved or deleted under it
        if writer:
            try:
                make_dir(staging_root(self.root), root=self.root, exist_ok=True)
            except StepFailed as failed:
                raise CheckpointWriteError(failed.step, failed.path, failed.cause) from failed.cause
        self._owns_registry = not isinstance(registry, Registry)
        if isinstance(registry, Registry):
            self.registry = registry
        else:
            mode: OpenMode = "create" if writer else "read" if read_only else "existing"
            self.registry = Registry.open(registry or default_registry_url(self.root), mode=mode)
        self.retention = retention_policy or retention.keep_all
        self.foreign_grace = foreign_grace
        self.read_only = read_only
        self._context = StoreContext(
            self.root,
            self.run,
            self.registry,
            format,
            validation or Validation(),
            # Not given: from $TRAINGUARD_SIGNING_KEY / _PUBLIC_KEY / _SIGNING_REQUIRED (none: unsigned).
            signing if signing is not None else Signing.from_paths(),
        )
        self._last_saved: str | None = None
        try:
            self._attach(writer)
        except BaseException:
            self.close()
            raise
        self.recovery = self.recover() if recover_on_open and not read_only else RecoveryReport()

    def _attach(self, writer: bool) -> None:
        """Check (a reader) or make (a writer) the store's binding to its registry and the run's record."""
        attach(self.root, self.registry, self.run, writer=writer)

    @classmethod
    def open_existing(
        cls,
        root: str | os.PathLike[str],
        *,
        run: str,
        registry: Registry | str | None = None,
        format: str = "safetensors",
        recover: bool = False,
        read_only: bool = False,
        signing: Signing | None = None,
    ) -> CheckpointStore:
        """A store whose run must already be in the registry - what readers and operators open. Nothing is
        created or repaired on open (``recover=True``: recovery runs); ``read_only=True``: nothing at all is
        written (the registry is opened read-only; ``recover`` is then refused)."""
        if recover and read_only:
            raise InvalidArgument("recover", recover, "a read-only store cannot be recovered")
        return cls(
            root,
            run=run,
            registry=registry,
            format=format,
            recover_on_open=recover,
            create_run=False,
            read_only=read_only,
            signing=signing,
        )

    costs: Costs | None = None  # an object store's requests and bytes (this process's), for the CLI to show
    on_filesystem = True  # False for an object store (saves staged by other processes need a directory)

    @property
    def location(self) -> str:
        """Where the checkpoints are, as a user names it (a directory, an ``s3://`` URL)."""
        return str(self.root)

    @property
    def format(self) -> str:
        return self._context.format

    def close(self) -> None:
        if self._owns_registry:
            self.registry.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def recover(self) -> RecoveryReport:
        """Bring directories in line with the registry; safe to run while writers are active."""
        return recover(self._context, foreign_grace=self.foreign_grace)

    # -- writing ----------------------------------------------------------------------------------

    def save(
        self,
        state: object,
        *,
        episode: int,
        lease: Lease,
        metrics: Mapping[str, Any] | None = None,
        name: str | None = None,
        parent: str | None = None,
        features: Fingerprint | None = None,
        provenance: Provenance | None = None,
    ) -> CheckpointRecord:
        """Commit ``state`` as a checkpoint of ``episode`` under ``lease`` (docs/design.md, "The commit
        protocol"); ``features`` is the fingerprint of the input features it was trained on.

        Raises ``CommitFenced`` (a ``LeaseLost``) when the token is not current, ``CommitRefused`` beyond the
        budget, ``CheckpointRejected`` when validation fails, ``CheckpointWriteError`` naming the failed step.
        Retention runs only after the commit succeeded.
        """
        request = save_request(
            self.run,
            state,
            episode=episode,
            lease=lease,
            metrics=metrics,
            name=name,
            parent=parent or self.parent_for(lease),
            features=features,
            provenance=provenance,
        )
        return self.committed(self._commit(request))

    def _commit(self, request: SaveRequest) -> CheckpointRecord:
        """This kind of store's commit protocol (a directory: ``_commit``; a bucket: ``_bucket_commit``)."""
        return commit(self._context, request)

    def parent_for(self, lease: Lease) -> str | None:
        """The parent of this process's next checkpoint: its last one, else the one the run resumed from."""
        return self._last_saved or lease.while_held(self._resumed_from, what="save")

    def committed(self, record: CheckpointRecord) -> CheckpointRecord:
        """After a commit: the next save's parent, then retention - which is never urgent (the next save
        prunes again), so an unreachable registry here must not turn a successful save into an error."""
        self._last_saved = record.name
        try:
            self.prune()
        except RegistryError as error:
            log.warning(
                "trainguard: retention after %s skipped (registry unreachable): %s", record.name, error
            )
        return record

    def _resumed_from(self) -> str | None:
        info = self.registry.run_info(self.run)
        return info.resumed_from if info else None

    # -- reading ----------------------------------------------------------------------------------

    def checkpoints(self, *, states: Iterable[CheckpointState] | None = COMMITTED) -> list[CheckpointRecord]:
        """Checkpoints as the registry records them, oldest episode first (``states=None``: every state)."""
        return self.registry.checkpoints(self.run, states=states)

    def latest(self) -> CheckpointRecord | None:
        committed = self.checkpoints()
        return committed[-1] if committed else None

    def record(self, name: str) -> CheckpointRecord:
        if name == LATEST:
            latest = self.latest()
            if latest is None:
                raise CheckpointNotFound(self.run, name, "the run has no committed checkpoint")
            return latest
        return self.registry.checkpoint(self.run, validate_name(name, "checkpoint"))

    def _directory(self, record: CheckpointRecord) -> Path:
        """Where a record's files are, found without changing anything: the place for its state, else where
        an interrupted move left them (the other place, or the staging copy the registry committed - a
        crash between commit and rename, a lost commit reply). A writer's next open finishes the move."""
        final, parked = self.root / record.name, quarantine_root(self.root) / record.name
        places = (parked, final) if record.state is CheckpointState.QUARANTINED else (final, parked)
        for place in places:
            if entry_exists(place, root=self.root):
                return place
        return find_staged(self.root, record) or places[0]

    def _expected(self, record: CheckpointRecord) -> Expected:
        return Expected(self.run, record.name, record.manifest_hash, self._context.signing)

    def _conflict(self, record: CheckpointRecord, rule: str) -> StateConflict:
        state = f"{record.state.value} ({record.state_reason or 'no reason'})"
        return StateConflict(f"checkpoint {record.name!r} of run {self.run!r}", state, rule)

    def load(self, name: str = LATEST, *, mapped: bool = True) -> LoadedCheckpoint:
        """Verify every hash, then decode. Only committed checkpoints load; quarantined ones are refused.

        ``mapped`` (default): the files are mapped and hashed in place and the state is built on the maps
        (no copy); ``state`` re-checks the files at every access. ``mapped=False``: a private copy, immune
        to anything done to the files afterwards, at the cost of reading every byte into new memory."""
        record = self.record(name)
        if record.state is not CheckpointState.COMMITTED:
            raise self._conflict(record, "only committed checkpoints load")
        state, manifest, maps = load_dir(self._expected(record), self._directory(record), mapped=mapped)
        return LoadedCheckpoint(state, record, manifest, maps)

    def manifest(self, name: str = LATEST) -> Manifest:
        """A checkpoint's manifest (its hash checked against the registry), without reading its data."""
        record = self.record(name)
        return read_manifest(self._expected(record), self._directory(record))

    def verify(self, name: str = LATEST) -> VerifyReport:
        """Check hashes of a committed or quarantined checkpoint; a report (value), not an exception."""
        record = self.record(name)
        if record.state is CheckpointState.EVICTED:
            raise self._conflict(record, "its files are gone; there is nothing to verify")
        return verify_dir(self._expected(record), self._directory(record))

    # -- pins, quarantine, retention ----------------------------------------------------------------

    def pin(self, name: str, *, reason: str | None = None) -> CheckpointRecord:
        return self.registry.set_pinned(self.run, self.record(name).name, True, reason=reason)

    def unpin(self, name: str, *, reason: str | None = None) -> CheckpointRecord:
        return self.registry.set_pinned(self.run, self.record(name).name, False, reason=reason)

    def quarantine(self, name: str, *, reason: str) -> CheckpointRecord:
        """Move a committed checkpoint aside with a reason record (never deleted; ``release`` undoes it)."""
        if not reason or not reason.strip():
            raise InvalidArgument("reason", reason, "a quarantine needs a reason")
        record = self.record(name)
        # Registry first: from this moment nothing loads it; the move follows (recovery finishes it).
        record = self.registry.set_checkpoint_state(
            self.run, record.name, CheckpointState.QUARANTINED, reason=reason, expect=COMMITTED
        )
        why = {"reason": reason, "run": self.run, "checkpoint": record.name}
        try:
            park(self.root, record.name, {**why, "episode": record.episode, "token": record.token})
        except StepFailed as failed:  # decided in the registry: nothing loads it; recovery finishes
            raise CheckpointWriteError(failed.step, failed.path, failed.cause, committed=True) from None
        return record

    def release(self, name: str, *, reason: str = "released by operator") -> CheckpointRecord:
        """Bring a quarantined checkpoint back, after checking it still verifies."""
        record = self.record(name)
        if record.state is not CheckpointState.QUARANTINED:
            raise self._conflict(record, "only a quarantined checkpoint can be released")
        parked = quarantine_root(self.root) / record.name
        report = verify_dir(self._expected(record), parked)
        if not report.ok:
            problem = report.problems[0]
            raise CorruptCheckpoint(record.name, problem.file, f"cannot be released: {problem.reason}")
        record = self.registry.set_checkpoint_state(
            self.run,
            record.name,
            CheckpointState.COMMITTED,
            reason=reason,
            expect=(CheckpointState.QUARANTINED,),
        )
        if not entry_exists(self.root / record.name, root=self.root):
            try:
                release_path(self.root, parked, self.root / record.name)
            except StepFailed as failed:  # decided in the registry; recovery finishes the move
                raise CheckpointWriteError(failed.step, failed.path, failed.cause, committed=True) from None
        return record

    def protected(self, committed: Iterable[CheckpointRecord] | None = None) -> set[str]:
        """Never evicted: pinned checkpoints, the live one, the one the run resumed from."""
        names = {r.name for r in (self.checkpoints() if committed is None else committed) if r.pinned}
        live = self.registry.live_pointer(self.run)
        resumed = self._resumed_from()
        return names | {n for n in (live, resumed) if n}

    def prune(self, *, policy: retention.Policy | None = None, dry_run: bool = False) -> list[str]:
        """Evict what the retention policy does not keep; returns the evicted names."""
        policy = policy or self.retention
        if isinstance(policy, retention.KeepAll):
            return []  # nothing configured: nothing to read, nothing to evict (the default, after every save)
        committed = self.checkpoints()
        candidates = [retention.Candidate(r.name, r.episode, r.metrics) for r in committed]
        doomed = retention.evictions(candidates, policy, self.protected(committed))
        if dry_run:
            return doomed
        evicted: list[str] = []
        for name in doomed:
            # Registry first, so a crash mid-delete leaves a row that says "evicted" and recovery finishes.
            try:
                self.registry.set_checkpoint_state(
                    self.run, name, CheckpointState.EVICTED, reason="retention", expect=COMMITTED
                )
            except StateConflict:
                continue  # pinned, promoted or quarantined since the list was read
            evicted.append(name)
            # Evicted in the registry, so nothing loads it; a failed (or already done) delete is finished by
            # the next open.
            try:
                self._discard(name)
            except Exception as error:
                log.warning("trainguard: the delete of evicted %s is left for recovery: %s", name, error)
        return evicted

    def _discard(self, name: str) -> None:
        """Delete an evicted checkpoint's files (the registry already says it is gone)."""
        with contextlib.suppress(StepFailed):
            discard(self.root, self.root / name)

    def survey(self) -> Survey | None:
        """An object store's unregistered, refused and abandoned prefixes (None: a directory)."""
        return None

    def stored_bytes(self) -> int:
        """What the store holds, in bytes (the disk budget's measure)."""
        return tree_bytes(self.root)

    def stored_objects(self) -> int:
        """An object store's data and manifest objects (a directory is walked instead)."""
        raise NotImplementedError("a directory store's files are counted by walking it")

    def publish_live(self, name: str) -> None:
        """After the registry moved the live pointer: on disk nothing (the registry is the pointer)."""


__all__ = ["LATEST", "CheckpointStore", "LoadedCheckpoint", "Provenance", "default_name"]
