"""Optional dependencies (torch, psycopg, matplotlib): checked where a feature needs one,
so a missing package is one line naming the extra to install - not an ImportError from deep inside."""

from __future__ import annotations

import importlib.util

from trainguard.errors import MissingDependency

# module -> (distribution to install, trainguard extra that pins it)
_PACKAGES = {
    "torch": ("torch", "torch"),
    "psycopg": ("psycopg", "postgres"),
    "matplotlib": ("matplotlib", "report"),
    "cryptography": ("cryptography", "signing"),
}


def require(module: str, feature: str) -> None:
    """Raise :class:`MissingDependency` unless ``module`` can be imported (``feature`` says who needs it)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        found = False
    if not found:
        package, extra = _PACKAGES[module]
        raise MissingDependency(package, extra, feature)


__all__ = ["require"]
