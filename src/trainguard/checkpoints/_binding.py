"""A store and its registry belong to each other: ``<store>/.trainguard/store.json`` records the id of the
registry the store was first written with (``Registry.registry_id``).

So a store cannot silently change registries (a typo'd URL, a deleted ``registry.db`` recreated empty, another
user's registry), and the watchdog can tell whether the files under a store are evidence for runs of *its*
registry before it acts on them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from trainguard._os.files import write_atomically
from trainguard.errors import RegistryMismatch
from trainguard.names import BINDING_FILE, meta_directory

_MAX_BYTES = 64 << 10  # a binding is a few hundred bytes; never read an unbounded file


def binding_path(store: Path) -> Path:
    return meta_directory(store) / BINDING_FILE


def read_binding(store: Path) -> dict[str, Any] | None:
    """The store's binding, or None when it has none (or it cannot be read as one)."""
    path = binding_path(store)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        data = os.read(fd, _MAX_BYTES)
    finally:
        os.close(fd)
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return None
    return body if isinstance(body, dict) and isinstance(body.get("registry_id"), str) else None


def bound_to(store: Path, registry_id: str) -> bool:
    binding = read_binding(store)
    return binding is not None and binding["registry_id"] == registry_id


def check_binding(store: Path, registry_id: str, registry_url: str) -> bool:
    """Raise :class:`RegistryMismatch` when ``store`` belongs to another registry; False when it has no
    binding yet."""
    binding = read_binding(store)
    if binding is None:
        return False
    if binding["registry_id"] != registry_id:
        given, bound = f"{registry_url} (registry {registry_id})", binding["registry_id"]
        raise RegistryMismatch(str(store), given, f"bound to registry {bound}")
    return True


def bind(store: Path, registry_id: str, registry_url: str, *, rebind: bool = False) -> None:
    """Record that ``store`` belongs to ``registry_id`` (a writer's first open); an existing binding to
    another registry raises, unless ``rebind`` (a registry rebuilt from the store's signed manifests)."""
    if not rebind and check_binding(store, registry_id, registry_url):
        return
    meta_directory(store).mkdir(parents=True, exist_ok=True)
    body = {"registry_id": registry_id, "registry": registry_url, "bound_at": time.time()}
    write_atomically(binding_path(store), json.dumps(body, indent=2, sort_keys=True) + "\n")


__all__ = ["bind", "binding_path", "bound_to", "check_binding", "read_binding"]
