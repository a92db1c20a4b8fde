"""The layers of a real video CNN: tuckerref's convolution beside PyTorch's, round robin in one process.

C3D's 3x3x3 convolutions (Tran et al. 2015, pad 1, input 3 x 16 x 112 x 112), two Tucker-2 factor
shapes (1x1x1, 256 -> 64 and 64 -> 256 on 8 x 28 x 28) and Tucker-2 cores of 8 to 128 channels on
those frame sizes, float32, forward, batch 1 (and ``--batch 8``). For each layer every engine path
that applies is timed (``panels``: :func:`tuckerref.kernels.conv3d_panels.panel_forward_padded`, on
gathered panels or in-place rows as it decides; ``rows``: the row register tiles of
:mod:`tuckerref.kernels.conv3d_tiles`; ``auto``: what ``conv3d`` picks), and PyTorch when it is
installed, one call each per round, so that ratios do not depend on the machine's drift.

GFLOP/s = 2 x multiply-accumulates / median time. "of best" is a layer's best engine GFLOP/s over the
best GFLOP/s any engine reaches on any of the layers in the run (the machine's practical peak).

    .venv/bin/python bench/c3d_layers.py [--repeats 5] [--threads 2] [--batch 1] [--only conv3a,conv5a]
"""
from __future__ import annotations

import argparse
import sys

import numba
import numpy as np

from _rounds import round_robin_medians
from tuckerref.kernels.conv3d import conv3d
from tuckerref.kernels.conv3d_panels import panel_forward_padded, panels_fit
from tuckerref.kernels.conv3d_tiles import forward_tiles_padded, tiles_fit
from tuckerref.kernels.padding import _pad

# name, S, T, (F, H, W), kernel edge, padding
LAYERS = [
    ("conv1a", 3, 64, (16, 112, 112), 3, 1),
    ("conv2a", 64, 128, (16, 56, 56), 3, 1),
    ("conv3a", 128, 256, (8, 28, 28), 3, 1),
    ("conv3b", 256, 256, (8, 28, 28), 3, 1),
    ("conv4a", 256, 512, (4, 14, 14), 3, 1),
    ("conv5a", 512, 512, (2, 7, 7), 3, 1),
    ("1x1x1 256->64", 256, 64, (8, 28, 28), 1, 0),
    ("1x1x1 64->256", 64, 256, (8, 28, 28), 1, 0),
    ("core 8->8", 8, 8, (8, 28, 28), 3, 1),
    ("core 32->32", 32, 32, (8, 28, 28), 3, 1),
    ("core 64->64", 64, 64, (4, 14, 14), 3, 1),
    ("core 128->128", 128, 128, (2, 7, 7), 3, 1),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--only", default=None, help="comma-separated layer names")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.batch < 1:
        p.error("--repeats and --batch must be >= 1")
    return args


def engine_paths(x, w, pad, threads):
    """{path: callable} for each engine path that applies to this layer."""
    stride = (1, 1, 1)
    out = conv3d(x, w, padding=pad)
    paths = {"auto": lambda: conv3d(x, w, padding=pad, check_finite=False)}
    if w.shape[2] > 1 and panels_fit(w.shape[1], w.shape[0], w.shape[2:]):
        paths["panels"] = lambda: panel_forward_padded(_pad(x, (pad,) * 3), w, np.zeros(w.shape[0], x.dtype),
                                                       stride, out, threads)
    if w.shape[2] > 1 and tiles_fit(stride, out.shape[4], x.dtype):
        paths["rows"] = lambda: forward_tiles_padded(_pad(x, (pad,) * 3), w, None, stride, out)
    return paths


def main(args):
    if args.threads is not None:
        numba.set_num_threads(args.threads)
    threads = numba.get_num_threads()
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    layers = [lay for lay in LAYERS if args.only is None or lay[0] in args.only.split(",")]
    rows = []
    for name, S, T, clip, k, pad in layers:
        x = rng.standard_normal((args.batch, S) + clip, dtype=np.float32)
        w = (rng.standard_normal((T, S, k, k, k)) / np.sqrt(S * k ** 3)).astype(np.float32)
        fns = {("engine", p): fn for p, fn in engine_paths(x, w, pad, threads).items()}
        if torch is not None:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            with torch.no_grad():
                ref = torch.nn.functional.conv3d(tx, tw, padding=pad).numpy()
            err = np.abs(conv3d(x, w, padding=pad) - ref).max() / np.abs(ref).max()
            assert err < 1e-4, (name, err)

            def torch_fn(tx=tx, tw=tw, pad=pad):
                with torch.no_grad():
                    torch.nn.functional.conv3d(tx, tw, padding=pad)
            fns[("torch", "")] = torch_fn
        t = round_robin_medians(fns, args.repeats)
        macs = args.batch * S * T * k ** 3 * np.prod(clip)  # output dims equal input dims (pad = k // 2)
        rows.append((name, {key: 2 * macs / v / 1e9 for key, v in t.items()}, t))
    peak = max(max(g.values()) for _, g, _ in rows)
    print(f"bench/c3d_layers.py: batch {args.batch}, float32, medians of {args.repeats} round-robin rounds, "
          f"{threads} thread(s); GFLOP/s")
    paths = ["auto", "panels", "rows"]
    print(f"{'layer':<16}" + "".join(f"{p:>9}" for p in paths) + f"{'torch':>9}{'auto/torch':>12}{'of best':>9}")
    for name, g, t in rows:
        cells = "".join(f"{g[('engine', p)]:9.1f}" if ("engine", p) in g else f"{'-':>9}" for p in paths)
        tg = g.get(("torch", ""))
        ratio = f"{tg and g[('engine', 'auto')] / tg:12.2f}" if tg else f"{'-':>12}"
        best = max(v for (e, _), v in g.items() if e == "engine")
        print(f"{name:<16}{cells}{tg or float('nan'):9.1f}{ratio}{best / peak:9.2f}")
    print(f"practical peak in this run: {peak:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
