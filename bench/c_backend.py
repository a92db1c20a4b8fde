"""The paper's Table 2 timed in plain single-threaded C: does time follow FLOPs outside a framework?

Exports the original network and its Table 2 compression (paper ranks) to C99 with
``tuckerref.export``, compiles each with ``-O2`` (and, with ``--o3``, also ``-O3 -march=native``),
times every layer with main.c's ``-t`` (process CPU time, like the paper's ``process_time``; one clip,
one thread) and prints, per flag set:

* the paper-layout Table 2 (``tuckerref.commands.table2.render``: weights, FLOPs, time per layer with the
  sub-layer breakdown, theoretical speed-up = FLOPs ratio against observed speed-up = time ratio);
* every convolution and linear (sub-)layer with its FLOPs, time and achieved GFLOP/s: time is
  proportional to FLOPs exactly when the GFLOP/s column is constant.

Both networks are exported the same way: by default with ``pad_input`` (a first convolution reads a copy
of the clip in zero-padded rows, as the compressed core reads its first factor's padded output; the
copy's time counts as the convolution's), with ``--no-pad-input`` both without it.

    .venv/bin/python bench/c_backend.py --repeats 3 [--o3] [--engine] [--no-pad-input] [--out runs/c_backend]

``--engine`` also times the engine's own kernels with one Numba thread on the same layers and prints
the C's GFLOP/s as a fraction of the engine's, layer by layer.

The compressed weights come from ``compress_network(net, "table2", "paper", method=...)``; timing does
not depend on the weight values, so the default decomposition is the quick HOSVD. Figures taken on a
shared, loaded machine are indicative only.
"""
from __future__ import annotations

import argparse
import functools
import sys

import numpy as np

from tuckerref.commands import table2
from tuckerref.export import DEFAULT_CFLAGS, profile_c
from tuckerref.models import PAPER_INPUT_SHAPE, thetis_net
from tuckerref.profile import profile_network
from tuckerref.report import markdown_table

try:
    from tuckerref.compress import compress_network
except ImportError:
    sys.exit("bench/c_backend.py needs tuckerref.compress (compress_network), which this checkout lacks")

O3_CFLAGS = ("-O3", "-march=native", "-std=c99", "-Wall", "-Werror")


def leaf_rows(table: dict) -> list:
    """[network, layer, MFLOP, CPU ms, GFLOP/s] of every convolution and linear (sub-)layer."""
    rows = []
    for which in ("original", "compressed"):
        def walk(count, timing):
            if count["children"]:
                for c, t in zip(count["children"], timing["children"]):
                    walk(c, t)
            elif count["kind"] in ("Conv3d", "Linear"):
                seconds = timing[table["clock"]]["median"]
                rows.append([which, count["name"], f"{count['flops'] / 1e6:,.3f}", f"{seconds * 1e3:,.3f}",
                             f"{count['flops'] / seconds / 1e9:.2f}" if seconds > 0 else "-"])

        for count, timing in zip(table["counts"][which]["layers"], table["profiles"][which]["layers"]):
            walk(count, timing)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-shape", type=int, nargs=4, default=PAPER_INPUT_SHAPE, metavar=("C", "F", "H", "W"))
    p.add_argument("--repeats", type=int, default=3, help="timed forward passes per network (default 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--o3", action="store_true", help="also build with -O3 -march=native")
    p.add_argument("--method", choices=("hosvd", "hooi"), default="hosvd", help="decomposition (timing-neutral)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", action="store_true",
                   help="also time the engine single-threaded (numba, threads=1) and print C / engine GFLOP/s per layer")
    p.add_argument("--no-pad-input", dest="pad_input", action="store_false",
                   help="export both networks without pad_input (the original's c1 then copies edges per tile)")
    p.add_argument("--out", default=None, help="folder for c_backend[_O3].md/.json (default: print only)")
    args = p.parse_args(argv)

    shape = tuple(args.input_shape)
    original = thetis_net(shape, seed=args.seed).eval()
    compressed = compress_network(original, "table2", "paper", method=args.method).eval()
    x = np.random.default_rng(args.seed).random((1,) + shape, dtype=np.float32)
    flag_sets = [("O2", DEFAULT_CFLAGS)] + ([("O3", O3_CFLAGS)] if args.o3 else [])
    engine = None
    if args.engine:
        engine_table = table2.build_table(original, compressed, x, functools.partial(profile_network, threads=1),
                                          repeats=args.repeats, warmup=args.warmup, clock="cpu")
        engine = {(row[0], row[1]): float(row[4]) for row in leaf_rows(engine_table) if row[4] != "-"}
    for label, cflags in flag_sets:
        profiler = functools.partial(profile_c, cflags=cflags, pad_input=args.pad_input)
        table = table2.build_table(original, compressed, x, profiler, repeats=args.repeats, warmup=args.warmup,
                                   clock="cpu")
        table.update(cflags=" ".join(cflags), plan="table2", ranks="paper")
        text = "\n\n".join([
            f"C backend, cc {' '.join(cflags)}, single thread (under load, indicative only); both networks "
            f"exported {'with' if args.pad_input else 'without'} pad_input",
            table2.render(table),
            "Per (sub-)layer: time is proportional to FLOPs where GFLOP/s is constant",
            markdown_table(["network", "layer", "MFLOP", "CPU ms", "GFLOP/s"], leaf_rows(table))])
        if engine:
            ratios = [[*row[:2], row[4], f"{engine[tuple(row[:2])]:.2f}",
                       f"{float(row[4]) / engine[tuple(row[:2])]:.2f}"]
                      for row in leaf_rows(table) if row[4] != "-" and engine.get(tuple(row[:2]))]
            text += ("\n\nC against the engine, both single-threaded, same layer (the engine timed just before)\n"
                     + markdown_table(["network", "layer", "C GFLOP/s", "engine GFLOP/s", "C / engine"], ratios))
        imp = table["total"]["improvement"]
        text += (f"\n\nTotal: observed speed-up x{imp['observed_speedup']:.2f} against the theoretical "
                 f"x{imp['theoretical_speedup']:.2f} (FLOPs ratio); the paper observed x1.40 in PyTorch.")
        print(text + "\n")
        if args.out:
            for path in table2.write_outputs(args.out, table, text, stem=f"c_backend_{label}"):
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
