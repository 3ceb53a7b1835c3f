"""A check found a problem, or the machine failed us (exit 1)."""

from __future__ import annotations

from trainguard.errors._base import ExitCode, TrainguardError


class CorruptCheckpoint(TrainguardError, ValueError):
    """A checkpoint whose files do not match its manifest or cannot be decoded."""

    exit_code = ExitCode.PROBLEM

    def __init__(self, name: str, file: str, reason: str) -> None:
        self.name = name
        self.file = file
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"checkpoint {self.name!r}: {self.file}: {self.reason}"


class UnsafeCheckpoint(CorruptCheckpoint):
    """A file that would execute code when loaded (a pickle with globals); it is never loaded."""


class SignatureRejected(CorruptCheckpoint):
    """A checkpoint whose manifest signature is missing (where signatures are required), malformed, made with
    another key, or does not match the manifest: refused like a corrupt checkpoint."""


class CheckpointWriteError(TrainguardError, OSError):
    """A step of the commit protocol failed; ``step`` names it, ``committed`` says whether the registry had
    already decided (then the checkpoint is rolled forward by the next open, never lost)."""

    exit_code = ExitCode.PROBLEM

    def __init__(self, step: str, path: str, cause: BaseException, *, committed: bool = False) -> None:
        self.step = step
        self.path = path
        self.cause_text = f"{type(cause).__name__}: {cause}"
        self.committed = committed
        errno = getattr(cause, "errno", None)
        super().__init__(errno, str(self))

    def __str__(self) -> str:
        state = "committed, will be rolled forward at next open" if self.committed else "nothing committed"
        return f"checkpoint save failed at step {self.step!r} ({self.path}): {self.cause_text} [{state}]"


class CommitOutcomeUnknown(CheckpointWriteError):
    """The registry transaction's reply was lost and asking again failed too: the checkpoint may or may not
    be committed. Its staging directory is kept, so the next open rolls it forward or removes it by the
    registry's answer - nothing committed is ever deleted on a guess."""

    def __init__(self, path: str, cause: BaseException) -> None:
        super().__init__("registry", path, cause)

    def __str__(self) -> str:
        return (
            f"checkpoint commit outcome unknown ({self.path}): {self.cause_text} [staging kept; the next "
            "open rolls it forward if the registry committed it, else removes it]"
        )


class CheckpointRejected(TrainguardError, ValueError):
    """The state cannot become a checkpoint: a validator refused it (NaN values, a type that would need
    pickle, a user hook). Nothing was committed."""

    exit_code = ExitCode.PROBLEM

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"checkpoint {self.name!r} rejected at step 'validate': {self.reason} [nothing committed]"


class UnsafeStore(TrainguardError, PermissionError):
    """A store whose layout could make trainguard act outside it (a reserved directory that is a symlink):
    refused before anything is read, moved or deleted."""

    exit_code = ExitCode.PROBLEM

    def __init__(self, store: str, entry: str, reason: str) -> None:
        self.store = store
        self.entry = entry
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"store {self.store}: {self.entry} {self.reason}; refusing to use it"


class RegistryError(TrainguardError, ConnectionError):
    """The registry database could not be opened or used."""

    exit_code = ExitCode.PROBLEM

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"registry {self.url}: {self.reason}"


__all__ = [
    "CheckpointRejected",
    "CheckpointWriteError",
    "CommitOutcomeUnknown",
    "CorruptCheckpoint",
    "RegistryError",
    "SignatureRejected",
    "UnsafeCheckpoint",
    "UnsafeStore",
]
