"""Checkpoints whose files other writers put in place: the ranks of a distributed save.

The commit protocol is the same as for :meth:`CheckpointStore.save` (docs/design.md, "The commit protocol");
only step 3 differs - the files are written by several processes into one staging directory that the
committing process made (:meth:`PreparedSave.begin`) and that they found by its name. The committing process
then lists them (with the hashes their writers computed while writing) and :meth:`PreparedSave.commit` runs
steps 4-7: manifest, registry decision under the lease's token, roll forward. Reading goes through
:func:`verified_checkpoint` and :func:`verified_file`: the manifest's hash is checked against the registry,
every file's hash against the manifest, before any byte is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainguard.checkpoints._commit import check_commit, check_fresh, commit_staged, save_request, stage
from trainguard.checkpoints._durable import StepFailed, make_dir, move_dir, remove_tree, write_file
from trainguard.checkpoints._reading import read_manifest, verified_bytes
from trainguard.checkpoints.codecs import FileRecord, write_state
from trainguard.checkpoints.layout import StagingName, staging_root
from trainguard.checkpoints.manifest import Manifest
from trainguard.checkpoints.store import CheckpointStore
from trainguard.errors import (
    CheckpointWriteError,
    InvalidArgument,
    StateConflict,
)
from trainguard.registry import CheckpointRecord, CheckpointState, Lease, ProcessIdentity


class PreparedSave:
    """One save whose files other processes write: ``begin`` makes the staging directory (after the
    checks a save makes first: lease, budget, signing), the writers fill it, ``commit`` lets the registry
    decide. ``abandon`` removes what an unfinished save left (a rank failed; nothing was committed). The
    arguments are checked as :meth:`CheckpointStore.save` checks them (``_commit.save_request``)."""

    def __init__(
        self,
        store: CheckpointStore,
        lease: Lease,
        episode: int,
        fmt: str,
        *,
        name: str | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        if not store.on_filesystem:  # ranks stage their files in the store's directory
            rule = "saves staged by other processes need a filesystem store"
            raise InvalidArgument("store", store.location, rule)
        self.store, self.lease, self.fmt = store, lease, fmt
        parent = store.parent_for(lease)
        self.request = save_request(
            store.run, None, episode=episode, lease=lease, metrics=metrics, name=name, parent=parent
        )
        self.name = self.request.name
        self.staging: Path | None = None

    def begin(self) -> Path:
        """Step 1 (fail fast: lease, budget, a name already taken) and step 2 (the staging directory)."""
        check_fresh(self.store.registry, self.store.run, self.request)
        check_commit(self.store._context, self.request)
        self.staging = stage(self.store._context, self.name, self.lease)
        return self.staging

    def commit(self, files: list[FileRecord]) -> CheckpointRecord:
        """Steps 4-7 for ``files`` (each already durable in the staging directory, with the hash its writer
        computed), then retention. Raises as :meth:`CheckpointStore.save` does."""
        if self.staging is None:
            raise StateConflict("prepared save", "not begun", "begin() makes the staging directory first")
        staging, self.staging = self.staging, None
        return self.store.committed(
            commit_staged(self.store._context, self.request, staging, files, self.fmt)
        )

    def gather(self, staged: StagedState, prefix: str = "") -> list[FileRecord]:
        """Move a worker's staged files into this save's staging directory (renamed ``prefix + path``;
        both directories fsynced) and remove the worker's emptied directory. Same filesystem: a rename."""
        if self.staging is None:
            raise StateConflict("prepared save", "not begun", "begin() makes the staging directory first")
        root = self.store.root
        source = staging_directory(root, staged.directory)
        moved = []
        for record in staged.files:
            target = prefix + record.path
            if "/" in target or target.startswith("."):
                raise InvalidArgument("staged file", target, "must be one plain file name")
            try:
                move_dir(source / record.path, self.staging / target, root=root, fsync_step="stage-fsync")
            except StepFailed as failed:
                raise CheckpointWriteError(failed.step, failed.path, failed.cause) from failed.cause
            moved.append(FileRecord(target, record.bytes, record.hash, record.codec))
        remove_tree(source, root=root)
        return moved

    def abandon(self) -> None:
        """Remove the staging directory of a save that will not commit (nothing is lost: it holds no
        committed checkpoint)."""
        if self.staging is not None:
            remove_tree(self.staging, root=self.store.root)
            self.staging = None


@dataclass(frozen=True)
class StagedState:
    """What one worker staged for a save another process commits: its own staging directory (named after
    the worker and the token it wrote under, so recovery can tell when it is abandoned) and the files in
    it with the hashes computed while writing."""

    directory: str
    files: tuple[FileRecord, ...]

    def as_dict(self) -> dict[str, object]:
        return {"directory": self.directory, "files": [f.as_dict() for f in self.files]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StagedState:
        """From a worker's report (it came over the network: the directory is checked to be one entry)."""
        directory = str(data["directory"])
        if not directory or "/" in directory or directory in (".", ".."):
            raise InvalidArgument("staged", directory, "must be one directory name under the staging area")
        files = tuple(
            FileRecord(str(f["path"]), int(f["bytes"]), str(f["hash"]), str(f["codec"]))
            for f in data["files"]
        )
        return cls(directory, files)


def stage_state(root: Path, label: str, writer: ProcessIdentity, token: int, state: object) -> StagedState:
    """Write ``state`` (safetensors + JSON, each file fsynced) into a new staging directory of the store at
    ``root``, for a commit by another process (:meth:`PreparedSave.gather`). Non-finite tensors raise."""
    directory = staging_root(root.resolve()) / StagingName.new(label, writer, token)
    try:
        make_dir(directory, root=root.resolve(), step="stage")
        files = write_state(state, directory)
    except StepFailed as failed:
        remove_tree(directory, root=root.resolve())
        raise CheckpointWriteError(failed.step, failed.path, failed.cause) from failed.cause
    except BaseException:
        remove_tree(directory, root=root.resolve())
        raise
    return StagedState(directory.name, tuple(files))


def write_durable(path: Path, chunks: Iterable[bytes | memoryview]) -> tuple[int, str]:
    """Create ``path`` in a staging directory (it must not exist), write ``chunks`` hashing them on the way,
    fsync; (size, digest). Raises CheckpointWriteError naming the step."""
    try:
        return write_file(path, ((memoryview(chunk), None) for chunk in chunks))
    except StepFailed as failed:
        raise CheckpointWriteError(failed.step, failed.path, failed.cause) from failed.cause


def staging_directory(root: Path, name: str) -> Path:
    """Where the staging directory ``name`` (made by another process's :meth:`PreparedSave.begin`) is under
    the store at ``root``; ``name`` is checked to be one plain entry (it came over the network)."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise InvalidArgument("staging", name, "must be one directory name under the store's staging area")
    path = staging_root(root.resolve()) / name
    if not path.is_dir():
        raise InvalidArgument("staging", str(path), "is not a directory: is the store shared with this host?")
    return path


def verified_checkpoint(store: CheckpointStore, name: str) -> tuple[CheckpointRecord, Manifest, Path]:
    """A committed checkpoint's record, its manifest (hash checked against the registry, signature
    checked) and its directory. Files are verified one by one with :func:`verified_file`."""
    record = store.record(name)
    if record.state is not CheckpointState.COMMITTED:
        raise store._conflict(record, "only committed checkpoints load")
    directory = store._directory(record)
    return record, read_manifest(store._expected(record), directory), directory


def verified_file(name: str, directory: Path, record: FileRecord) -> np.ndarray:
    """The bytes of one file of a checkpoint, mapped and hashed before they are returned; a mismatch with
    the manifest raises CorruptCheckpoint."""
    return verified_bytes(name, directory, record)


__all__ = [
    "PreparedSave",
    "StagedState",
    "stage_state",
    "staging_directory",
    "verified_checkpoint",
    "verified_file",
    "write_durable",
]
