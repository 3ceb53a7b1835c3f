"""What the protocol modules (commit, recovery) need to know about a store - and nothing more.

They take this small frozen value instead of the store itself, so they do not import the store and the
store does not hand out its whole surface: the commit protocol sees where to write, under which run, which
registry decides, and how to encode and validate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainguard.checkpoints.manifest import Manifest
from trainguard.checkpoints.signing import Signing
from trainguard.registry import Registry

# A validator gets the staging directory and the manifest about to be written; raising rejects the save.
Validator = Callable[[Path, Manifest], None]


@dataclass(frozen=True)
class Validation:
    """What a save checks before it may commit (docs/design.md, "The commit protocol", step 4).

    ``decode``: an independent decoder (the official safetensors parser, torch's weights-only loader) must
    accept every file as written; ``finite``: no NaN/inf in any tensor; ``hooks``: the user's own checks.
    """

    decode: bool = True
    finite: bool = True
    hooks: tuple[Validator, ...] = ()


@dataclass(frozen=True)
class StoreContext:
    root: Path
    run: str
    registry: Registry
    format: str
    validation: Validation
    signing: Signing = field(default_factory=Signing)


__all__ = ["StoreContext", "Validation", "Validator"]
