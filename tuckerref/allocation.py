"""The process's memory policy for large arrays: keep freed blocks for the next allocation.

A training step allocates its activations and gradients afresh (tens of MiB each for a C3D-class
network at batch 8) and frees them at the end. glibc's malloc serves blocks above its mmap threshold
(128 KiB, raised dynamically up to 32 MiB as blocks are freed) with fresh mappings and returns them
to the operating system when they are freed, so every step faults each of those pages back in, zeroed
by the kernel, from every thread that first writes it. :func:`keep_freed_memory` raises the mmap
threshold to its 32 MiB maximum and the trim threshold to 1 GiB, so that freed blocks stay in the
heap and the next step reuses them: a narrow C3D's training step on two threads went from a median
of 373-380 ms (slowest of 7: 420-457 ms) to 355-368 ms (slowest 360-376 ms), bench/RESULTS.md.

It changes the whole process's allocator (both engines, in a benchmark that compares them), so the
commands that train call it, and a library user may; importing tuckerref does not. Elsewhere than
glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util

#: mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3

#: The largest mmap threshold glibc accepts on 64-bit systems, and the trim threshold used with it.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks of up to 32 MiB in the heap (see the module docstring).
    Returns whether the allocator accepted the settings (False where it is not glibc's)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all(mallopt(param, value) == 1 for param, value in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                                (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                                                (_M_TOP_PAD, 64 << 20)))
