"""Kernel throughput of the engine, beside what this machine's NumPy reaches in the same run.

Batch 1, float32, one clip of the paper's size (28 x 120 x 160 frames):

* conv3d forward of c1 (4 -> 6, kernel (5, 11, 11), padding (2, 5, 5)) and of the compressed c1's
  core (2 -> 2, same kernel): median time and GFLOP/s, with GFLOP/s = 2 * multiply-accumulates
  (S * T * kD * kH * kW per output position, padded positions included) / time; the ratio of the
  two convolutions' GFLOP/s (1.0 means time exactly proportional to FLOPs); on a target with
  64-byte vectors (AVX-512), the same two convolutions with 32-byte register tiles as well, in the
  same rounds, and the speed-up of the wider vectors;
* conv3d_backward of the same two shapes: weight gradient alone (``need_grad_x=False``) and
  input + weight gradients, each with GFLOP/s counted the same way (one forward's MACs per gradient);
* the 1x1x1 (pointwise) path for the compressed c1's factor shapes (4 -> 2, 2 -> 6): effective
  bandwidth = (input bytes + output bytes) / time;
* references measured in the same run: a large float32 matrix product (NumPy's BLAS) in GFLOP/s,
  and a large ``np.copyto`` in GB/s (read + write).

    .venv/bin/python bench/kernels.py [--repeats 5] [--threads 2]

Every figure is the median of ``--repeats`` timed calls after one untimed warm-up call (which also
compiles the kernels); the two forward convolutions are timed round robin, one call each per
round, so that their ratio does not depend on the machine's drift. On a shared, loaded machine
the figures are indicative only.
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed calls per figure (median reported)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for Numba (numba.set_num_threads) and for NumPy's BLAS (default: all cores)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads is not None:
    # BLAS reads its thread count when NumPy is imported, so set it first.
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

from math import prod  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from _rounds import round_robin_medians, tiles_of_at_most  # noqa: E402
from tuckerref import conv3d, conv3d_backward  # noqa: E402
from tuckerref.kernels import simd  # noqa: E402
from tuckerref.flops import conv_multiplications  # noqa: E402
from tuckerref.kernels import window_output_dims  # noqa: E402

CLIP = (28, 120, 160)
KERNEL, PADDING = (5, 11, 11), (2, 5, 5)
CONVS = [("c1 (4->6)", 4, 6), ("c1 core (2->2)", 2, 2)]
POINTWISE = [("c1 factor U_s (4->2)", 4, 2), ("c1 factor U_t (2->6)", 2, 6)]


def median_seconds(fn, repeats):
    """Median wall time of ``repeats`` calls of ``fn`` after one untimed warm-up call."""
    return round_robin_medians({"": fn}, repeats)[""]


def forward_with_tiles_of(nbytes, x, w):
    with tiles_of_at_most(nbytes):
        return conv3d(x, w, padding=PADDING)


def conv_macs(S, T, kernel, padding, clip=CLIP):
    out = window_output_dims(clip, kernel, (1, 1, 1), padding)
    return conv_multiplications(S, T, prod(kernel), prod(out))


def main(args):
    if args.threads is not None:
        numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []  # (what, shape, median ms, figure, unit)

    conv_gflops = {}
    arrays = {}
    for name, S, T in CONVS:
        x = rng.standard_normal((1, S) + CLIP, dtype=np.float32)
        w = (0.01 * rng.standard_normal((T, S) + KERNEL)).astype(np.float32)
        arrays[name] = (x, w, 2 * conv_macs(S, T, KERNEL, PADDING), f"{S}x{'x'.join(map(str, CLIP))}, k {KERNEL}")
    # The two forward convolutions are timed together, round robin: their ratio is the figure
    # that says whether time follows FLOPs, and it must not depend on when each was measured.
    widths = sorted({simd.VECTOR_BYTES, 32}, reverse=True)  # the target's widest first
    forward = round_robin_medians({(name, nbytes): (lambda x=x, w=w, nbytes=nbytes: forward_with_tiles_of(nbytes, x, w))
                                   for name, (x, w, _, _) in arrays.items() for nbytes in widths}, args.repeats)
    for nbytes in widths:
        for name, S, T in CONVS:
            x, w, flop, shape = arrays[name]
            t = forward[name, nbytes]
            label = f"conv3d forward {name}" + ("" if nbytes == widths[0] else f", {nbytes}-byte tiles")
            if nbytes == widths[0]:
                conv_gflops[name] = flop / t / 1e9
            rows.append((label, shape, t, flop / t / 1e9, "GFLOP/s"))
    for name, S, T in CONVS:
        x, w, flop, shape = arrays[name]
        g = rng.standard_normal(conv3d(x, w, padding=PADDING).shape, dtype=np.float32)
        t = median_seconds(lambda: conv3d_backward(x, w, g, padding=PADDING, need_grad_x=False), args.repeats)
        rows.append((f"backward grad_weight {name}", shape, t, flop / t / 1e9, "GFLOP/s"))
        t = median_seconds(lambda: conv3d_backward(x, w, g, padding=PADDING), args.repeats)
        rows.append((f"backward grad_x+grad_weight {name}", shape, t, 2 * flop / t / 1e9, "GFLOP/s"))

    for name, S, T in POINTWISE:
        x = rng.standard_normal((1, S) + CLIP, dtype=np.float32)
        w = rng.standard_normal((T, S, 1, 1, 1), dtype=np.float32)
        moved = (S + T) * prod(CLIP) * 4
        t = median_seconds(lambda: conv3d(x, w), args.repeats)
        rows.append((f"conv3d 1x1x1 {name}", f"{S}x{'x'.join(map(str, CLIP))}", t, moved / t / 1e9, "GB/s"))

    # The references run last: OpenBLAS's threads keep spinning for a while after a matrix
    # product, and measured first they slowed the next Numba kernel by up to a third.
    n = 2048
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    t = median_seconds(lambda: a @ b, args.repeats)
    matmul_gflops = 2 * n**3 / t / 1e9
    rows.append(("NumPy matmul float32", f"{n}x{n} @ {n}x{n}", t, matmul_gflops, "GFLOP/s"))

    src = rng.standard_normal(2**24, dtype=np.float32)  # 64 MiB
    dst = np.empty_like(src)
    t = median_seconds(lambda: np.copyto(dst, src), args.repeats)
    copy_gbs = 2 * src.nbytes / t / 1e9
    rows.append(("np.copyto float32", "64 MiB", t, copy_gbs, "GB/s"))

    threads = numba.get_num_threads()
    print(f"bench/kernels.py: batch 1, float32, median of {args.repeats} after a warm-up; "
          f"{threads} Numba thread(s) ({numba.threading_layer()} layer), {os.cpu_count()} CPUs")
    width = max(len(r[0]) for r in rows)
    swidth = max(len(r[1]) for r in rows)
    print(f"{'what':<{width}}  {'shape':<{swidth}}  {'median ms':>10}  figure")
    for what, shape, t, figure, unit in rows:
        print(f"{what:<{width}}  {shape:<{swidth}}  {t * 1e3:10.2f}  {figure:8.2f} {unit}")
    big, small = (conv_gflops[name] for name, _, _ in CONVS)
    print(f"\nconv3d forward GFLOP/s ratio, core / c1: {small / big:.3f} (1.0 = time proportional to FLOPs)")
    print(f"conv3d forward c1 / NumPy matmul: {big / matmul_gflops:.3f}; "
          f"core / NumPy matmul: {small / matmul_gflops:.3f}")
    if len(widths) > 1:
        print("conv3d forward, time with 32-byte tiles / time with 64-byte tiles: " + "; ".join(
            f"{name} x{forward[name, 32] / forward[name, 64]:.3f}" for name, _, _ in CONVS))
    for name, S, T in POINTWISE:
        bw = next(r[3] for r in rows if r[0] == f"conv3d 1x1x1 {name}")
        print(f"1x1x1 {name}: {bw / copy_gbs:.3f} of np.copyto bandwidth")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
