"""How a state becomes files, and back.

``safetensors`` (default): every tensor/array in the state tree goes into ``tensors.safetensors``, the rest
of the structure into ``tree.json``; reading never unpickles anything. ``torch``: the whole state through
``torch.save`` into ``state.pt``, read back only with ``torch.load(weights_only=True)``, which refuses any
pickle that names code to run.
"""

from __future__ import annotations

import functools
import io
import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
from numpy.typing import NDArray

from trainguard._os.hashing import format_digest, new_hasher
from trainguard._os.optional import require
from trainguard.checkpoints import _safetensors as st
from trainguard.checkpoints._durable import Chunk, StepFailed, new_durable_file, write_all, write_file
from trainguard.checkpoints._tree import flatten, tensor_keys, unflatten
from trainguard.errors import CorruptCheckpoint, UnsafeCheckpoint

FORMATS = ("safetensors", "torch")

# What decoding accepts: verified file contents (numpy buffers from the reader, or bytes).
Buffer = bytes | bytearray | memoryview | NDArray[Any]
TENSORS_FILE = "tensors.safetensors"
TREE_FILE = "tree.json"
TORCH_FILE = "state.pt"


@dataclass(frozen=True)
class FileRecord:
    path: str
    bytes: int
    hash: str
    codec: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "hash": self.hash, "codec": self.codec}


@dataclass(frozen=True)
class AdoptedFile:
    """A legacy ``.pth`` brought under the store byte for byte (never re-serialized: its hash is its own)."""

    source: Path
    data: bytes


class NonFiniteValues(ValueError):
    def __init__(self, key: str, count: int) -> None:
        self.key = key
        self.count = count
        super().__init__(f"tensor {key!r} has NaN/inf values (at least {count})")


def write_state(
    state: object, directory: Path, *, fmt: str = "safetensors", check_finite: bool = True
) -> list[FileRecord]:
    """Write ``state`` into ``directory`` (durably: each file fsynced); returns the files with hashes."""
    if isinstance(state, AdoptedFile):
        size, digest = write_file(directory / TORCH_FILE, [(memoryview(state.data), None)])
        return [FileRecord(TORCH_FILE, size, digest, "torch")]
    if fmt == "torch":
        return [_write_torch(state, directory / TORCH_FILE)]
    if fmt != "safetensors":
        raise ValueError(f"checkpoint format {fmt!r}: must be one of {', '.join(FORMATS)}")
    inspect = check_finite_chunk if check_finite else None
    records = []
    for encoded in encode_state(state):
        size, digest = write_file(directory / encoded.path, encoded.chunks, inspect=inspect)
        records.append(FileRecord(encoded.path, size, digest, encoded.codec))
    return records


@dataclass(frozen=True)
class EncodedFile:
    """One file of a state in the safetensors format, as chunks: a tensor's chunk is tagged (key, dtype
    code) for ``check_finite_chunk``; whoever writes them (a file, an object store) hashes them."""

    path: str
    codec: str
    chunks: list[Chunk]


def encode_state(state: object) -> list[EncodedFile]:
    """``state`` as the store keeps it: its tensors in one safetensors file (when it has any) and the rest
    of the tree, with each tensor's framework, in JSON."""
    skeleton, tensors = flatten(state)
    files = []
    frameworks: dict[str, str] = {}
    if tensors:
        items = []
        for key, value in tensors.items():
            data, frameworks[key] = st.tensor_bytes(key, value)
            items.append(data)
        files.append(EncodedFile(TENSORS_FILE, "safetensors", st.encode(items, {"format": "trainguard"})))
    tree = json.dumps(
        {"skeleton": skeleton, "frameworks": frameworks}, sort_keys=True, allow_nan=False
    ).encode()
    files.append(EncodedFile(TREE_FILE, "json", [(memoryview(tree), None)]))
    return files


def check_finite_chunk(piece: memoryview, tag: object) -> None:
    """Raise NonFiniteValues for a tensor chunk (tagged by ``encode_state``) with NaN/inf in it."""
    if isinstance(tag, tuple):
        key, code = tag
        bad = st.count_non_finite(piece, code)
        if bad:
            raise NonFiniteValues(key, bad)


class _HashingFile(io.RawIOBase):
    """What ``torch.save`` writes into: every byte is hashed on its way to the file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.hasher = new_hasher()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.hasher.update(view)
        write_all(self.fd, view)
        self.size += len(view)
        return len(view)


def _write_torch(state: object, path: Path) -> FileRecord:
    require("torch", "checkpoints.format: torch")
    import torch

    with new_durable_file(path) as fd:
        sink = _HashingFile(fd)
        try:
            torch.save(state, cast("IO[bytes]", sink))
        except (OSError, RuntimeError) as error:  # torch wraps the file's OSError in a RuntimeError
            raise StepFailed("write", path, error) from error
    return FileRecord(TORCH_FILE, sink.size, format_digest(sink.hasher), "torch")


def validate_staged(directory: Path, files: list[FileRecord]) -> None:
    """Decode what was written with an independent reader (validation step of the commit).

    The bytes were hashed on their way out of the state's own memory, so re-reading them (from the page
    cache) could not catch more than the hash does; what can go wrong is the *format*, so the official
    safetensors parser (and torch's restricted unpickler) must accept each file as written.
    """
    for record in files:
        path = directory / record.path
        if record.codec == "safetensors":
            from safetensors import safe_open

            header, _, _ = st.read_header(path)
            try:
                with safe_open(str(path), framework="numpy") as reader:
                    shapes = {key: list(reader.get_slice(key).get_shape()) for key in reader.keys()}  # noqa: SIM118
            except Exception as error:  # SafetensorError is none of the standard errors
                raise ValueError(f"{record.path}: the safetensors library cannot read it: {error}") from None
            if shapes != {key: entry["shape"] for key, entry in header.items()}:
                raise ValueError(
                    f"{record.path}: the safetensors library reads other tensors than were written"
                )
        elif record.codec == "json":
            tree = json.loads(path.read_bytes())
            missing = set(tensor_keys(tree["skeleton"])) - set(tree["frameworks"])
            if missing:
                raise ValueError(f"{record.path}: tensors {sorted(missing)[:3]} have no framework recorded")
        elif record.codec == "torch":
            _torch_load(path.read_bytes(), directory.name, record.path)


def read_state(name: str, files: Mapping[str, Buffer]) -> Any:
    """Decode verified file contents (``files`` maps manifest path -> bytes whose hash already matched)."""
    if TORCH_FILE in files:
        return _torch_load(files[TORCH_FILE], name, TORCH_FILE)
    try:
        tree = json.loads(bytes(files[TREE_FILE]))
        frameworks = _frameworks(tree)
        tensors = st.decode(files[TENSORS_FILE], frameworks) if TENSORS_FILE in files else {}
        return unflatten(tree["skeleton"], tensors)
    except KeyError as error:
        raise CorruptCheckpoint(name, TREE_FILE, f"missing entry {error}") from error
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError, RuntimeError) as error:
        # Whatever a forged tree or header makes the decoders raise (a hash cannot be forged past the
        # registry, but one can be written by whoever holds both): a corrupt checkpoint, never a crash.
        why = str(error) or type(error).__name__
        raise CorruptCheckpoint(name, TENSORS_FILE, f"cannot decode: {why}") from None


def _frameworks(tree: Any) -> dict[str, str]:
    frameworks = tree.get("frameworks") if isinstance(tree, dict) else None
    if not isinstance(frameworks, dict) or not all(v in ("numpy", "torch") for v in frameworks.values()):
        raise ValueError("tree.json: 'frameworks' is not a map of tensor -> numpy|torch")
    return frameworks


_TORCH_REFUSAL = (
    re.compile(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed|\. Please use|\n\n|$)", re.DOTALL),
    re.compile(r"(Trying to load unsupported GLOBAL [^\n]+)"),
)


def _why(error: BaseException) -> str:
    """The informative part of torch's weights_only refusal ("Unsupported global: GLOBAL posix.system")."""
    for pattern in _TORCH_REFUSAL:
        if match := pattern.search(str(error)):
            return " ".join(match[1].split())
    return type(error).__name__


def check_torch_file(data: Buffer, name: str, file: str) -> None:
    """Raise CorruptCheckpoint/UnsafeCheckpoint unless ``torch.load(weights_only=True)`` accepts ``data``."""
    _torch_load(data, name, file)


def load_torch_bytes(data: Buffer, name: str, file: str) -> Any:
    """``torch.load(weights_only=True)`` of ``data`` (numpy arrays and scalars allowed); CorruptCheckpoint
    or UnsafeCheckpoint naming ``file`` otherwise."""
    return _torch_load(data, name, file)


@functools.cache
def _numpy_globals() -> list[Any]:
    """What training statistics saved next to weights need beyond torch's own allow-list: numpy arrays and
    scalars of plain numeric dtypes. Each only rebuilds an array from bytes; an object dtype's *contents*
    would still need globals that stay refused."""
    core = getattr(np, "_core", None) or np.core
    numeric = [
        kind
        for name in dir(np.dtypes)
        if name.endswith("DType") and np.dtype((kind := getattr(np.dtypes, name)).type).kind in "biufc"
    ]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype, *numeric]


def _torch_load(data: Buffer, name: str, file: str) -> Any:
    require("torch", f"reading {file} of checkpoint {name!r}")
    import torch

    try:
        raw = data.data if isinstance(data, np.ndarray) else data
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        # weights_only=True refuses any global outside torch's allow-list *before* calling it.
        raise UnsafeCheckpoint(
            name, file, f"refused by torch's weights_only loader: {_why(error)}"
        ) from error
    except Exception as error:
        raise CorruptCheckpoint(name, file, f"cannot decode with torch.load: {error}") from error


__all__ = [
    "FORMATS",
    "TENSORS_FILE",
    "TORCH_FILE",
    "TREE_FILE",
    "AdoptedFile",
    "EncodedFile",
    "FileRecord",
    "NonFiniteValues",
    "check_finite_chunk",
    "check_torch_file",
    "encode_state",
    "load_torch_bytes",
    "read_state",
    "validate_staged",
    "write_state",
]
