"""A ``torch.distributed.checkpoint`` storage writer that commits through the fenced store.

DCP's ``FileSystemWriter`` writes every rank's shard straight into the checkpoint's final directory and
renames only ``.metadata`` into place, so a stale job saving under the same id tears a committed
checkpoint. Here (docs/design.md, "Distributed saves"):

1. the coordinator (``prepare_global_plan``) checks the lease, the budget and the name, and makes one
   staging directory for the save; its name reaches every rank inside the plan DCP scatters - one nonce
   for the whole job, not one per process;
2. every rank (``write_data``) writes its chunks into one file there, hashed while written and fsynced,
   then a record of what it wrote under which token (``rank-NNNNN.json``, fsynced);
3. the coordinator (``finish``, which DCP calls only once every rank's writes returned) requires one record
   per rank, checks each against the results DCP gathered (token, staging name, sizes, every chunk inside
   its file, every chunk of the plan written exactly once), writes the JSON index (no pickle) and commits
   through the registry transaction - the only point of commit - then rolls forward.

Any refusal raises in ``finish``; DCP hands it to every rank as ``CheckpointException``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItemType
from torch.distributed.checkpoint.storage import StorageWriter, WriteResult
from torch.futures import Future

from trainguard._os.hashing import hash_file
from trainguard.checkpoints import CheckpointStore
from trainguard.checkpoints.codecs import FileRecord
from trainguard.checkpoints.prepared import PreparedSave, staging_directory, write_durable
from trainguard.distributed._index import ALIGNMENT, INDEX_FILE, Stored, index_bytes
from trainguard.errors import CheckpointRejected, InvalidArgument
from trainguard.registry import CheckpointRecord, Lease


@dataclass(frozen=True)
class Slot:
    """What the coordinator tells each rank in its plan: where to write, as which rank, under which token."""

    staging: str
    rank: int
    token: int


def shard_file(rank: int) -> str:
    return f"shard-{rank:05d}.bin"


def rank_record_file(rank: int) -> str:
    return f"rank-{rank:05d}.json"


class Writer(StorageWriter):
    """``dcp.save(state, storage_writer=Writer(store, lease, episode=N))`` on every rank.

    The coordinating rank needs the :class:`CheckpointStore` and the job's :class:`Lease`; the other ranks
    need only the store's directory (a path, shared with the coordinator's host) and the job's ``token``
    (see :class:`trainguard.distributed.JobGuard`, which builds the right one on each rank). ``name``
    (or dcp's ``checkpoint_id``) defaults to the store's ``ep{episode}-t{token}``; ``extra`` is the
    non-tensor state, kept as JSON in the index (DCP would pickle it). After a successful save,
    ``committed`` on the coordinator is the checkpoint's record."""

    def __init__(
        self,
        store: CheckpointStore | str | os.PathLike[str],
        lease: Lease | None = None,
        *,
        episode: int,
        token: int | None = None,
        name: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(store, CheckpointStore) and not store.on_filesystem:  # ranks write into its directory
            raise InvalidArgument("store", store.location, "a distributed save needs a filesystem store")
        self.store = store if isinstance(store, CheckpointStore) else None
        self.root = store.root if isinstance(store, CheckpointStore) else Path(store).resolve()
        self.lease = lease
        if lease is not None:
            token = lease.token
        if isinstance(token, bool) or not isinstance(token, int) or token < 1:
            raise InvalidArgument(
                "token", token, "a rank writes under the job's token: pass lease= or token="
            )
        self.token = token
        self.episode = episode
        self.name = name
        self.metrics = dict(metrics or {})
        self.extra = dict(extra or {})
        json.dumps(self.extra, allow_nan=False)  # refused now (TypeError/ValueError), not after the writes
        self.committed: CheckpointRecord | None = None
        self._prepared: PreparedSave | None = None
        self._coordinator = False

    # -- every rank --------------------------------------------------------------------------------

    def abandon(self) -> None:
        """Remove the staging directory of a save through this writer that failed before the registry
        decided (a rank raised, the job goes on). Nothing committed is touched; a no-op elsewhere."""
        if self._prepared is not None:
            self._prepared.abandon()
            self._prepared = None

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self.abandon()  # a previous save through this writer failed: its files go
        if checkpoint_id:
            self.name = os.fspath(checkpoint_id)
        self.committed = None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        # (Named `kwargs` on purpose: DCP passes rank and use_collectives only to a parameter of that name.)
        if kwargs.get("use_collectives", True) is False:
            raise InvalidArgument(
                "use_collectives",
                False,
                "a fenced save needs the collectives: one coordinator commits after every rank wrote",
            )
        self._coordinator = is_coordinator
        if is_coordinator and (self.store is None or self.lease is None):
            raise InvalidArgument(
                "store",
                str(self.root),
                "the coordinating rank commits: it needs the CheckpointStore and the lease",
            )

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        not_tensors = sorted(item.index.fqn for item in plan.items if item.type == WriteItemType.BYTE_IO)
        if not_tensors:
            raise InvalidArgument(
                "state",
                ", ".join(not_tensors[:5]),
                "is not a tensor: DCP would pickle it; keep non-tensor state in Writer(extra=...) (JSON)",
            )
        return plan

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        slot = plan.storage_data
        if not isinstance(slot, Slot):
            raise InvalidArgument(
                "plan", type(slot).__name__, "carries no staging slot: was it planned by a Writer?"
            )
        if slot.token != self.token:
            raise InvalidArgument(
                "token",
                self.token,
                f"this rank writes for token {self.token}, the coordinator for {slot.token}",
            )
        staging = staging_directory(self.root, slot.staging)
        results: list[WriteResult] = []
        layout: list[tuple[Any, torch.Tensor, int]] = []
        position = 0
        for item in plan.items:
            tensor = planner.resolve_data(item)
            assert isinstance(tensor, torch.Tensor)  # byte items were refused in prepare_local_plan
            data = tensor.detach().to("cpu").contiguous()
            length = data.numel() * data.element_size()
            layout.append((item, data, position))
            results.append(WriteResult(item.index, length, Stored(shard_file(slot.rank), position, length)))
            position += -(-length // ALIGNMENT) * ALIGNMENT
        size, digest = write_durable(staging / shard_file(slot.rank), _chunks(layout))
        record = {
            "rank": slot.rank,
            "token": slot.token,
            "staging": slot.staging,
            "files": [{"path": shard_file(slot.rank), "bytes": size, "hash": digest}],
            "items": len(results),
        }
        write_durable(staging / rank_record_file(slot.rank), [json.dumps(record, sort_keys=True).encode()])
        done: Future[list[WriteResult]] = Future()
        done.set_result(results)
        return done

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.name)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False  # never chosen by DCP on its own: a fenced save is asked for by name

    # -- the coordinator -----------------------------------------------------------------------------

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        assert self.store is not None and self.lease is not None  # checked in set_up_storage_writer
        self._prepared = PreparedSave(
            self.store, self.lease, self.episode, "dcp", name=self.name, metrics=self.metrics
        )
        staging = self._prepared.begin()
        self.name = self._prepared.name
        return [
            replace(plan, storage_data=Slot(staging.name, rank, self.token))
            for rank, plan in enumerate(plans)
        ]

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        prepared = self._prepared
        if prepared is None or prepared.staging is None:
            raise InvalidArgument("finish", None, "called without a planned save on this coordinator")
        staging = prepared.staging
        try:
            files, stored = _check_ranks(staging, prepared.name or "", self.token, metadata, results)
            index = index_bytes(metadata, stored, self.extra)
            size, digest = write_durable(staging / INDEX_FILE, [index])
            files.append(FileRecord(INDEX_FILE, size, digest, "dcp-index"))
        except BaseException:
            prepared.abandon()
            self._prepared = None
            raise
        self._prepared = None  # from here the commit protocol owns the staging directory
        self.committed = prepared.commit(files)


def _chunks(layout: list[tuple[Any, torch.Tensor, int]]) -> Iterator[memoryview | bytes]:
    """The shard's bytes in order: each chunk's tensor memory (no copy), zero padding up to its start."""
    position = 0
    for _item, data, start in layout:
        if start > position:
            yield bytes(start - position)
        if data.numel():
            view = data.reshape(-1).view(torch.uint8).numpy().data
            yield view
            position = start + len(view)
        else:
            position = start


def _check_ranks(
    staging: Path, name: str, token: int, metadata: Metadata, results: list[list[WriteResult]]
) -> tuple[list[FileRecord], dict[MetadataIndex, Stored]]:
    """Every rank's record present, under this save's token and staging directory, its files there at the
    size it recorded, every result inside a file its rank wrote, every chunk of the plan written once."""
    files: list[FileRecord] = []
    stored: dict[MetadataIndex, Stored] = {}
    for rank, rank_results in enumerate(results):
        record = _rank_record(staging, rank, name, token)
        sizes = {}
        for entry in record["files"]:
            actual = os.stat(staging / entry["path"]).st_size
            if actual != entry["bytes"]:
                raise CheckpointRejected(
                    name,
                    f"rank {rank}'s {entry['path']} has {actual} bytes, its record says {entry['bytes']}",
                )
            sizes[entry["path"]] = actual
            files.append(FileRecord(entry["path"], actual, entry["hash"], "dcp-shard"))
        path = staging / rank_record_file(rank)
        files.append(FileRecord(path.name, path.stat().st_size, hash_file(path)[1], "dcp-rank"))
        if record.get("items") != len(rank_results):
            raise CheckpointRejected(
                name, f"rank {rank} recorded {record.get('items')} chunks, DCP gathered {len(rank_results)}"
            )
        for result in rank_results:
            where = result.storage_data
            if (
                not isinstance(where, Stored)
                or where.file not in sizes
                or where.start + where.length > sizes[where.file]
            ):
                raise CheckpointRejected(
                    name, f"rank {rank}'s result for {result.index.fqn!r} is not in its files"
                )
            if result.index in stored:
                raise CheckpointRejected(
                    name, f"chunk {result.index.fqn!r} {result.index.offset} written twice"
                )
            stored[result.index] = where
    for fqn, entry in metadata.state_dict_metadata.items():
        chunks = entry.chunks if isinstance(entry, TensorStorageMetadata) else []
        if not chunks or any(MetadataIndex(fqn, chunk.offsets) not in stored for chunk in chunks):
            raise CheckpointRejected(name, f"{fqn!r} was planned but not every chunk of it was written")
    return files, stored


def _rank_record(staging: Path, rank: int, name: str, token: int) -> dict[str, Any]:
    path = staging / rank_record_file(rank)
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointRejected(
            name, f"rank {rank} left no record of its writes; nothing committed"
        ) from None
    except (OSError, ValueError) as error:
        raise CheckpointRejected(name, f"rank {rank}'s record is unreadable: {error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("files"), list):
        raise CheckpointRejected(name, f"rank {rank}'s record is not a record of files")
    if record.get("rank") != rank or record.get("token") != token or record.get("staging") != staging.name:
        raise CheckpointRejected(
            name,
            f"rank {rank}'s record is for rank {record.get('rank')}, token {record.get('token')}, "
            f"staging {record.get('staging')!r}; this save is token {token} in {staging.name!r}",
        )
    return record


__all__ = ["Slot", "Writer", "rank_record_file", "shard_file"]
