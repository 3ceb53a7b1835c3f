"""What the Ray Train controller tells its workers, through a small file in the store.

Ray has no public channel from the controller (where the lease is held and commits are made) to the workers;
the store's filesystem is one both already share - the workers stage their files in it. The controller
writes ``.trainguard/ray/<run>.json`` when a worker group starts (the attempt's token, what is left of the
budgets, the checkpoint to resume from) and again when the run must stop; the driver writes
``<run>.stop`` when it is signalled. Each write is a whole new file renamed over the old one, so a reader
sees one version or the next, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from trainguard.errors import InvalidArgument

_DIRECTORY = Path(".trainguard") / "ray"


@dataclass(frozen=True)
class AttemptNotice:
    """One worker group's orders. ``stop``: None while training may go on, else the reason; ``fenced``:
    the lease is gone and nothing may be committed (no last checkpoint either)."""

    run: str
    token: int
    attempt: int
    steps_left: int | None
    episodes_left: int | None
    steps_done: int
    episodes_done: int
    resume: str | None
    sweep: str | None = None
    stop: str | None = None
    fenced: bool = False

    def stopped(self, reason: str, *, fenced: bool) -> AttemptNotice:
        return replace(self, stop=reason, fenced=fenced)


def notice_path(store: Path, run: str) -> Path:
    return store / _DIRECTORY / f"{run}.json"


def stop_request_path(store: Path, run: str) -> Path:
    return store / _DIRECTORY / f"{run}.stop"


def write_notice(store: Path, notice: AttemptNotice) -> None:
    _replace(notice_path(store, notice.run), json.dumps(asdict(notice), sort_keys=True).encode())


def read_notice(store: Path, run: str) -> AttemptNotice:
    path = notice_path(store, run)
    try:
        body: dict[str, Any] = json.loads(path.read_bytes())
        return AttemptNotice(**body)
    except FileNotFoundError:
        raise InvalidArgument(
            "store",
            str(store),
            f"has no Ray attempt for run {run!r}: is GuardCallback in RunConfig.callbacks?",
        ) from None
    except (ValueError, TypeError) as error:
        raise InvalidArgument("attempt notice", str(path), f"is not one trainguard wrote: {error}") from None


def request_stop(store: Path, run: str, reason: str) -> None:
    _replace(stop_request_path(store, run), reason.encode())


def stop_requested(store: Path, run: str) -> str | None:
    try:
        return stop_request_path(store, run).read_text() or "stop requested"
    except FileNotFoundError:
        return None


def clear_stop_request(store: Path, run: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        stop_request_path(store, run).unlink()


def _replace(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)  # readers see the old notice or the new one


__all__ = [
    "AttemptNotice",
    "clear_stop_request",
    "notice_path",
    "read_notice",
    "request_stop",
    "stop_request_path",
    "stop_requested",
    "write_notice",
]
