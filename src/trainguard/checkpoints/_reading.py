"""Verification and loading: hashes first, always; decoding only of bytes whose hash matched."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainguard._os.hashing import hash_file, read_and_hash
from trainguard._os.mapping import ChangedWhileVerified, VerifiedMap, map_and_hash
from trainguard.checkpoints.codecs import FileRecord, read_state
from trainguard.checkpoints.manifest import MANIFEST_FILE, Manifest
from trainguard.checkpoints.signing import SIGNATURE_FILE, Signing, check_signature
from trainguard.errors import CorruptCheckpoint, InvalidArgument


@dataclass(frozen=True)
class Problem:
    file: str
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    name: str
    problems: tuple[Problem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "problems": [{"file": p.file, "reason": p.reason} for p in self.problems],
        }


@dataclass(frozen=True)
class Expected:
    """What the registry says a checkpoint is, and what signatures the store demands of it."""

    run: str
    name: str
    manifest_hash: str
    signing: Signing = field(default_factory=Signing)


def read_manifest(expected: Expected, directory: Path) -> Manifest:
    """The manifest, after checking its hash against the registry's and its signature."""
    name, manifest_hash = expected.name, expected.manifest_hash
    path = directory / MANIFEST_FILE
    try:
        data, digest = read_and_hash(path)
    except FileNotFoundError as error:
        what = "checkpoint directory is missing" if not directory.exists() else "missing"
        raise CorruptCheckpoint(name, str(path) if what == "missing" else str(directory), what) from error
    except OSError as error:
        raise CorruptCheckpoint(name, str(path), f"unreadable: {error}") from error
    if digest != manifest_hash:
        raise CorruptCheckpoint(
            name, str(path), f"hash {digest} does not match the registry's {manifest_hash}"
        )
    check_signature(name, directory, bytes(data), expected.signing)
    try:
        manifest = Manifest.from_bytes(bytes(data))
    except ValueError as error:
        raise CorruptCheckpoint(name, str(path), str(error)) from error
    if manifest.name != name or manifest.run != expected.run:
        raise CorruptCheckpoint(
            name, str(path), f"manifest is for checkpoint {manifest.name!r} of run {manifest.run!r}"
        )
    return manifest


def verify_dir(expected: Expected, directory: Path) -> VerifyReport:
    """Every file's size and hash against the manifest, the manifest's hash against the registry and its
    signature, and no file that the manifest does not list."""
    name = expected.name
    try:
        manifest = read_manifest(expected, directory)
    except CorruptCheckpoint as error:
        return VerifyReport(name, (Problem(error.file, error.reason),))
    problems = []
    for record in manifest.files:
        path = directory / record.path
        try:
            size, digest = hash_file(path)
        except FileNotFoundError:
            problems.append(Problem(str(path), "missing"))
            continue
        except OSError as error:
            problems.append(Problem(str(path), f"unreadable: {error}"))
            continue
        if size != record.bytes:
            problems.append(Problem(str(path), f"size {size} bytes, manifest says {record.bytes}"))
        elif digest != record.hash:
            problems.append(Problem(str(path), f"hash {digest} does not match the manifest's {record.hash}"))
    listed = {r.path for r in manifest.files} | {MANIFEST_FILE, SIGNATURE_FILE}
    problems.extend(
        Problem(str(directory / extra), "not listed in the manifest")
        for extra in sorted(set(os.listdir(directory)) - listed)
    )
    return VerifyReport(name, tuple(problems))


def load_dir(
    expected: Expected, directory: Path, *, mapped: bool = True
) -> tuple[Any, Manifest, dict[str, VerifiedMap]]:
    """Hash every file before anything is decoded; decode only when every hash matched.

    ``mapped``: each file is mapped and hashed in place (``_os.mapping``), the state is built on the maps
    and the maps (by manifest path) are returned for the check at use; otherwise each file is read into
    private memory while it is hashed (slower; immune to anything done to the file afterwards)."""
    name = expected.name
    manifest = read_manifest(expected, directory)
    if manifest.format == "dcp":
        raise InvalidArgument(
            "checkpoint",
            name,
            "is a torch.distributed.checkpoint (DCP) checkpoint: load it with dcp.load(state, "
            "storage_reader=trainguard.distributed.Reader(store, name))",
        )
    contents: dict[str, np.ndarray] = {}
    maps: dict[str, VerifiedMap] = {}
    for record in manifest.files:
        contents[record.path] = _verified(name, directory, record, maps if mapped else None)
    return read_state(name, contents), manifest, maps


def _verified(
    name: str, directory: Path, record: FileRecord, maps: dict[str, VerifiedMap] | None
) -> np.ndarray:
    """One file's bytes, hashed before anyone sees them (mapped, and the map kept in ``maps``, unless
    ``maps`` is None)."""
    path = directory / record.path
    try:
        verified = _map_or_none(path) if maps is not None else None
        if verified is not None and maps is not None:
            maps[record.path] = verified
            data, digest = verified.data, verified.digest
        else:
            data, digest = read_and_hash(path)
    except ChangedWhileVerified as error:
        raise CorruptCheckpoint(name, str(path), f"changed while it was verified: {error}") from error
    except OSError as error:
        raise CorruptCheckpoint(name, str(path), f"unreadable: {error}") from error
    if len(data) != record.bytes or digest != record.hash:
        raise CorruptCheckpoint(name, str(path), f"hash {digest} does not match the manifest's {record.hash}")
    return data


def verified_bytes(name: str, directory: Path, record: FileRecord) -> np.ndarray:
    """One file's bytes, mapped (else read) and hashed before anyone sees them."""
    return _verified(name, directory, record, {})


def _map_or_none(path: Path) -> VerifiedMap | None:
    """The file mapped and hashed, or None where it cannot be mapped (a file system without mmap: some
    FUSE and network mounts) - the caller then reads it into private memory instead."""
    try:
        return map_and_hash(path)
    except ChangedWhileVerified:
        raise
    except OSError as error:
        if error.errno in (errno.ENODEV, errno.EINVAL, errno.EACCES, errno.ENOSYS, errno.EOPNOTSUPP):
            return None
        raise


def check_maps(name: str, manifest: Manifest, maps: dict[str, VerifiedMap]) -> None:
    """At use: a mapped file whose identity moved since it was verified is hashed again through its map;
    content that no longer matches the manifest is refused (CorruptCheckpoint), never served."""
    for record in manifest.files:
        verified = maps.get(record.path)
        if verified is None or not verified.changed():
            continue
        try:
            digest, identity = verified.rehash()
        except (OSError, ChangedWhileVerified) as error:
            raise CorruptCheckpoint(
                name, verified.path, f"changed on disk after it was verified: {error}"
            ) from error
        if digest != record.hash:
            raise CorruptCheckpoint(
                name,
                verified.path,
                f"changed on disk after it was verified: hash {digest} does not match the manifest's "
                f"{record.hash}; refusing to serve it",
            )
        verified.identity = identity  # the same content under new metadata (a touch): verified again


__all__ = [
    "Expected",
    "Problem",
    "VerifyReport",
    "check_maps",
    "load_dir",
    "read_manifest",
    "verified_bytes",
    "verify_dir",
]
