"""Bindings to training libraries (optional dependencies, imported only when used)."""
