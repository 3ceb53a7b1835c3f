"""The JSON index that takes the place of DCP's pickled ``.metadata``.

DCP's ``FileSystemReader`` reads ``.metadata`` with ``pickle.load``: whoever can write into the checkpoint
directory can run code in every process that loads it. The index holds what DCP's ``Metadata`` holds for
tensors - dtype, global size, chunks, where each chunk's bytes are - as plain JSON, and the reader rebuilds
``Metadata`` from it with nothing but constructors. Non-tensor values are not in it: DCP would pickle them
("byte items"); they go into ``extra`` (JSON) instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

INDEX_FILE = "dcp-index.json"
INDEX_FORMAT = "trainguard.dcp/1"
ALIGNMENT = 64  # every chunk starts at a multiple: a view of any dtype on the mapped file is aligned


@dataclass(frozen=True)
class Stored:
    """Where one chunk's bytes are: ``WriteResult.storage_data`` on the way to the coordinator, and the
    reader's ``Metadata.storage_data`` values."""

    file: str
    start: int
    length: int


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_of(name: Any) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype {name!r} is not a torch dtype")  # noqa: TRY004 - ValueError means "malformed"
    return dtype


def index_bytes(metadata: Metadata, stored: dict[MetadataIndex, Stored], extra: dict[str, Any]) -> bytes:
    """The index of a save: DCP's global ``metadata`` (tensors only) and where every chunk was written."""
    tensors: dict[str, Any] = {}
    for fqn, entry in metadata.state_dict_metadata.items():
        if not isinstance(entry, TensorStorageMetadata):
            raise TypeError(f"state key {fqn!r} is not a tensor")
        tensors[fqn] = {
            "dtype": dtype_name(entry.properties.dtype),
            "requires_grad": bool(entry.properties.requires_grad),
            "size": list(entry.size),
            "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in entry.chunks],
        }
    storage = [
        {"fqn": index.fqn, "offsets": list(index.offset or ()), **vars(where)}
        for index, where in sorted(stored.items(), key=lambda item: (item[0].fqn, list(item[0].offset or ())))
    ]
    planner_data = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    body = {
        "format": INDEX_FORMAT,
        "tensors": tensors,
        "storage": storage,
        "paths": {fqn: list(path) for fqn, path in planner_data.items()},
        "extra": extra,
    }
    return json.dumps(body, sort_keys=True, allow_nan=False).encode() + b"\n"


def parse_index(data: bytes | memoryview) -> tuple[Metadata, dict[str, Any]]:
    """DCP ``Metadata`` (its ``storage_data`` maps each chunk to a :class:`Stored`) and the extra values;
    ValueError on anything malformed."""
    try:
        body = json.loads(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(body, dict) or body.get("format") != INDEX_FORMAT:
        raise ValueError(f"not a {INDEX_FORMAT} index")
    try:
        state: dict[str, Any] = {
            fqn: TensorStorageMetadata(
                properties=TensorProperties(
                    dtype=dtype_of(entry["dtype"]), requires_grad=bool(entry["requires_grad"])
                ),
                size=torch.Size(_ints(entry["size"])),
                chunks=[
                    ChunkStorageMetadata(torch.Size(_ints(c["offsets"])), torch.Size(_ints(c["sizes"])))
                    for c in entry["chunks"]
                ],
            )
            for fqn, entry in body["tensors"].items()
        }
        storage = {
            MetadataIndex(s["fqn"], _ints(s["offsets"])): Stored(
                str(s["file"]), *_ints([s["start"], s["length"]])
            )
            for s in body["storage"]
        }
        paths = {fqn: tuple(path) for fqn, path in body.get("paths", {}).items()}
        extra = body.get("extra") or {}
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"malformed index: {type(error).__name__}: {error}") from None
    metadata = Metadata(
        state_dict_metadata=state, planner_data=paths, storage_data=storage, storage_meta=StorageMeta()
    )
    return metadata, extra


def _ints(values: Any) -> list[int]:
    if not isinstance(values, list) or not all(type(v) is int and v >= 0 for v in values):
        raise ValueError(f"{values!r} is not a list of non-negative integers")
    return values


__all__ = [
    "ALIGNMENT",
    "INDEX_FILE",
    "INDEX_FORMAT",
    "Stored",
    "dtype_name",
    "dtype_of",
    "index_bytes",
    "parse_index",
]
