"""A state tree (dicts, lists, tuples, scalars, tensors) as a JSON skeleton plus named tensors.

This is how an optimizer's ``state_dict`` (int keys, nested dicts, tensors mixed with numbers) is stored
without pickle: the structure goes to ``tree.json``, every tensor to one safetensors file, each leaf in the
skeleton naming its tensor by key. Nothing in either file can execute code when read back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from trainguard.checkpoints._safetensors import is_tensor

_TAG = "__tg__"
# Deeper than any real state (an optimizer's state_dict is ~4 levels); recursion must never reach Python's
# own limit, on save or on reading a forged tree.json.
MAX_DEPTH = 64
# The safetensors header's own key: a tensor named like it would make the file unreadable.
_RESERVED_KEYS = frozenset({"__metadata__"})
# numpy scalar kinds stored exactly (bool, signed, unsigned, float); anything else would need pickle.
_SCALAR_KINDS = "biuf"


class UnsupportedValue(TypeError):
    def __init__(self, path: str, value: object, rule: str | None = None) -> None:
        self.path = path
        super().__init__(
            f"state value at {path or '/'!r}: {rule}"
            if rule
            else f"state value at {path or '/'!r} has type {type(value).__name__}, which cannot be stored "
            "without pickle; convert it to tensors/numbers/strings or use format: torch"
        )


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsupportedValue(path, text, f"{text!r} is not valid Unicode (a lone surrogate)") from None


def flatten(state: object) -> tuple[Any, dict[str, Any]]:
    """Return (skeleton, tensors by key). Tensor keys are the '/'-joined path of the value."""
    tensors: dict[str, Any] = {}

    def visit(value: object, path: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise UnsupportedValue(path, value, f"nested deeper than {MAX_DEPTH} levels")
        if is_tensor(value):
            key = path or "tensor"
            if key in _RESERVED_KEYS:
                raise UnsupportedValue(path, value, f"the key {key!r} is reserved by the safetensors format")
            while key in tensors:  # a key containing '/' can collide with a nested path
                key += "#"
            tensors[key] = value
            return {_TAG: "tensor", "key": key}
        if isinstance(value, Mapping):
            items = []
            for k, v in value.items():
                if isinstance(k, bool) or not isinstance(k, str | int):
                    raise UnsupportedValue(f"{path}/{k!r} (key)", k)
                if isinstance(k, str):
                    _check_text(k, path)
                items.append([k, visit(v, f"{path}/{k}" if path else str(k), depth + 1)])
            return {_TAG: "dict", "items": items}
        if isinstance(value, list | tuple):
            kind = "list" if isinstance(value, list) else "tuple"
            children = [visit(v, f"{path}/{i}" if path else str(i), depth + 1) for i, v in enumerate(value)]
            return {_TAG: kind, "items": children}
        return _leaf(value, path)

    return visit(state, "", 0), tensors


def _leaf(value: object, path: str) -> Any:
    if isinstance(value, str):
        _check_text(value, path)
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.generic):
        # Kept a numpy scalar of its own dtype (np.float32(0.1) must not come back as a Python float).
        if value.dtype.kind not in _SCALAR_KINDS:
            raise UnsupportedValue(path, value)
        return {_TAG: "numpy", "dtype": value.dtype.str, "value": _number(value.item())}
    if isinstance(value, int | float):
        return _number(value)
    raise UnsupportedValue(path, value)


def _number(value: bool | int | float) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {_TAG: "float", "repr": repr(value)}
    return value


def unflatten(skeleton: Any, tensors: Mapping[str, Any], depth: int = 0) -> Any:
    """Rebuild the state; raises ValueError on a skeleton that does not match the tensors (or is not one
    this module writes: a forged tree.json)."""
    if depth > MAX_DEPTH + 1:
        raise ValueError(f"tree.json is nested deeper than {MAX_DEPTH} levels")
    if isinstance(skeleton, dict):
        return _node(skeleton, tensors, depth)
    if skeleton is None or isinstance(skeleton, bool | int | float | str):
        return skeleton
    raise ValueError(f"tree.json has an unexpected value of type {type(skeleton).__name__}")


def _node(node: dict[str, Any], tensors: Mapping[str, Any], depth: int) -> Any:
    kind = node.get(_TAG)
    if kind == "tensor":
        key = str(node.get("key"))
        if key not in tensors:
            raise ValueError(f"tree.json names tensor {key!r}, which is not in the tensor file")
        return tensors[key]
    if kind in ("dict", "list", "tuple"):
        items = node.get("items")
        if not isinstance(items, list):
            raise ValueError(f"tree.json has a {kind} node without a list of items")
        if kind != "dict":
            children = [unflatten(v, tensors, depth + 1) for v in items]
            return children if kind == "list" else tuple(children)
        if not all(isinstance(i, list) and len(i) == 2 and isinstance(i[0], str | int) for i in items):
            raise ValueError("tree.json has a malformed dict node")
        return {k: unflatten(v, tensors, depth + 1) for k, v in items}
    if kind == "float":
        return float(str(node.get("repr")))
    if kind == "numpy":
        dtype = np.dtype(str(node.get("dtype")))
        if dtype.kind not in _SCALAR_KINDS:
            raise ValueError(f"tree.json has a numpy scalar of dtype {dtype}")
        value = node.get("value")
        return dtype.type(unflatten(value, tensors, depth + 1) if isinstance(value, dict) else value)
    raise ValueError(f"tree.json has an unknown node {kind!r}")


def tensor_keys(skeleton: Any) -> list[str]:
    """Every tensor key the skeleton refers to."""
    found: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get(_TAG) == "tensor":
                found.append(node["key"])
            else:
                for item in node.get("items", []):
                    visit(item[1] if node.get(_TAG) == "dict" else item)

    visit(skeleton)
    return found


__all__ = ["UnsupportedValue", "flatten", "tensor_keys", "unflatten"]
