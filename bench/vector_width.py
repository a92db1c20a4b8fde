"""Whole inference passes with 64-byte against 32-byte register tiles, in the same rounds.

On a target with AVX-512 the register tiles use 64-byte vectors where a row allows them
(:func:`tuckerref.kernels.tiling.row_cover`). A tile's width is part of its compiled type, so
both widths can run in one process: this script times the paper's network and its Table 2
compression (paper ranks, random weights, batch 1, under ``no_grad``) with the tiles capped at
32 bytes and with the target's widest, round robin (one pass of each network at each width per
round), and prints the medians, each width's observed speed-up, and what the wider vectors gain.
Idle OpenMP workers sleep, as in ``tuckerref table2``.

    .venv/bin/python bench/vector_width.py [--repeats 15] [--threads 2]
"""
from __future__ import annotations

import statistics
import sys
import time

from tuckerref.profile import sleep_idle_workers

sleep_idle_workers()  # before Numba starts its threads

import numba  # noqa: E402

from _rounds import paper_networks, parse_round_args, tiles_of_at_most  # noqa: E402
from tuckerref.kernels import simd  # noqa: E402
from tuckerref.nn import no_grad  # noqa: E402


def main(argv=None):
    args = parse_round_args(__doc__, argv)
    widest = simd.VECTOR_BYTES
    if widest == 32:
        print("bench/vector_width.py: this target has no 64-byte vectors (no AVX-512); nothing to compare")
        return 0
    original, compressed, x = paper_networks()
    nets = {"original": original, "compressed": compressed}
    widths = (widest, 32)
    samples = {(name, width): [] for name in nets for width in widths}
    with no_grad():
        for round_ in range(args.repeats + 1):  # round 0 compiles or loads, untimed
            for width in widths:
                with tiles_of_at_most(width):
                    for name, net in nets.items():
                        t0 = time.perf_counter()
                        net(x)
                        if round_:
                            samples[name, width].append(time.perf_counter() - t0)
    median = {key: statistics.median(t) for key, t in samples.items()}
    print(f"batch 1, {numba.get_num_threads()} thread(s), medians of {args.repeats} rounds (round robin)")
    for width in widths:
        o, c = median["original", width], median["compressed", width]
        print(f"tiles of at most {width} bytes: original {o * 1e3:8.2f} ms, compressed {c * 1e3:7.2f} ms, "
              f"speed-up x{o / c:.2f}")
    print(f"time with 32-byte tiles / time with {widest}-byte tiles: "
          + ", ".join(f"{name} x{median[name, 32] / median[name, widest]:.3f}" for name in nets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
