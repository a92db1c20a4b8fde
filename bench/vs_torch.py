"""tuckerref against PyTorch CPU, in one run: the paper's Table 2 and the time-vs-FLOPs scaling sweep.

Both engines run the same networks (the same weight arrays: torch tensors are zero-copy views of the
engine's parameters), on the same input, with the same thread count (numba.set_num_threads and
torch.set_num_threads), timed by the same per-layer profiler (``tuckerref.profile``). Printed side by
side: per-layer theoretical speed-up (FLOPs ratio) against the observed speed-up of each engine, and
the R^2 / GFLOP/s / fixed overhead of the fit time = a + b * FLOPs for each engine.

    .venv/bin/python bench/vs_torch.py --input-shape 4 28 120 160 --repeats 3 --threads 2

Writes vs_torch.md / vs_torch.json / vs_torch_scaling.csv / vs_torch_scaling.png to --out.
Figures taken on a shared, loaded machine are indicative only.
"""
from __future__ import annotations

import argparse
import sys
from collections import OrderedDict

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("bench/vs_torch.py needs PyTorch (pip install torch, CPU build); it is not installed")

from tuckerref.commands import scaling, table2
from tuckerref.models import PAPER_INPUT_SHAPE
from tuckerref.nn import Conv3d, Dropout, Flatten, Linear, MaxPool3d, Module, ReLU, Sequential
from tuckerref.profile import check_threads, profile_network, time_call
from tuckerref.report import markdown_table, ratio, write_csv, write_json, write_text


class TorchLayer(Module):
    """A leaf layer computed by torch.nn.functional on the engine layer's own weight arrays (numpy in, numpy out)."""

    def __init__(self, layer: Module):
        super().__init__()
        object.__setattr__(self, "layer", layer)  # not registered: the parameters stay the engine layer's
        self.inplace = bool(getattr(layer, "inplace", False))
        self.fn = _torch_function(layer)

    def forward(self, x):
        with torch.no_grad():
            return self.fn(torch.from_numpy(x)).numpy()

    def output_shape(self, input_shape):
        return self.layer.output_shape(input_shape)


def _tensor(p):
    return None if p is None else torch.from_numpy(p.data)


def _torch_function(m: Module):
    if isinstance(m, Conv3d):
        w, b = _tensor(m.weight), _tensor(m.bias)
        return lambda t: F.conv3d(t, w, b, stride=m.stride, padding=m.padding)
    if isinstance(m, Linear):
        w, b = _tensor(m.weight), _tensor(m.bias)
        return lambda t: F.linear(t, w, b)
    if isinstance(m, MaxPool3d):
        return lambda t: F.max_pool3d(t, m.kernel_size, m.stride, m.padding)
    if isinstance(m, ReLU):
        return torch.relu_ if m.inplace else torch.relu
    if isinstance(m, Dropout):
        return lambda t: t  # inference mode
    if isinstance(m, Flatten):
        return lambda t: t.reshape(t.shape[0], -1)
    raise ValueError(f"no torch equivalent for {m!r}")


def to_torch(m: Module) -> Module:
    """Mirror a module tree with TorchLayer leaves (same names, same weights)."""
    if isinstance(m, Sequential):
        out = Sequential(OrderedDict((name, to_torch(child)) for name, child in m.named_children()))
        if getattr(m, "input_shape", None) is not None:
            out.input_shape = m.input_shape
        return out
    return TorchLayer(m)


def torch_profiler(net, x, *, repeats, warmup, threads):
    threads = check_threads(threads)
    torch.set_num_threads(threads)
    prof = profile_network(to_torch(net), x, repeats=repeats, warmup=warmup, threads=threads)
    prof.backend = "torch"
    return prof


def torch_timer(module, x, repeats, warmup):
    return time_call(to_torch(module).forward, x, repeats, warmup)


def check_same_function(net, x, name):
    """Both engines compute the same network: max |difference| of the logits."""
    net.eval()
    a, b = net(x), to_torch(net)(x)
    diff = float(np.max(np.abs(a - b)))
    scale = float(np.max(np.abs(b))) or 1.0
    print(f"{name}: max |tuckerref - torch| of the logits = {diff:.3g} (max |logit| {scale:.3g})")
    if diff > 1e-3 * max(scale, 1.0):
        raise SystemExit(f"{name}: tuckerref and torch disagree; timings would not be comparable")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-shape", type=int, nargs=4, default=list(PAPER_INPUT_SHAPE), metavar=("C", "F", "H", "W"))
    p.add_argument("--weights", default=None, help="original network saved by save_model (default: random, --seed)")
    p.add_argument("--plan", choices=("table2", "algorithm1"), default="table2")
    p.add_argument("--ranks", choices=("paper", "vbmf"), default="paper", help="ranks of the Table 2 compression")
    p.add_argument("--layer", default="c1", help="layer of the scaling sweep")
    p.add_argument("--grid", default="1,2,3,4,6", help="rank grid of the scaling sweep")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-table", action="store_true")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--out", default="runs/vs_torch")
    args = p.parse_args(argv)
    threads = check_threads(args.threads)
    args.input_shape = tuple(args.input_shape)
    print(f"threads {threads} (numba and torch {torch.__version__}), {args.clock} time, repeats {args.repeats}")
    md = []
    result = {"threads": threads, "clock": args.clock, "repeats": args.repeats, "input_shape": list(args.input_shape)}

    if not args.skip_table:
        original, compressed, shape = table2.load_networks(args)
        x = np.random.default_rng(args.seed).random((1,) + shape, dtype=np.float32)
        check_same_function(original, x, "original")
        check_same_function(compressed, x, "compressed")
        tables = {}
        for name, profiler in (("tuckerref", table2.get_profiler("numba")), ("torch", torch_profiler)):
            tables[name] = table2.build_table(original, compressed, x, profiler, repeats=args.repeats,
                                              warmup=args.warmup, threads=threads, clock=args.clock)
        head = ["layer", "theoretical (FLOPs)", "tuckerref orig -> comp ms", "tuckerref observed",
                "torch orig -> comp ms", "torch observed"]
        body = []
        for i, row in enumerate(tables["tuckerref"]["rows"] + [dict(tables["tuckerref"]["total"], layer="total")]):
            cells = [row["layer"], ratio(row["original"]["flops"], row["compressed"]["flops"])]
            for name in ("tuckerref", "torch"):
                t = tables[name]
                r = t["rows"][i] if i < len(t["rows"]) else t["total"]
                o, c = r["original"]["time"]["median_s"], r["compressed"]["time"]["median_s"]
                cells += [f"{o * 1e3:.2f} -> {c * 1e3:.2f}", ratio(o, c)]
            body.append(cells)
        text = markdown_table(head, body)
        print(f"\nTable 2, speed-ups side by side (median {args.clock} time, input {shape}):\n{text}")
        md += [f"## Table 2 speed-ups, input {shape}, {threads} thread(s), {args.clock} time", text]
        for name, t in tables.items():
            md += [f"### {name}", table2.render(t)]
        result["table2"] = tables

    if not args.skip_scaling:
        net, x, ranks, _, _ = scaling.prepare(argparse.Namespace(input_shape=args.input_shape, seed=args.seed,
                                                                 ranks=args.grid, out_channels=None, kernel_sizes=None))
        fits, rows_by = {}, {}
        for name, timer in (("tuckerref", scaling.numba_timer), ("torch", torch_timer)):
            torch.set_num_threads(threads)
            rows = scaling.sweep(net, args.layer, x, ranks, repeats=args.repeats, warmup=args.warmup,
                                 threads=threads, timer=timer)
            rows_by[name] = rows
            fits[name] = scaling.fit_time_vs_flops([r["flops"] for r in rows], [r[f"{args.clock}_median_s"] for r in rows])
        print(f"\nScaling sweep of {args.layer}'s Tucker-2 replacement, ranks {ranks}:")
        head = ["ranks", "FLOPs", "tuckerref ms", "torch ms"]
        body = [[f"({a['rs']},{a['rt']})", f"{a['flops']:,}", f"{a[args.clock + '_median_s'] * 1e3:.3f}",
                 f"{b[args.clock + '_median_s'] * 1e3:.3f}"] for a, b in zip(rows_by["tuckerref"], rows_by["torch"])]
        fit_head = ["engine", "R^2", "GFLOP/s (1/b)", "overhead a (ms)"]
        fit_body = [[n, f"{f['r2']:.4f}", f"{f['gflops']:.3f}", f"{f['a_s'] * 1e3:.3f}"] for n, f in fits.items()]
        print(markdown_table(head, body))
        print(markdown_table(fit_head, fit_body))
        md += [f"## Scaling sweep of {args.layer}, input {args.input_shape}", markdown_table(head, body),
               markdown_table(fit_head, fit_body)]
        result["scaling"] = {"layer": args.layer, "fits": fits, "rows": rows_by}
        out = args.out
        columns = ["engine"] + scaling.CSV_COLUMNS
        write_csv(f"{out}/vs_torch_scaling.csv", columns,
                  [[n] + [r[c] for c in scaling.CSV_COLUMNS] for n, rows in rows_by.items() for r in rows])
        scaling.plot(f"{out}/vs_torch_scaling.png", [(n, rows_by[n], fits[n], args.clock) for n in rows_by],
                     f"{args.layer} Tucker-2 sweep, input {args.input_shape}, {threads} thread(s)")

    write_text(f"{args.out}/vs_torch.md", "\n\n".join(md))
    write_json(f"{args.out}/vs_torch.json", result)
    print(f"\nwrote {args.out}/vs_torch.md, vs_torch.json" + ("" if args.skip_scaling else ", vs_torch_scaling.csv/.png"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"vs_torch: error: {exc}")
