"""Recovery and the after-commit steps of a store on object storage (``_bucket_store``).

The registry is the truth; the bucket follows. Rules (docs/design.md, "Object storage"):
- a staging prefix whose checkpoint the registry decided (its token, its manifest hash) is the checkpoint's
  data - it stays where it is; a missing index is written (rolled forward), an eviction left half-done is
  finished;
- a staging prefix that was never decided is left alone while its writer may be alive (same host: pid and
  start time; other host: younger than the grace period) - unless it carries a ``REFUSED`` note (its
  writer was told no); otherwise it is moved to ``.quarantine/`` (a server-side copy, then the delete of
  the original: lifecycle rules on ``.quarantine/`` may expire it, trainguard never does);
- an index without a registry row can only come from outside trainguard: moved to quarantine;
- a step that fails is reported and left for the next open.
Every write here is conditional or idempotent, so two processes recovering at once cannot tear anything.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainguard._os.hashing import hash_bytes
from trainguard._os.identity import host_key
from trainguard.checkpoints._bucket import Listed
from trainguard.checkpoints._recovery import RecoveryReport
from trainguard.checkpoints.layout import StagingName
from trainguard.checkpoints.manifest import MANIFEST_FILE
from trainguard.checkpoints.signing import SIGNATURE_FILE
from trainguard.errors import CheckpointWriteError
from trainguard.registry import CheckpointRecord, CheckpointState, EventKind

if TYPE_CHECKING:
    from trainguard.checkpoints._bucket_store import BucketStore

REFUSED_NOTE = "REFUSED.json"
LIVE_KEY = "LIVE.json"
_DECIDED = (CheckpointState.COMMITTED, CheckpointState.QUARANTINED)
_CAS_ATTEMPTS = 5
_NOTE = re.compile(r"^\d+-(quarantined|released)\.json$")


def index(store: BucketStore, name: str, manifest: bytes, signature: bytes | None) -> None:
    """Step 6 (and its roll-forward): the signature, then the manifest, at the checkpoint's own prefix,
    written once. Another copy of the same bytes already there is success (a racing recovery)."""
    if signature is not None:
        store.bucket.put_new(store.key(name, SIGNATURE_FILE), signature)
    key = store.key(name, MANIFEST_FILE)
    if not store.bucket.put_new(key, manifest).done and store.bucket.read(key) != manifest:
        taken = FileExistsError(f"{key} holds another manifest")
        raise CheckpointWriteError("index", key, taken, committed=True)


def find_staged(store: BucketStore, record: CheckpointRecord) -> str | None:
    """The staging prefix holding a decided checkpoint's objects (its token, its manifest hash)."""
    root = store.key(".staging")
    names = {_staging_of(root, entry.key) for entry in store.bucket.keys(f"{root}/{record.name}.")}
    for staging in sorted(n for n in names if n):
        parsed = StagingName.parse(staging)
        if parsed is None or parsed.name != record.name or parsed.token != record.token:
            continue
        body = store.bucket.read(f"{root}/{staging}/{MANIFEST_FILE}")
        if body is not None and hash_bytes(body) == record.manifest_hash:
            return f"{root}/{staging}"
    return None


def note(store: BucketStore, name: str, what: str, detail: dict[str, Any]) -> None:
    """An append-only record beside the checkpoint's quarantine history (never overwritten)."""
    body = {"run": store.run, "checkpoint": name, "what": what, "at": time.time(), **detail}
    key = store.key(".quarantine", name, f"{time.time_ns()}-{what}.json")
    store.bucket.put_new(key, json.dumps(body).encode())


def evict(store: BucketStore, name: str) -> None:
    """Retention's delete, after the registry recorded the eviction: the data first, the index last, so an
    interruption leaves an index that leads the next recovery to what is left."""
    record = store.registry.checkpoint(store.run, name)
    body = store.bucket.read(store.key(name, MANIFEST_FILE))
    objects = None
    if body is not None:
        objects = str((json.loads(body).get("origin") or {}).get("objects") or "") or None
    objects = objects or find_staged(store, record)
    if objects is not None and objects.startswith(store.key(".staging") + "/"):
        for entry in list(store.bucket.keys(objects + "/")):
            store.bucket.delete(entry.key)
    for leaf in (SIGNATURE_FILE, MANIFEST_FILE):
        store.bucket.delete(store.key(name, leaf))


def publish_live(store: BucketStore, name: str) -> None:
    """``LIVE.json``: the registry's live pointer, for readers that only see the bucket. Moved only from
    the version this process read (``If-Match``); a concurrent mover wins, and the next attempt writes what
    the registry says then - so the object never ends older than the registry's last word."""
    key = store.key(LIVE_KEY)
    for _ in range(_CAS_ATTEMPTS):
        current = store.registry.live_pointer(store.run) or name
        found = store.bucket.read_with_etag(key)
        body = json.dumps({"run": store.run, "checkpoint": current, "moved_at": time.time()}).encode()
        if store.bucket.swap(key, body, found[1] if found else None).done:
            return
    raise CheckpointWriteError("live", key, RuntimeError("the live pointer kept changing under this mover"))


@dataclass(frozen=True)
class Survey:
    """What ``incident scan`` reports of a bucket store: prefixes the registry never committed, staging
    whose commit was refused (a stale writer's evidence), staging of writers that are gone."""

    unregistered: list[str]
    refused: list[str]
    abandoned: list[str]


def _listing(store: BucketStore) -> tuple[dict[str, list[Listed]], dict[str, list[Listed]]]:
    """(staging prefix -> its objects, checkpoint prefix -> its objects), from one listing."""
    stagings: dict[str, list[Listed]] = defaultdict(list)
    indexes: dict[str, list[Listed]] = defaultdict(list)
    prefix = store.key(".staging") + "/"
    top = store.key(MANIFEST_FILE)[: -len(MANIFEST_FILE)]
    for entry in store.bucket.keys(top):
        rest = entry.key[len(top) :]
        if entry.key.startswith(prefix):
            stagings[entry.key[len(prefix) :].split("/", 1)[0]].append(entry)
        elif "/" in rest and not rest.startswith("."):
            indexes[rest.split("/", 1)[0]].append(entry)
    return stagings, indexes


def survey(store: BucketStore) -> Survey:
    stagings, indexes = _listing(store)
    rows = {r.name: r for r in store.registry.checkpoints(store.run, states=None)}
    refused, abandoned = [], []
    for staging, entries in sorted(stagings.items()):
        parsed = StagingName.parse(staging)
        row = rows.get(parsed.name) if parsed else None
        if row is not None and parsed is not None and row.token == parsed.token:
            continue  # a decided checkpoint's objects
        if any(e.key.endswith("/" + REFUSED_NOTE) for e in entries):
            refused.append(staging)
        elif parsed is None or parsed.writer_alive(host_key()) is False:
            abandoned.append(staging)
    unregistered = sorted(name for name in indexes if name not in rows)
    return Survey(unregistered, refused, abandoned)


def recover(store: BucketStore, *, foreign_grace: float) -> RecoveryReport:
    report = RecoveryReport()
    # Listing before the rows (as on disk): a staging prefix decided in between already has its row.
    stagings, indexes = _listing(store)
    rows = {r.name: r for r in store.registry.checkpoints(store.run, states=None)}
    for staging, entries in sorted(stagings.items()):
        try:
            _recover_staging(store, staging, entries, rows, report, foreign_grace)
        except Exception as error:  # one prefix's failure must not stop the rest, nor the open
            report.failed.append(f"{staging}: {error}")
    for name, entries in sorted(indexes.items()):
        row = rows.get(name)
        try:
            if row is None:
                _move(store, entries, store.key(name), store.key(".quarantine", f"{name}.unregistered"))
                report.quarantined_unregistered.append(name)
                _event(store, name, "unregistered", None)
            elif row.state is CheckpointState.EVICTED:
                evict(store, name)
                report.finished.append(f"evicted {name}")
        except Exception as error:
            report.failed.append(f"{name}: {error}")
    return report


def _recover_staging(  # noqa: PLR0917 - one step of recover(), its state passed along
    store: BucketStore,
    staging: str,
    entries: list[Listed],
    rows: dict[str, CheckpointRecord],
    report: RecoveryReport,
    foreign_grace: float,
) -> None:
    parsed = StagingName.parse(staging)
    row = rows.get(parsed.name) if parsed else None
    where = store.key(".staging", staging)
    leaves = {e.key.rsplit("/", 1)[1] for e in entries}
    if parsed is not None and row is not None and row.token == parsed.token and MANIFEST_FILE in leaves:
        body = store.bucket.read(f"{where}/{MANIFEST_FILE}")
        if body is not None and hash_bytes(body) == row.manifest_hash:
            if row.state in _DECIDED and store.bucket.head(store.key(row.name, MANIFEST_FILE)) is None:
                signature = store.bucket.read(f"{where}/{SIGNATURE_FILE}")
                index(store, row.name, body, signature)
                report.rolled_forward.append(row.name)
                store.registry.add_event(
                    store.run,
                    EventKind.CHECKPOINT_ROLLED_FORWARD,
                    token=row.token,
                    checkpoint=row.name,
                    detail={"staging": staging, "state": row.state.value},
                )
            elif row.state is CheckpointState.EVICTED:
                evict(store, row.name)
                report.finished.append(f"evicted {row.name}")
            return  # a decided checkpoint's objects stay where they were staged
    refused = REFUSED_NOTE in leaves
    alive = parsed.writer_alive(host_key()) if parsed else None
    newest = max(e.modified for e in entries)
    if not refused and (alive or (alive is None and time.time() - newest < foreign_grace)):
        report.left_for_live_writer.append(staging)
        return
    _move(store, entries, where, store.key(".quarantine", staging))
    report.removed_staging.append(staging)
    _event(store, parsed.name if parsed else staging, "refused" if refused else "abandoned staging", staging)


def _move(store: BucketStore, entries: list[Listed], source: str, target: str) -> None:
    """Copy every object server-side, then delete the originals - an interruption leaves both copies, and
    the next recovery finishes (a copy is idempotent)."""
    for entry in entries:
        store.bucket.copy(entry.key, target + entry.key[len(source) :])
    for entry in entries:
        store.bucket.delete(entry.key)


def _event(store: BucketStore, name: str, reason: str, staging: str | None) -> None:
    store.registry.add_event(
        store.run,
        EventKind.CHECKPOINT_QUARANTINED,
        checkpoint=name,
        reason=reason,
        detail={"staging": staging, "committed": False},
    )


def is_checkpoint_object(relative: str) -> bool:
    """A key (relative to the store's prefix) that holds checkpoint data or a manifest - not a binding,
    the live pointer, or a quarantine/release note."""
    parts = relative.split("/")
    if parts[0] in (".trainguard", LIVE_KEY):
        return False
    return not (parts[0] == ".quarantine" and len(parts) == 3 and _NOTE.match(parts[2]))


def _staging_of(root: str, key: str) -> str | None:
    rest = key[len(root) + 1 :]
    return rest.split("/", 1)[0] if "/" in rest else None


__all__ = [
    "LIVE_KEY",
    "REFUSED_NOTE",
    "Survey",
    "evict",
    "find_staged",
    "index",
    "is_checkpoint_object",
    "note",
    "publish_live",
    "recover",
    "survey",
]
