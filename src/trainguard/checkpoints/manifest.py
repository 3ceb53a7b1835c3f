"""MANIFEST.json: what a checkpoint is, who wrote it, and the hash of every file in it.

The registry stores the hash of the manifest's bytes; the manifest stores the hash of every other file.
So one committed row pins down every byte of the checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainguard._os.hashing import ALGORITHM
from trainguard.checkpoints.codecs import FileRecord

MANIFEST_FILE = "MANIFEST.json"
SIGNATURE_FILE = "MANIFEST.sig"  # see trainguard.checkpoints.signing
MANIFEST_FORMAT = "trainguard.checkpoint/1"


@dataclass(frozen=True)
class Manifest:
    run: str
    name: str
    episode: int
    token: int
    format: str
    files: tuple[FileRecord, ...]
    parent: str | None = None
    fingerprint: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    writer: dict[str, Any] = field(default_factory=dict)
    code_hash: str | None = None
    config_hash: str | None = None
    features: dict[str, Any] | None = None  # canonical feature content behind ``fingerprint``
    origin: dict[str, Any] | None = None  # e.g. {"adopted_from": path} for a legacy checkpoint

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_bytes(self) -> bytes:
        body = {
            "manifest_format": MANIFEST_FORMAT,
            "hash_algorithm": ALGORITHM,
            "run": self.run,
            "name": self.name,
            "episode": self.episode,
            "token": self.token,
            "format": self.format,
            "parent": self.parent,
            "fingerprint": self.fingerprint,
            "metrics": self.metrics,
            "files": [f.as_dict() for f in self.files],
            "created_at": self.created_at,
            "created_at_iso": datetime.fromtimestamp(self.created_at, tz=UTC).isoformat(),
            "host": self.writer.get("host"),
            "pid": self.writer.get("pid"),
            "writer": self.writer,
            "code_hash": self.code_hash,
            "config_hash": self.config_hash,
            "features": self.features,
            "origin": self.origin,
        }
        return json.dumps(body, indent=2, sort_keys=True, default=_jsonable).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse a manifest; raises ValueError (with the reason) on anything malformed - every field is
        checked for its type and range, because a manifest may have been written by someone else."""
        try:
            body = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise ValueError(f"not JSON: {type(error).__name__}: {error}") from None
        if not isinstance(body, dict) or body.get("manifest_format") != MANIFEST_FORMAT:
            raise ValueError(f"not a {MANIFEST_FORMAT} manifest")
        if body.get("hash_algorithm") != ALGORITHM:
            raise ValueError(f"hash algorithm {body.get('hash_algorithm')!r} is not {ALGORITHM!r}")
        files = body.get("files")
        if not isinstance(files, list):
            raise ValueError("field 'files' is not a list")  # noqa: TRY004 - ValueError means "malformed"
        return cls(
            run=_text(body, "run"),
            name=_text(body, "name"),
            episode=_count(body, "episode"),
            token=_count(body, "token"),
            format=_text(body, "format"),
            files=tuple(_file(entry) for entry in files),
            parent=_text(body, "parent", optional=True),
            fingerprint=_text(body, "fingerprint", optional=True),
            metrics=_mapping(body, "metrics") or {},
            created_at=_finite(body.get("created_at", 0.0)),
            writer=_mapping(body, "writer") or {},
            code_hash=_text(body, "code_hash", optional=True),
            config_hash=_text(body, "config_hash", optional=True),
            features=_mapping(body, "features"),
            origin=_mapping(body, "origin"),
        )

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        return cls.from_bytes((directory / MANIFEST_FILE).read_bytes())


_MAX_COUNT = 2**63 - 1  # what the registry can store
# dcp-*: a torch.distributed.checkpoint save (trainguard.distributed): raw tensor shards, the JSON index that
# replaces DCP's pickled .metadata, and each rank's record of what it wrote.
_CODECS = frozenset({"safetensors", "json", "torch", "dcp-shard", "dcp-index", "dcp-rank"})


def _text(body: dict[str, Any], key: str, *, optional: bool = False) -> Any:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or "\0" in value:
        raise ValueError(f"field {key!r} is not a string")
    return value


def _count(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        raise ValueError(f"field {key!r} = {value!r} is not an integer in 0..2**63-1")
    return value


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"field 'created_at' = {value!r} is not a finite number")
    return float(value)


def _mapping(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"field {key!r} is not an object")
    return value


def _file(entry: Any) -> FileRecord:
    if not isinstance(entry, dict):
        raise ValueError("a 'files' entry is not an object")  # noqa: TRY004 - as above
    path = _text(entry, "path")
    if "/" in path or path.startswith(".") or path in (MANIFEST_FILE, SIGNATURE_FILE) or len(path) > 255:
        raise ValueError(f"file entry {path!r} is not a plain file name")
    codec = _text(entry, "codec")
    if codec not in _CODECS:
        raise ValueError(f"file entry {path!r} has codec {codec!r}")
    return FileRecord(path=path, bytes=_count(entry, "bytes"), hash=_text(entry, "hash"), codec=codec)


def _jsonable(value: Any) -> Any:
    # numpy/torch scalars in metrics
    if hasattr(value, "item"):
        return value.item()
    return str(value)


__all__ = ["MANIFEST_FILE", "MANIFEST_FORMAT", "Manifest"]
