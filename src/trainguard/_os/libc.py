"""The C library, loaded once for every ctypes call trainguard makes (prctl, fanotify, inotify, mmap)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def libc() -> ctypes.CDLL:
    """libc with ``errno`` kept for ``ctypes.get_errno()`` after each call."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


__all__ = ["libc"]
