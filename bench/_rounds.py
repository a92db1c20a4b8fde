"""What the benchmarks share: the whole-pass scripts' command line and the paper's two networks,
and a cap on the register tiles' vector width.

Not a benchmark itself; ``bench/orchestration.py``, ``bench/vector_width.py`` and
``bench/kernels.py`` import it (run as scripts, their folder is on ``sys.path``).
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import numba
import numpy as np

from tuckerref.compress import compress_network
from tuckerref.kernels import simd
from tuckerref.models import PAPER_INPUT_SHAPE, thetis_net


def parse_round_args(doc: str, argv=None):
    """``--repeats`` (timed rounds, >= 1) and ``--threads`` (Numba threads, set here when given)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15, help="timed rounds (medians reported)")
    p.add_argument("--threads", type=int, default=None, help="Numba threads (default: all cores)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
        numba.set_num_threads(args.threads)
    return args


def round_robin_medians(fns: dict, repeats: int) -> dict:
    """{name: median wall time} of the callables, each warmed up once (which also compiles the
    kernels), then timed in ``repeats`` rounds of one call each, so that the machine's drift
    touches every figure alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def paper_networks() -> tuple:
    """(original, compressed, x): the paper's network (random weights, seed 0), its Table 2
    compression with the paper's ranks, both in eval mode, and one random clip (batch 1)."""
    original = thetis_net(PAPER_INPUT_SHAPE, seed=0).eval()
    compressed = compress_network(original, plan="table2", ranks="paper", method="hosvd").eval()
    x = np.random.default_rng(0).random((1,) + PAPER_INPUT_SHAPE, dtype=np.float32)
    return original, compressed, x


@contextmanager
def tiles_of_at_most(nbytes: int):
    """Run the block with register tiles of at most ``nbytes``-byte vectors (the target's widest is
    restored after). Each width is its own compiled specialisation, so both can be timed in one
    process."""
    widest = simd.VECTOR_BYTES
    simd.VECTOR_BYTES = min(nbytes, widest)
    try:
        yield
    finally:
        simd.VECTOR_BYTES = widest
