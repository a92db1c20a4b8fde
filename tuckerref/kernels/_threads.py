"""Thread policy for small workloads.

Starting a parallel region wakes the other threads of Numba's pool; for a layer of a few
thousand multiply-accumulates (l1 to l_out, a compressed network's small factors) that costs
more than the work itself, and far more when another process holds the other core. Kernels
below :data:`SMALL_WORK` multiply-accumulates therefore run their parallel loops on one thread.
"""
from __future__ import annotations

from contextlib import contextmanager

import numba

#: Multiply-accumulates under which a kernel call runs on a single thread.
SMALL_WORK = 1 << 18


@contextmanager
def threads_for(work: int):
    """Limit Numba to one thread inside the block when ``work`` is below :data:`SMALL_WORK`."""
    previous = numba.get_num_threads()
    if work >= SMALL_WORK or previous == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)
