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
from pathlib import Path
from typing import Any

import numpy as np

from trainguard.checkpoints._commit import check_commit, commit_staged, save_request, stage
from trainguard.checkpoints._durable import StepFailed, remove_tree, write_file
from trainguard.checkpoints._reading import read_manifest, verified_bytes
from trainguard.checkpoints.codecs import FileRecord
from trainguard.checkpoints.layout import staging_root
from trainguard.checkpoints.manifest import Manifest
from trainguard.checkpoints.store import CheckpointStore
from trainguard.errors import (
    CheckpointRejected,
    CheckpointWriteError,
    InvalidArgument,
    StateConflict,
)
from trainguard.registry import CheckpointRecord, CheckpointState, Lease


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
        self.store, self.lease, self.fmt = store, lease, fmt
        parent = store.parent_for(lease)
        self.request = save_request(
            store.run, None, episode=episode, lease=lease, metrics=metrics, name=name, parent=parent
        )
        self.name = self.request.name
        self.staging: Path | None = None

    def begin(self) -> Path:
        """Step 1 (fail fast: lease, budget, a name already taken) and step 2 (the staging directory)."""
        # The token first: a stale job must hear that it is fenced (and stop), not that the name is taken.
        self.lease.renew()  # LeaseLost unless this token is still the run's live lease
        if self.store.registry.find_checkpoint(self.store.run, self.name) is not None:
            raise CheckpointRejected(self.name, "a checkpoint of this name exists; names are never reused")
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

    def abandon(self) -> None:
        """Remove the staging directory of a save that will not commit (nothing is lost: it holds no
        committed checkpoint)."""
        if self.staging is not None:
            remove_tree(self.staging, root=self.store.root)
            self.staging = None


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


__all__ = ["PreparedSave", "staging_directory", "verified_checkpoint", "verified_file", "write_durable"]
