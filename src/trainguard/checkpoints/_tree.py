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


class UnsupportedValue(TypeError):
    def __init__(self, path: str, value: object) -> None:
        self.path = path
        super().__init__(
            f"state value at {path or '/'!r} has type {type(value).__name__}, which cannot be stored without "
            "pickle; convert it to tensors/numbers/strings or use format: torch"
        )


def flatten(state: object) -> tuple[Any, dict[str, Any]]:
    """Return (skeleton, tensors by key). Tensor keys are the '/'-joined path of the value."""
    tensors: dict[str, Any] = {}

    def visit(value: object, path: str) -> Any:
        if is_tensor(value):
            key = path or "tensor"
            while key in tensors:  # a key containing '/' can collide with a nested path
                key += "#"
            tensors[key] = value
            return {_TAG: "tensor", "key": key}
        if isinstance(value, Mapping):
            items = []
            for k, v in value.items():
                if isinstance(k, bool) or not isinstance(k, str | int):
                    raise UnsupportedValue(f"{path}/{k!r} (key)", k)
                items.append([k, visit(v, f"{path}/{k}" if path else str(k))])
            return {_TAG: "dict", "items": items}
        if isinstance(value, list | tuple):
            kind = "list" if isinstance(value, list) else "tuple"
            return {
                _TAG: kind,
                "items": [visit(v, f"{path}/{i}" if path else str(i)) for i, v in enumerate(value)],
            }
        if value is None or isinstance(value, bool | str):
            return value
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {_TAG: "float", "repr": repr(value)}
        raise UnsupportedValue(path, value)

    return visit(state, ""), tensors


def unflatten(skeleton: Any, tensors: Mapping[str, Any]) -> Any:
    """Rebuild the state; raises ValueError on a skeleton that does not match the tensors."""
    if isinstance(skeleton, dict):
        kind = skeleton.get(_TAG)
        if kind == "tensor":
            key = str(skeleton.get("key"))
            if key not in tensors:
                raise ValueError(f"tree.json names tensor {key!r}, which is not in the tensor file")
            return tensors[key]
        if kind == "dict":
            return {k: unflatten(v, tensors) for k, v in skeleton["items"]}
        if kind == "list":
            return [unflatten(v, tensors) for v in skeleton["items"]]
        if kind == "tuple":
            return tuple(unflatten(v, tensors) for v in skeleton["items"])
        if kind == "float":
            return float(skeleton["repr"])
        raise ValueError(f"tree.json has an unknown node {kind!r}")
    if skeleton is None or isinstance(skeleton, bool | int | float | str):
        return skeleton
    raise ValueError(f"tree.json has an unexpected value of type {type(skeleton).__name__}")


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
