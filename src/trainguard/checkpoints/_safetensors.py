"""The safetensors format, written straight from tensor memory and read back zero-copy.

The library's ``save()`` builds the whole file as one ``bytes`` object (a second copy of a 1 GiB state) and
``save_file()`` writes it without letting us hash or fsync; so we write the format ourselves (an 8-byte
header length, a JSON header, the raw little-endian data), one tensor at a time from its own memory, and
the validation step has the official library parse what we wrote. Reading parses the header strictly and
builds arrays *on* the verified buffer, so a load reads and hashes the file once and copies nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainguard._os.optional import require
from trainguard.checkpoints._durable import Chunk

_ALIGN = 8
_MAX_HEADER = 100 << 20

# safetensors dtype code -> (numpy dtype name or None, item size, torch dtype attribute)
_DTYPES: dict[str, tuple[str | None, int, str]] = {
    "F64": ("float64", 8, "float64"),
    "F32": ("float32", 4, "float32"),
    "F16": ("float16", 2, "float16"),
    "BF16": (None, 2, "bfloat16"),
    "I64": ("int64", 8, "int64"),
    "I32": ("int32", 4, "int32"),
    "I16": ("int16", 2, "int16"),
    "I8": ("int8", 1, "int8"),
    "U64": ("uint64", 8, "uint64"),
    "U32": ("uint32", 4, "uint32"),
    "U16": ("uint16", 2, "uint16"),
    "U8": ("uint8", 1, "uint8"),
    "BOOL": ("bool", 1, "bool"),
}
_NUMPY_TO_CODE = {np.dtype(name): code for code, (name, _, _) in _DTYPES.items() if name}
FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16"})


@dataclass(frozen=True)
class TensorBytes:
    key: str
    code: str
    shape: tuple[int, ...]
    view: memoryview  # the tensor's bytes, little-endian, C order


def is_tensor(value: object) -> bool:
    if isinstance(value, np.ndarray):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def tensor_bytes(key: str, value: Any) -> tuple[TensorBytes, str]:
    """The raw bytes of an array/tensor without copying when it is already contiguous on the CPU.

    Returns the bytes and the framework name ("numpy" or "torch") to rebuild it with.
    """
    if isinstance(value, np.ndarray):
        # reshape: ascontiguousarray turns a 0-d array into shape (1,).
        array = np.ascontiguousarray(value).reshape(value.shape)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        code = _NUMPY_TO_CODE.get(array.dtype.newbyteorder("="))
        if code is None:
            raise TypeError(
                f"state value at {key!r}: numpy dtype {array.dtype} cannot be stored in safetensors"
            )
        return TensorBytes(key, code, tuple(array.shape), array.reshape(-1).view(np.uint8).data), "numpy"
    import torch

    tensor = value.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    tensor = tensor.contiguous()
    names = {torch_name: code for code, (_, _, torch_name) in _DTYPES.items()}
    code = names.get(str(tensor.dtype).removeprefix("torch."))
    if code is None:
        raise TypeError(f"state value at {key!r}: torch dtype {tensor.dtype} cannot be stored in safetensors")
    raw = tensor.reshape(-1).view(torch.uint8).numpy()
    return TensorBytes(key, code, tuple(tensor.shape), raw.data), "torch"


def encode(tensors: list[TensorBytes], metadata: dict[str, str]) -> list[Chunk]:
    """The file as a list of chunks: the header, then each tensor's bytes tagged with (key, dtype code)."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for item in tensors:
        header[item.key] = {
            "dtype": item.code,
            "shape": list(item.shape),
            "data_offsets": [offset, offset + len(item.view)],
        }
        offset += len(item.view)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % _ALIGN)
    chunks: list[Chunk] = [(memoryview(len(text).to_bytes(8, "little") + text), None)]
    chunks.extend((item.view, (item.key, item.code)) for item in tensors)
    return chunks


# No tensor has more dimensions (numpy's own limit is 64); a forged header must not make a decoder try.
_MAX_DIMS = 32


class FormatError(ValueError):
    pass


def parse_header(
    data: bytes | bytearray | memoryview, file_size: int | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """Validate a safetensors header against the file; returns (entries, metadata, data start).

    ``data`` is the whole file, or (with ``file_size``) at least its length prefix and header.
    """
    total = len(data) if file_size is None else file_size
    if len(data) < 8:
        raise FormatError("shorter than the 8-byte header length")
    size = int.from_bytes(bytes(data[:8]), "little")
    if size > _MAX_HEADER or 8 + size > min(total, len(data)):
        raise FormatError(f"header length {size} does not fit in a {total}-byte file")
    try:
        header = json.loads(bytes(data[8 : 8 + size]))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FormatError(f"header is not JSON: {error}") from error
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    start = 8 + size
    body = total - start
    spans = []
    for key, entry in header.items():
        try:
            code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            itemsize = _DTYPES[code][1]
        except (KeyError, TypeError, ValueError) as error:
            raise FormatError(f"tensor {key!r}: malformed entry {entry!r}") from error
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in shape)
        ):
            raise FormatError(f"tensor {key!r}: bad shape {str(shape)[:80]}")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= body):
            raise FormatError(f"tensor {key!r}: offsets {begin}..{end} outside the {body}-byte body")
        if end - begin != math.prod(shape) * itemsize:
            raise FormatError(f"tensor {key!r}: {end - begin} bytes for shape {shape} of {code}")
        spans.append((begin, end, key))
    spans.sort()
    position = 0
    for begin, end, key in spans:
        if begin != position:
            raise FormatError(f"tensor {key!r}: data at {begin}, expected {position} (gap or overlap)")
        position = end
    if position != body:
        raise FormatError(f"{body - position} bytes after the last tensor")
    return header, metadata, start


def read_header(path: Any) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        size = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        head = prefix + handle.read(min(size, _MAX_HEADER))
        return parse_header(head, os.fstat(handle.fileno()).st_size)


def decode(data: Any, frameworks: dict[str, str]) -> dict[str, Any]:
    """Arrays/tensors built on ``data`` itself (no copy). ``frameworks`` maps key -> numpy|torch."""
    header, _, start = parse_header(data)
    result: dict[str, Any] = {}
    for key, entry in header.items():
        numpy_name, itemsize, torch_name = _DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        count = (end - begin) // itemsize
        shape = tuple(entry["shape"])
        if frameworks.get(key, "numpy") == "torch":
            require("torch", f"tensor {key!r}, saved from torch")
            import torch

            dtype = getattr(torch, torch_name)
            if count == 0:
                result[key] = torch.empty(shape, dtype=dtype)
            else:
                result[key] = torch.frombuffer(data, dtype=dtype, count=count, offset=start + begin).reshape(
                    shape
                )
        else:
            if numpy_name is None:
                raise FormatError(
                    f"tensor {key!r}: {entry['dtype']} has no numpy dtype; save it as a torch tensor"
                )
            result[key] = np.frombuffer(
                data, dtype=np.dtype(numpy_name).newbyteorder("<"), count=count, offset=start + begin
            ).reshape(shape)
    return result


def count_non_finite(piece: memoryview, code: str) -> int:
    """Number of NaN/inf values in a float chunk (0 for other dtypes). A sum runs at memory speed and is
    finite iff every term is - except when finite terms overflow, which the exact scan then settles."""
    if code not in FLOAT_CODES:
        return 0
    if code == "BF16":
        bits = np.frombuffer(piece, dtype="<u2")
        return int(np.count_nonzero((bits & 0x7F80) == 0x7F80))
    values = np.frombuffer(piece, dtype=np.dtype(_DTYPES[code][0]).newbyteorder("<"))
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(values)):
            return 0
    return int(values.size - np.count_nonzero(np.isfinite(values)))


__all__ = [
    "FLOAT_CODES",
    "FormatError",
    "TensorBytes",
    "count_non_finite",
    "decode",
    "encode",
    "is_tensor",
    "parse_header",
    "read_header",
    "tensor_bytes",
]
