"""The process's memory allocator: keep freed memory instead of handing it back to the OS.

Each network call allocates its activations anew (a few MB each) and frees them at the end. glibc's
defaults serve such blocks from fresh mmap'd pages, or trim them off the heap when freed, so every call
page-faults all of its activations again. Keeping the heap (mallopt: mmap threshold at its 32 MiB
maximum, no trimming below 1 GiB) makes later calls reuse the same pages. Speed only: no bits change.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; False (and nothing changed) where libc is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The mmap threshold first: setting either one turns off glibc's dynamic thresholds.
    kept = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc keeps freed memory: %s", kept)
    return kept
