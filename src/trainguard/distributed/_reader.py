"""A ``torch.distributed.checkpoint`` storage reader over the fenced store: nothing unpickled, every byte
verified.

The checkpoint is named through the registry (``"latest"`` or a name); its manifest's hash is checked
against the registry's, the index's and every shard's hash against the manifest, before any byte is
used. The files read are those the committed manifest lists - never a directory listing - and DCP's
``Metadata`` is rebuilt from the JSON index (``_index``). Resharding is DCP's own: each rank asks for the
chunks its tensors overlap, and ``read_data`` serves them from the verified shards.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from trainguard.checkpoints import LATEST, CheckpointStore
from trainguard.checkpoints.codecs import FileRecord
from trainguard.checkpoints.prepared import verified_checkpoint, verified_file
from trainguard.distributed._index import INDEX_FILE, Stored, parse_index
from trainguard.errors import CorruptCheckpoint, InvalidArgument


class Reader(StorageReader):
    """``dcp.load(state, storage_reader=Reader(store, "latest"))`` on every rank (each with its own
    store, opened read-only: ``CheckpointStore.open_existing(root, run=..., read_only=True)``).

    ``"latest"`` is resolved once per rank; should a commit land between two ranks' resolutions, the
    coordinator refuses the load rather than mix two checkpoints. ``extra`` holds the save's non-tensor
    state after the load; ``name`` the checkpoint read."""

    def __init__(self, store: CheckpointStore, name: str = LATEST) -> None:
        self.store = store
        self.name = name
        self.extra: dict[str, Any] = {}
        self._directory: Path | None = None
        self._files: dict[str, FileRecord] = {}
        self._storage: dict[Any, Stored] = {}
        self._tensors: dict[str, Any] = {}

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.name = os.fspath(checkpoint_id)

    def read_metadata(self, *args: Any) -> Metadata:
        # (No `kwargs` parameter: DCP would then retry with a rank-local metadata file, a save made without
        # collectives - which this store never commits.)
        record, manifest, directory = verified_checkpoint(self.store, self.name)
        if manifest.format != "dcp":
            raise InvalidArgument(
                "checkpoint",
                record.name,
                f"is a {manifest.format} checkpoint, not DCP: load it with store.load()",
            )
        self.name, self._directory = record.name, directory
        self._files = {f.path: f for f in manifest.files}
        if INDEX_FILE not in self._files:
            raise CorruptCheckpoint(record.name, str(directory / INDEX_FILE), "not listed in the manifest")
        data = verified_file(record.name, directory, self._files[INDEX_FILE])
        try:
            metadata, self.extra = parse_index(data.data)
        except ValueError as error:
            raise CorruptCheckpoint(record.name, str(directory / INDEX_FILE), str(error)) from error
        self._storage = metadata.storage_data
        self._tensors = metadata.state_dict_metadata
        for where in self._storage.values():
            listed = self._files.get(where.file)
            if listed is None or listed.codec != "dcp-shard" or where.start + where.length > listed.bytes:
                raise CorruptCheckpoint(
                    record.name, str(directory / INDEX_FILE), f"points outside its shards: {where}"
                )
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any) -> None:
        self._storage = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return replace(plan, storage_data=self.name)  # which checkpoint this rank resolved

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        names = sorted({str(plan.storage_data) for plan in plans})
        if len(names) > 1:
            raise InvalidArgument(
                "name",
                self.name,
                f"resolved to different checkpoints on different ranks ({', '.join(names)}): "
                "a commit landed between them; load one by its name",
            )
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        assert self._directory is not None  # read_metadata came first
        by_file: dict[str, list[Any]] = {}
        for item in plan.items:
            if item.type == LoadItemType.BYTE_IO:
                raise InvalidArgument(
                    "state",
                    item.dest_index.fqn,
                    "is not a tensor: a fenced DCP checkpoint holds tensors only",
                )
            by_file.setdefault(self._storage[item.storage_index].file, []).append(item)
        for file, items in by_file.items():
            data = verified_file(self.name, self._directory, self._files[file])  # hashed before use
            for item in items:
                self._copy(data, item, planner)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def _copy(self, data: np.ndarray, item: Any, planner: LoadPlanner) -> None:
        where = self._storage[item.storage_index]
        entry = self._tensors.get(item.storage_index.fqn)
        if not isinstance(entry, TensorStorageMetadata):
            raise CorruptCheckpoint(
                self.name, where.file, f"{item.storage_index.fqn!r} has no tensor metadata"
            )
        sizes = next(c.sizes for c in entry.chunks if c.offsets == item.storage_index.offset)
        raw = torch.from_numpy(data[where.start : where.start + where.length])
        chunk = (
            raw.view(entry.properties.dtype).reshape(sizes)
            if where.length
            else torch.empty(sizes, dtype=entry.properties.dtype)
        )
        piece = narrow_tensor_by_index(chunk, item.storage_offsets, item.lengths)
        target = planner.resolve_tensor(item).detach()
        if target.size() != piece.size():
            raise CorruptCheckpoint(
                self.name,
                where.file,
                f"{item.storage_index.fqn!r}: chunk {list(piece.size())}, target {list(target.size())}",
            )
        target.copy_(piece)
        planner.commit_tensor(item, target)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False


__all__ = ["Reader"]
