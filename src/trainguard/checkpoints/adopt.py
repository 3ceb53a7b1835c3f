"""Bringing legacy checkpoint files (``checkpoint_ep013475.pth``) under the store.

Each file is first loaded with ``torch.load(weights_only=True)`` - which refuses any pickle that names code
to run - and only then committed, byte for byte, through the ordinary fenced protocol with a manifest and
hashes. Files that fail are listed with the reason. The originals are only ever read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainguard.checkpoints.codecs import TORCH_FILE, AdoptedFile, check_torch_file
from trainguard.checkpoints.store import CheckpointStore, Provenance
from trainguard.errors import (
    CheckpointRejected,
    CommitRefused,
    CorruptCheckpoint,
    InvalidArgument,
    TrainguardError,
)
from trainguard.fingerprint import Fingerprint
from trainguard.names import episode_pattern
from trainguard.registry import Lease


@dataclass
class AdoptionReport:
    adopted: list[tuple[str, str]] = field(default_factory=list)  # (file, checkpoint name)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    ignored: list[str] = field(default_factory=list)  # not matching the pattern

    def as_dict(self) -> dict[str, object]:
        return {
            "adopted": [{"file": f, "checkpoint": c} for f, c in self.adopted],
            "refused": [{"file": f, "reason": r} for f, r in self.refused],
            "ignored": self.ignored,
        }


def adopt_directory(
    store: CheckpointStore, directory: Path, pattern: str, lease: Lease, features: Fingerprint | None
) -> AdoptionReport:
    regex = episode_pattern("pattern", pattern)
    if not directory.is_dir():
        raise InvalidArgument("directory", str(directory), "is not a directory")
    report = AdoptionReport()
    matches = []
    for path in sorted(directory.iterdir()):
        match = regex.fullmatch(path.name) if path.is_file() else None
        if match is None:
            report.ignored.append(path.name)
            continue
        matches.append((int(match.group("episode")), path))
    for episode, path in sorted(matches):
        data = path.read_bytes()
        try:
            check_torch_file(data, path.name, TORCH_FILE)
        except CorruptCheckpoint as error:
            report.refused.append((path.name, error.reason))
            continue
        try:
            record = store.save(
                AdoptedFile(path, data),
                episode=episode,
                lease=lease,
                features=features,
                provenance=Provenance(origin={"adopted_from": str(path.resolve()), "bytes": len(data)}),
            )
        except (CommitRefused, CheckpointRejected) as error:
            report.refused.append((path.name, error.reason))
            continue
        except TrainguardError as error:
            report.refused.append((path.name, str(error)))
            continue
        report.adopted.append((path.name, record.name))
    return report


__all__ = ["AdoptionReport", "adopt_directory"]
