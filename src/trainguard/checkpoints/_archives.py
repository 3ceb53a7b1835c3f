"""Checkpoint files of real trainers, read without running anything they contain.

- A Stable-Baselines3 ``.zip`` (``model.save``): ``policy.pth``, ``policy.optimizer.pth`` and
  ``pytorch_variables.pth`` are plain ``torch.save`` state dicts - read with the weights-only loader; ``data``
  is JSON, but some of its values are cloudpickle blobs (``":serialized:"``: the env, the policy class,
  schedules) - those are *never* unpickled, only named in the result as not adopted. The timesteps come from
  ``data["num_timesteps"]``.
- A ``.pth`` (``torch.save``): read with the weights-only loader, numpy arrays and scalars allowed.

Anything else is refused with a reason that names the format it was taken for.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any

from trainguard.checkpoints.codecs import TORCH_FILE, check_torch_file, load_torch_bytes
from trainguard.errors import CorruptCheckpoint

SB3_REQUIRED = ("data", "policy.pth")
SB3_TENSORS = ("policy.pth", "policy.optimizer.pth", "pytorch_variables.pth")
# An archive's members are read into memory: refuse a zip bomb before reading (far above any SB3 model).
_MAX_UNPACKED = 16 << 30


@dataclass
class Adoptable:
    kind: str  # "torch" (the file itself, byte for byte) or "sb3" (its safe parts, as a state tree)
    state: Any = None  # for "sb3"
    timesteps: int | None = None
    not_adopted: list[str] = field(default_factory=list)  # parts deliberately left behind (pickled)


def _is_torch_zip(names: list[str]) -> bool:
    # torch.save writes a zip too: <archive>/data.pkl, <archive>/data/0, ...
    return any(n.endswith("/data.pkl") for n in names)


def read_adoptable(data: bytes, file: str) -> Adoptable:
    """What of ``data`` can become a checkpoint; :class:`CorruptCheckpoint` (or ``UnsafeCheckpoint``)
    naming the format otherwise."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            if all(member in names for member in SB3_REQUIRED):
                return _read_sb3(archive, file)
            if not _is_torch_zip(names):
                raise CorruptCheckpoint(
                    file,
                    file,
                    "a zip archive that is neither Stable-Baselines3 (data, policy.pth) nor torch.save",
                )
    elif data.startswith(b"PK"):
        raise CorruptCheckpoint(
            file, file, "a damaged zip archive (truncated?): not readable as torch.save or SB3"
        )
    elif not data.startswith(b"\x80"):  # neither a zip nor a (legacy) pickle stream
        raise CorruptCheckpoint(file, file, "not a PyTorch checkpoint (.pth) nor a Stable-Baselines3 .zip")
    check_torch_file(data, file, TORCH_FILE)
    return Adoptable("torch")


def _read_sb3(archive: zipfile.ZipFile, file: str) -> Adoptable:
    if sum(info.file_size for info in archive.infolist()) > _MAX_UNPACKED:
        raise CorruptCheckpoint(file, file, "a Stable-Baselines3 archive that unpacks to more than 16 GiB")
    try:
        data = json.loads(archive.read("data"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise CorruptCheckpoint(
            file, f"{file}:data", f"Stable-Baselines3 'data' is not JSON: {error}"
        ) from None
    if not isinstance(data, dict):
        raise CorruptCheckpoint(file, f"{file}:data", "Stable-Baselines3 'data' is not a JSON object")
    pickled = sorted(k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v)
    state: dict[str, Any] = {
        member.removesuffix(".pth"): load_torch_bytes(archive.read(member), file, f"{file}:{member}")
        for member in SB3_TENSORS
        if member in archive.namelist()
    }
    state["sb3_data"] = {k: v for k, v in data.items() if k not in pickled}
    if "_stable_baselines3_version" in archive.namelist():
        state["sb3_version"] = archive.read("_stable_baselines3_version").decode(errors="replace").strip()
    timesteps = data.get("num_timesteps")
    return Adoptable(
        "sb3",
        state,
        timesteps if isinstance(timesteps, int) and not isinstance(timesteps, bool) else None,
        [f"data.{k} (cloudpickle: never unpickled)" for k in pickled],
    )


__all__ = ["Adoptable", "read_adoptable"]
