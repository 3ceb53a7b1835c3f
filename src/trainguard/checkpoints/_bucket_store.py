"""The fenced store on object storage: ``CheckpointStore("s3://bucket/prefix", ...)`` (docs/design.md,
"Object storage"). The registry stays the point of commit; the bucket gives write-once objects and
compare-and-swap pointers (``_bucket``). Layout under the prefix:

    .staging/<name>.<writer>-t<token>-<random>/   a save's objects, where they stay (never renamed, copied)
    <name>/MANIFEST.json (+ MANIFEST.sig)         the index of a committed checkpoint, written once
    .quarantine/<name>/<time>-<what>.json         quarantine and release notes (append-only history)
    .quarantine/<staging>/...                     abandoned or refused staging, moved aside by recovery
    .trainguard/binding.json                      the registry this store belongs to
    LIVE.json                                     the live pointer, moved by compare-and-swap

The commit protocol is ``_bucket_commit``; recovery and the after-commit steps ``_bucket_recovery``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from trainguard._os.hashing import hash_bytes
from trainguard.checkpoints import _bucket_recovery as recovery
from trainguard.checkpoints import retention
from trainguard.checkpoints._binding import bind
from trainguard.checkpoints._bucket import Bucket, BucketAddress, unreachable
from trainguard.checkpoints._bucket_commit import commit
from trainguard.checkpoints._commit import SaveRequest
from trainguard.checkpoints._context import StoreContext, Validation
from trainguard.checkpoints._reading import Expected, Problem, VerifyReport
from trainguard.checkpoints._recovery import RecoveryReport
from trainguard.checkpoints._values import LoadedCheckpoint
from trainguard.checkpoints.codecs import read_state
from trainguard.checkpoints.manifest import MANIFEST_FILE, Manifest
from trainguard.checkpoints.signing import SIGNATURE_FILE, Signing, check_signature_bytes
from trainguard.checkpoints.store import CheckpointStore
from trainguard.errors import (
    CheckpointWriteError,
    CorruptCheckpoint,
    InvalidArgument,
    RegistryMismatch,
    RunNotFound,
)
from trainguard.names import store_directory, validate_name
from trainguard.registry import (
    DEFAULT_LEASE_TTL,
    CheckpointRecord,
    CheckpointState,
    OpenMode,
    Registry,
)

BINDING_KEY = (".trainguard", "binding.json")


class BucketStore(CheckpointStore):
    """:class:`CheckpointStore` on an S3 bucket. ``registry`` is required (PostgreSQL, or a SQLite file on
    a local disk: never SQLite on the object store); ``workdir`` is a local directory for this process's
    run files (pid, heartbeat), by default ``$XDG_CACHE_HOME/trainguard/s3/<bucket>/<prefix>`` (the cache
    is ``~/.cache`` when unset)."""

    on_filesystem = False

    def __init__(
        self,
        root: str,
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
        bucket: Bucket | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.run = validate_name(run, "run")
        if format != "safetensors":
            raise InvalidArgument("format", format, "an s3:// store writes safetensors")
        validation = validation or Validation()
        if validation.hooks:  # they are handed a staging directory; an object store has none
            raise InvalidArgument("validation.hooks", len(validation.hooks), "an s3:// store takes none")
        if registry is None:
            raise InvalidArgument(
                "registry", None, f"{root} needs a registry URL (PostgreSQL, or SQLite on a local disk)"
            )
        self.url = root.rstrip("/")
        BucketAddress.parse(root)  # a malformed URL is refused before any connection
        self.bucket = bucket if bucket is not None else Bucket.connect(root)
        self.costs = self.bucket.costs
        self.root = (workdir or store_directory(self.url)).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        writer = create_run and not read_only
        self._owns_registry = not isinstance(registry, Registry)
        if isinstance(registry, Registry):
            self.registry = registry
        else:
            mode: OpenMode = "create" if writer else "read" if read_only else "existing"
            self.registry = Registry.open(registry, mode=mode)
        self.retention = retention_policy or retention.keep_all
        self.foreign_grace = foreign_grace
        self.read_only = read_only
        self._context = StoreContext(
            self.root,
            self.run,
            self.registry,
            format,
            validation,
            signing if signing is not None else Signing.from_paths(),
        )
        self._last_saved: str | None = None
        try:
            self._attach(writer)
        except BaseException:
            self.close()
            raise
        self.recovery = self.recover() if recover_on_open and not read_only else RecoveryReport()

    @property
    def location(self) -> str:
        return self.url

    def key(self, *parts: str) -> str:
        return self.bucket.address.key(*parts)

    def _attach(self, writer: bool) -> None:
        """The bucket prefix is bound to one registry (its first writer's), as a directory is."""
        key = self.key(*BINDING_KEY)
        body = {"registry_id": self.registry.registry_id, "registry": self.registry.url}
        try:  # the first request: a wrong bucket, endpoint or key is said here, in one line
            if writer:
                self.bucket.put_new(key, json.dumps({**body, "bound_at": time.time()}).encode())
            found = self.bucket.read(key)
        except CheckpointWriteError as error:
            raise InvalidArgument("store", self.url, unreachable(error.__cause__ or error)) from None
        except Exception as error:
            raise InvalidArgument("store", self.url, unreachable(error)) from None
        bound = json.loads(found).get("registry_id") if found else None
        if bound is not None and bound != self.registry.registry_id:
            given = f"{self.registry.url} (registry {self.registry.registry_id})"
            raise RegistryMismatch(self.url, given, f"bound to registry {bound}")
        if writer:
            # The workdir is bound too: `stop` and the watchdog signal a process for this run only if its
            # files are under a directory bound to their registry (supervise.Membership).
            bind(self.root, self.registry.registry_id, self.registry.url)
            self.registry.ensure_run(self.run, store=self.url)
        elif self.registry.run_info(self.run) is None:
            raise RunNotFound(self.run, self.registry.url)

    def recover(self) -> RecoveryReport:
        return recovery.recover(self, foreign_grace=self.foreign_grace)

    # -- writing ------------------------------------------------------------------------------------

    def _commit(self, request: SaveRequest) -> CheckpointRecord:
        return commit(self, request)

    # -- reading ------------------------------------------------------------------------------------

    def _manifest_of(self, record: CheckpointRecord) -> tuple[Manifest, str]:
        """The manifest (hash checked against the registry's, signature checked) and its objects' prefix:
        the index, else - a checkpoint decided but not indexed yet - its staged copy."""
        key = self.key(record.name, MANIFEST_FILE)
        body = self.bucket.read(key)
        if body is None:
            staged = recovery.find_staged(self, record)
            if staged is None:
                raise CorruptCheckpoint(record.name, key, "missing (no index, no staged manifest)")
            key = f"{staged}/{MANIFEST_FILE}"
            body = self.bucket.read(key) or b""
        if hash_bytes(body) != record.manifest_hash:
            raise CorruptCheckpoint(record.name, key, "hash differs from the registry's record")
        signing = self._context.signing
        if signing.required or signing.verifier is not None:  # else a signature is not read (one GET less)
            signature_key = key.rsplit("/", 1)[0] + "/" + SIGNATURE_FILE
            check_signature_bytes(record.name, signature_key, self.bucket.read(signature_key), body, signing)
        manifest = Manifest.from_bytes(body)
        if manifest.name != record.name or manifest.run != self.run:
            wrong = f"manifest is for {manifest.name!r} of {manifest.run!r}"
            raise CorruptCheckpoint(record.name, key, wrong)
        objects = str((manifest.origin or {}).get("objects", ""))
        staging_root = self.key(".staging")
        if not objects.startswith(staging_root + "/") or "/" in objects[len(staging_root) + 1 :]:
            elsewhere = f"its objects are not in this store's staging: {objects!r}"
            raise CorruptCheckpoint(record.name, key, elsewhere)
        return manifest, objects

    def manifest(self, name: str = "latest") -> Manifest:
        return self._manifest_of(self.record(name))[0]

    def load(self, name: str = "latest", *, mapped: bool = True) -> LoadedCheckpoint:
        """Every object fetched in parallel ranges, its size and hash verified, then decoded (``mapped`` is
        ignored: the bytes live in this process's memory)."""
        record = self.record(name)
        if record.state is not CheckpointState.COMMITTED:
            raise self._conflict(record, "only committed checkpoints load")
        manifest, objects = self._manifest_of(record)
        files = {
            f.path: self.bucket.read_verified(record.name, f"{objects}/{f.path}", f.bytes, f.hash)
            for f in manifest.files
        }
        return LoadedCheckpoint(read_state(record.name, files), record, manifest)

    def verify(self, name: str = "latest") -> VerifyReport:
        record = self.record(name)
        if record.state is CheckpointState.EVICTED:
            raise self._conflict(record, "its objects are gone; there is nothing to verify")
        try:
            manifest, objects = self._manifest_of(record)
            for f in manifest.files:
                self.bucket.read_verified(record.name, f"{objects}/{f.path}", f.bytes, f.hash)
        except CorruptCheckpoint as error:
            return VerifyReport(record.name, (Problem(error.file, error.reason),))
        return VerifyReport(record.name)

    def _expected(self, record: CheckpointRecord) -> Expected:
        return Expected(self.run, record.name, record.manifest_hash, self._context.signing)

    # -- quarantine, release, eviction ---------------------------------------------------------------

    def quarantine(self, name: str, *, reason: str) -> CheckpointRecord:
        """The registry decides (nothing loads it from then on); a note records why. Objects stay where
        they are: S3 cannot move them, and nothing here copies data."""
        if not reason or not reason.strip():
            raise InvalidArgument("reason", reason, "a quarantine needs a reason")
        record = self.registry.set_checkpoint_state(
            self.run,
            self.record(name).name,
            CheckpointState.QUARANTINED,
            reason=reason,
            expect=(CheckpointState.COMMITTED,),
        )
        recovery.note(self, record.name, "quarantined", {"reason": reason, "token": record.token})
        return record

    def release(self, name: str, *, reason: str = "released by operator") -> CheckpointRecord:
        record = self.record(name)
        if record.state is not CheckpointState.QUARANTINED:
            raise self._conflict(record, "only a quarantined checkpoint can be released")
        report = self.verify(record.name)
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
        recovery.note(self, record.name, "released", {"reason": reason})
        return record

    def _discard(self, name: str) -> None:
        recovery.evict(self, name)

    def publish_live(self, name: str) -> None:
        recovery.publish_live(self, name)

    def survey(self) -> recovery.Survey:
        """Unregistered prefixes, refused staging, staging of gone writers (``incident scan``)."""
        return recovery.survey(self)

    def stored_bytes(self) -> int:
        top = self.key(MANIFEST_FILE)[: -len(MANIFEST_FILE)]
        return sum(e.size for e in self.bucket.keys(top))

    def stored_objects(self) -> int:
        top = self.key(MANIFEST_FILE)[: -len(MANIFEST_FILE)]
        return sum(1 for e in self.bucket.keys(top) if recovery.is_checkpoint_object(e.key[len(top) :]))


CheckpointStore.object_store = BucketStore  # s3:// URLs open a BucketStore (see CheckpointStore.__new__)


__all__ = ["BucketStore"]
