"""MANIFEST.json: what a checkpoint is, who wrote it, and the hash of every file in it.

The registry stores the hash of the manifest's bytes; the manifest stores the hash of every other file.
So one committed row pins down every byte of the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainguard._os.hashing import ALGORITHM
from trainguard.checkpoints.codecs import FileRecord

MANIFEST_FILE = "MANIFEST.json"
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
        """Parse a manifest; raises ValueError (with the reason) on anything malformed."""
        try:
            body = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"not JSON: {error}") from error
        if not isinstance(body, dict) or body.get("manifest_format") != MANIFEST_FORMAT:
            raise ValueError(f"not a {MANIFEST_FORMAT} manifest")
        if body.get("hash_algorithm") != ALGORITHM:
            raise ValueError(f"hash algorithm {body.get('hash_algorithm')!r} is not {ALGORITHM!r}")
        try:
            files = tuple(
                FileRecord(
                    path=str(f["path"]), bytes=int(f["bytes"]), hash=str(f["hash"]), codec=str(f["codec"])
                )
                for f in body["files"]
            )
            for f in files:
                if "/" in f.path or f.path.startswith(".") or f.path == MANIFEST_FILE:
                    raise ValueError(f"file entry {f.path!r} is not a plain file name")
            return cls(
                run=str(body["run"]),
                name=str(body["name"]),
                episode=int(body["episode"]),
                token=int(body["token"]),
                format=str(body["format"]),
                files=files,
                parent=body.get("parent"),
                fingerprint=body.get("fingerprint"),
                metrics=dict(body.get("metrics") or {}),
                created_at=float(body.get("created_at", 0.0)),
                writer=dict(body.get("writer") or {}),
                code_hash=body.get("code_hash"),
                config_hash=body.get("config_hash"),
                features=body.get("features"),
                origin=body.get("origin"),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"missing or malformed field: {error}") from error

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        return cls.from_bytes((directory / MANIFEST_FILE).read_bytes())


def _jsonable(value: Any) -> Any:
    # numpy/torch scalars in metrics
    if hasattr(value, "item"):
        return value.item()
    return str(value)


__all__ = ["MANIFEST_FILE", "MANIFEST_FORMAT", "Manifest"]
