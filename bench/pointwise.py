"""1x1x1 convolutions with wide channels: the register-tiled kernel beside the streaming one,
NumPy's float32 matrix product of the same (T x S) @ (S x positions) shape, and PyTorch.

Shapes: the first and last factors of Tucker-2 blocks of a compressed C3D (256 -> 64, 64 -> 256,
128 -> 32, 32 -> 128, 512 -> 128, 128 -> 512 at 8x28x28 and 4x14x14; 64 -> 16 and 16 -> 64 at
16x56x56), batch 1 and 8, float32. GFLOP/s = 2 * N * S * T * positions / median time. The four
engines are timed round robin, one call each per round, after one untimed warm-up call (which
also compiles the kernels); ratios are of GFLOP/s in the same run. ``--crossover`` instead times
the tiled and streaming kernels on narrow channel counts at 16x56x56 (where :mod:`tuckerref.kernels.pointwise_tiles`
switches).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/pointwise.py [--rounds 7] [--threads 2] [--crossover]

(leave OPENBLAS_CORETYPE unset for this command only: a forced core type slows NumPy's BLAS).
On a shared, loaded machine the figures are indicative only; quote ratios from one run.
"""
from __future__ import annotations

import argparse

import numba
import numpy as np

from _rounds import round_robin_medians
from tuckerref.kernels.pointwise import pointwise_forward
from tuckerref.kernels.pointwise_tiles import tiled_forward

SHAPES = [(256, 64, (8, 28, 28)), (64, 256, (8, 28, 28)), (128, 32, (8, 28, 28)), (32, 128, (8, 28, 28)),
          (512, 128, (8, 28, 28)), (128, 512, (8, 28, 28)),
          (256, 64, (4, 14, 14)), (64, 256, (4, 14, 14)), (128, 32, (4, 14, 14)), (32, 128, (4, 14, 14)),
          (512, 128, (4, 14, 14)), (128, 512, (4, 14, 14)),
          (64, 16, (16, 56, 56)), (16, 64, (16, 56, 56))]

CROSSOVER = [(S, T) for S in (4, 8, 12, 16, 24, 32, 64) for T in (4, 8, 12, 16, 24, 32, 64)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (medians reported)")
    p.add_argument("--threads", type=int, default=2, help="threads for Numba, BLAS and PyTorch")
    p.add_argument("--crossover", action="store_true", help="tiled vs streaming on narrow channel counts")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        p.error("--rounds and --threads must be >= 1")
    return args


def engines_for(N, S, T, dims, torch):
    r = np.random.default_rng(0)
    P = int(np.prod(dims))
    x = r.standard_normal((N, S, P), dtype=np.float32)
    w = r.standard_normal((T, S), dtype=np.float32)
    b = np.zeros(T, np.float32)
    out = np.empty((N, T, P), np.float32)
    out_np = np.empty((N, T, P), np.float32)
    engines = {"tiled": lambda: tiled_forward(x, w, b, out),
               "streaming": lambda: pointwise_forward(x, w, b, out),
               "numpy": lambda: np.matmul(w, x, out=out_np)}
    if torch is not None:
        xt = torch.from_numpy(x.reshape((N, S) + dims))
        wt = torch.from_numpy(w.reshape(T, S, 1, 1, 1))
        bt = torch.from_numpy(b)

        def torch_conv():
            with torch.no_grad():
                torch.nn.functional.conv3d(xt, wt, bt)
        engines["torch"] = torch_conv
    return engines


def main(argv=None):
    args = parse_args(argv)
    numba.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
        threadpool_limits(args.threads)
        for lib in threadpool_info():
            print(f"# BLAS: {lib.get('internal_api')} {lib.get('version')} {lib.get('architecture')}, "
                  f"{lib.get('num_threads')} threads")
    except ImportError:
        print("# threadpoolctl not installed: BLAS threads not set")
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    print(f"# float32, {args.threads} threads, medians of {args.rounds} round-robin rounds")
    if args.crossover:
        print("| S -> T | positions | tiled GFLOP/s | streaming GFLOP/s | tiled / streaming |")
        print("|---|---|---|---|---|")
        for S, T in CROSSOVER:
            dims = (16, 56, 56)
            e = engines_for(1, S, T, dims, None)
            m = round_robin_medians({k: e[k] for k in ("tiled", "streaming")}, args.rounds)
            flop = 2 * S * T * np.prod(dims)
            print(f"| {S} -> {T} | {'x'.join(map(str, dims))} | {flop / m['tiled'] / 1e9:.1f} | "
                  f"{flop / m['streaming'] / 1e9:.1f} | {m['streaming'] / m['tiled']:.2f} |", flush=True)
        return
    cols = ["tiled", "streaming", "numpy"] + (["torch"] if torch is not None else [])
    print("| S -> T | positions | N | " + " | ".join(f"{c} GFLOP/s" for c in cols)
          + " | tiled / numpy |" + (" tiled / torch |" if torch is not None else ""))
    print("|---" * (3 + len(cols) + 1 + (torch is not None)) + "|")
    for N in (1, 8):
        for S, T, dims in SHAPES:
            m = round_robin_medians(engines_for(N, S, T, dims, torch), args.rounds)
            flop = 2 * N * S * T * np.prod(dims)
            g = {k: flop / v / 1e9 for k, v in m.items()}
            line = f"| {S} -> {T} | {'x'.join(map(str, dims))} | {N} | " + " | ".join(f"{g[c]:.1f}" for c in cols)
            line += f" | {g['tiled'] / g['numpy']:.2f} |"
            if torch is not None:
                line += f" {g['tiled'] / g['torch']:.2f} |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
