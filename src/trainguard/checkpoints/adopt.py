"""Bringing a trainer's own checkpoint files (``checkpoint_ep013475.pth``, SB3 ``model_20000_steps.zip``)
under the store.

Each file is first read with the safe loaders (``_archives``: torch's weights-only loader, never SB3's
pickled parts) and only then committed through the ordinary fenced protocol with a manifest and hashes: a
``.pth`` byte for byte, an SB3 archive as the state tree of its safe parts. Files that fail are listed with
the reason, naming the format. The originals are only ever read.

The pattern follows the one rule of ``trainguard.names.count_pattern``: it must match the whole file name,
and its named group (``episode`` or ``steps``) gives the count recorded as the checkpoint's episode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainguard._os.files import TooLarge, read_limited
from trainguard.checkpoints._archives import read_adoptable
from trainguard.checkpoints.codecs import AdoptedFile
from trainguard.checkpoints.store import CheckpointStore, Provenance
from trainguard.errors import (
    CheckpointRejected,
    CommitRefused,
    CorruptCheckpoint,
    InvalidArgument,
    TrainguardError,
)
from trainguard.fingerprint import Fingerprint
from trainguard.names import count_pattern
from trainguard.registry import Lease

_MAX_FILE = 64 << 30  # read into memory to be checked, hashed and committed


@dataclass
class AdoptionReport:
    adopted: list[tuple[str, str]] = field(default_factory=list)  # (file, checkpoint name)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    ignored: list[str] = field(default_factory=list)  # not matching the pattern
    pattern: str = ""
    counts: str = "episode"  # what the pattern's number counts ("episode" or "steps")
    numbers: list[int] = field(default_factory=list)  # the count of each adopted file, in order

    @property
    def complete(self) -> bool:
        """Something was adopted and nothing refused (the CLI exits 1 otherwise)."""
        return bool(self.adopted) and not self.refused

    def as_dict(self) -> dict[str, object]:
        return {
            "adopted": [
                {"file": f, "checkpoint": c, self.counts: n}
                for (f, c), n in zip(self.adopted, self.numbers, strict=True)
            ],
            "refused": [{"file": f, "reason": r} for f, r in self.refused],
            "ignored": self.ignored,
            "pattern": self.pattern,
        }


def adopt_directory(
    store: CheckpointStore, directory: Path, pattern: str, lease: Lease, features: Fingerprint | None
) -> AdoptionReport:
    counting = count_pattern("pattern", pattern)
    if not directory.is_dir():
        raise InvalidArgument("directory", str(directory), "is not a directory")
    report = AdoptionReport(pattern=pattern, counts="steps" if counting.counts == "steps" else "episode")
    matches = []
    for path in sorted(directory.iterdir()):
        count = counting.count(path.name) if path.is_file() else None
        if count is None:
            report.ignored.append(path.name)
            continue
        matches.append((count, path))
    for count, path in sorted(matches):
        try:
            data = read_limited(path, _MAX_FILE)
            found = read_adoptable(data, path.name)
        except CorruptCheckpoint as error:
            report.refused.append((path.name, error.reason))
            continue
        except (OSError, TooLarge) as error:
            report.refused.append((path.name, f"cannot be read: {error}"))
            continue
        origin: dict[str, object] = {"adopted_from": str(path.resolve()), "bytes": len(data)}
        if found.kind == "sb3":
            origin.update(
                format="stable-baselines3", timesteps=found.timesteps, not_adopted=found.not_adopted
            )
        state = AdoptedFile(path, data) if found.kind == "torch" else found.state
        metrics = {"timesteps": found.timesteps} if found.timesteps is not None else {}
        try:
            record = store.save(
                state,
                episode=count,
                lease=lease,
                metrics=metrics,
                features=features,
                provenance=Provenance(origin=origin),
            )
        except (CommitRefused, CheckpointRejected) as error:
            report.refused.append((path.name, error.reason))
            continue
        except TrainguardError as error:
            report.refused.append((path.name, str(error)))
            continue
        report.adopted.append((path.name, record.name))
        report.numbers.append(count)
    return report


__all__ = ["AdoptionReport", "adopt_directory"]
