"""Counted, not timed: the exported C's cost per layer under Valgrind, against FLOPs.

Wall time on a shared machine moves by a third from run to run; instruction and simulated cache
counts do not. This exports the paper's network and its Table 2 compression (paper ranks), and with
``--c3d`` also a narrow C3D (``tuckerref.models.c3d(width=...)``) and its Algorithm 1 compression
(every Tucker rank a fraction of its mode), and counts each with
:func:`tuckerref.export.counters.count_networks`: per convolution and linear (sub-)layer,
instructions, data reads and writes and last-level misses of Callgrind's simulated caches; the fit
of each count against FLOPs (R^2), and the last-level misses per FLOP of each Tucker-2 block's 1x1x1
factors against its core's.

    .venv/bin/python bench/c_counts.py [--input-shape 4 8 36 48] [--c3d [--c3d-width 0.25]
        [--c3d-shape 3 16 32 32] [--c3d-ranks fraction:0.25]] [--ll-kib 1024] [--out DIR]

The same as ``tuckerref table2 --backend c --counter cache`` for one network; repeated runs give the
same counts (the clip is fixed and Valgrind's caches are simulated).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuckerref.compress import compress_network, parse_ranks
from tuckerref.export.counters import check_counter, count_networks, render_counts
from tuckerref.models import c3d, thetis_net
from tuckerref.report import write_json, write_text

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-shape", type=int, nargs=4, default=(4, 8, 36, 48), metavar=("C", "F", "H", "W"),
                   help="the paper network's clip (default 4 8 36 48)")
    p.add_argument("--counter", choices=("instructions", "cache"), default="cache")
    p.add_argument("--c3d", action="store_true", help="also count a narrow C3D and its Algorithm 1 compression")
    p.add_argument("--c3d-width", type=float, default=0.25)
    p.add_argument("--c3d-shape", type=int, nargs=4, default=(3, 16, 32, 32), metavar=("C", "F", "H", "W"))
    p.add_argument("--c3d-ranks", default="fraction:0.25", help="Algorithm 1's ranks for the C3D (default fraction:0.25)")
    p.add_argument("--ll-kib", type=int, default=None,
                   help="simulated last-level cache in KiB (16-way, 64-byte lines; default: Valgrind's, the host's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for c_counts*.md/.json (default: print only)")
    args = p.parse_args(argv)
    try:
        check_counter(args.counter)
    except ValueError as exc:
        sys.exit(f"bench/c_counts.py: {exc}")
    runs = []
    shape = tuple(args.input_shape)
    original = thetis_net(shape, seed=args.seed).eval()
    runs.append(("paper", shape, {"original": original,
                                  "compressed": compress_network(original, "table2", "paper", method="hosvd").eval()}))
    if args.c3d:
        shape3 = tuple(args.c3d_shape)
        net = c3d(shape3, num_classes=10, width=args.c3d_width, seed=args.seed).eval()
        runs.append((f"c3d_w{args.c3d_width:g}", shape3, {
            "original": net, "compressed": compress_network(net, "algorithm1", parse_ranks(args.c3d_ranks),
                                                            input_shape=shape3, method="hosvd").eval()}))
    for name, clip_shape, nets in runs:
        clip = np.random.default_rng(args.seed).standard_normal(clip_shape).astype(np.float32)
        table = count_networks(nets, clip, args.counter, ll_bytes=args.ll_kib * 1024 if args.ll_kib else None)
        text = render_counts(table)
        print(f"## {name}\n\n{text}\n")
        if args.out:
            for path in (write_text(Path(args.out) / f"c_counts_{name}.md", text),
                         write_json(Path(args.out) / f"c_counts_{name}.json", table)):
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
