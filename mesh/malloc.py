"""Keep glibc from returning freed buffer memory to the kernel after every free.

A node moves 256 KiB attachment chunks through several buffers each (socket reads,
WebSocket frames, decryption, decoding). glibc serves allocations of that size with
mmap, or from the top of the heap and trims it back as soon as they are freed, so
every chunk paid page faults and the kernel zeroing fresh pages: measured on loopback,
a plain Tornado WebSocket receiver spent 300 µs per 256 KiB message, and 65 µs once
freed memory stays with the process. ``tune()`` sets the thresholds with mallopt(3);
elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 1024 * 1024    # larger blocks still come straight from mmap
TRIM_THRESHOLD = 32 * 1024 * 1024   # free memory kept at the top of the heap


def tune() -> bool:
    """True if glibc took both settings."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and \
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the allocator settings")
    return ok
