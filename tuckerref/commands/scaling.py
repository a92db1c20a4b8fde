"""``tuckerref scaling``: does execution time follow FLOPs? Time a layer's Tucker-2 replacement at many ranks.

For one layer of the paper network, or of any chain network read from ``--weights`` (a C3D, ...), its
Tucker-2 replacement (eqs. 8-10: 1x1x1 S->R_s, core R_s->R_t,
1x1x1 R_t->T) is built with random weights for every rank pair of a grid (optionally also for other
output-channel counts T and core kernel sizes) and timed on the real input that layer sees in the
network. A least-squares fit ``time = a + b * FLOPs`` (paper-convention FLOPs, docs/method.md section 8)
gives R^2, the achieved throughput 1/b (GFLOP/s) and the fixed overhead a. Timing is inference
(``no_grad``, so a Tucker-2 block runs fused) in round-robin rounds over the configurations. Writes ``scaling.csv``,
``scaling.json`` and ``scaling.png`` (time against FLOPs, the fit line, points labelled by ranks).

``--backend c`` times each configuration exported to C99 (:class:`tuckerref.export.timing.CTimer`,
single-threaded) instead of the engine; ``--backend c --counter instructions|cache`` counts instead of
timing, under Valgrind's Callgrind (:mod:`tuckerref.export.counters`): per configuration and sub-layer
instructions (and data reads, writes and last-level misses), each fitted against FLOPs with its R^2,
written to ``scaling_counts.csv``, ``.json`` and ``.png``. Counts do not move with the machine's load.

Any convolution can be swept (BatchNorm3d layers are folded into the convolutions before them first, as
compression does). The first linear layer after a Flatten is swept as the convolution it is equivalent to
(``l1``: kernel = the 16 x 6 x 6 x 9 feature volume; a C3D's fc6: 512 -> 4096 with kernel 1 x 4 x 4); a
linear layer on a flat input (l2, l_out, fc7) is swept as Tucker-1 ``Linear(in -> R), Linear(R -> out)``.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from ..flops import count_layer
from ..models import PAPER_INPUT_SHAPE, thetis_net
from ..nn import Conv3d, Linear, Sequential, feature_volume, no_grad
from ..profile import (Stats, capture_inputs, check_repeats, check_threads, numba_threads, register_file,
                       sleep_idle_workers, time_call)
from ..report import write_csv, write_json


def tucker2_stand_in(S, T, kernel_size, rs, rt, *, stride=1, padding=0, bias=True, rng=None, dtype=np.float32):
    """Tucker-2 replacement of a Conv3d(S -> T) with random weights (eqs. 8-10): 1x1x1 S->R_s (no bias),
    core R_s->R_t with the original kernel size, stride and padding (no bias), 1x1x1 R_t->T (+bias)."""
    rng = np.random.default_rng(rng)
    return Sequential(Conv3d(S, rs, 1, bias=False, rng=rng, dtype=dtype),
                      Conv3d(rs, rt, kernel_size, stride=stride, padding=padding, bias=False, rng=rng, dtype=dtype),
                      Conv3d(rt, T, 1, bias=bias, rng=rng, dtype=dtype))


def tucker1_linear_stand_in(n_in, n_out, rank, *, bias=True, rng=None, dtype=np.float32):
    """Tucker-1 replacement of a Linear(in -> out) with random weights: Linear(in -> R, no bias), Linear(R -> out)."""
    rng = np.random.default_rng(rng)
    return Sequential(Linear(n_in, rank, bias=False, rng=rng, dtype=dtype),
                      Linear(rank, n_out, bias=bias, rng=rng, dtype=dtype))


def parse_int_list(text: str, what: str) -> list:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{what} must be a non-empty list of integers >= 1, got {text!r}")
    return sorted(set(values))


def parse_kernels(text: str) -> list:
    """"3x5x5,5x11x11" -> [(3, 5, 5), (5, 11, 11)]."""
    out = []
    for item in str(text).split(","):
        try:
            k = tuple(int(v) for v in item.lower().split("x"))
        except ValueError:
            k = ()
        if len(k) != 3 or min(k) < 1:
            raise ValueError(f"--kernel-sizes entries must look like 3x5x5, got {item!r}")
        out.append(k)
    return out


def layer_geometry(net: Sequential, name: str, input_shape) -> dict:
    """How layer ``name`` is swept: a convolution (l1 included, over its feature volume) or a flat linear."""
    if name not in net.names():
        raise ValueError(f"--layer {name!r} is not a layer of the network (layers: {net.names()})")
    m = net[name]
    volume = feature_volume(net, input_shape, name)
    if isinstance(m, Conv3d):
        return {"kind": "conv", "S": m.in_channels, "T": m.out_channels, "kernel": m.kernel_size,
                "stride": m.stride, "padding": m.padding, "bias": m.bias is not None, "volume": volume}
    if isinstance(m, Linear) and len(volume) == 4:
        return {"kind": "conv", "S": volume[0], "T": m.out_features, "kernel": tuple(volume[1:]),
                "stride": (1, 1, 1), "padding": (0, 0, 0), "bias": m.bias is not None, "volume": volume}
    if isinstance(m, Linear):
        return {"kind": "linear", "S": m.in_features, "T": m.out_features, "bias": m.bias is not None,
                "volume": volume}
    raise ValueError(f"--layer {name!r} is a {type(m).__name__}; only convolutions and linear layers can be swept")


def sweep_points(geom: dict, ranks: list, out_channels=None, kernels=None) -> list:
    """(label, module) for each configuration: rank pairs R_s <= S, R_t <= T (ranks R <= min(in, out) for Tucker-1)."""
    points = []
    if geom["kind"] == "linear":
        for r in ranks:
            if r <= min(geom["S"], geom["T"]):
                points.append(({"rs": r, "rt": r, "T": geom["T"], "kernel": ""},
                               tucker1_linear_stand_in(geom["S"], geom["T"], r, bias=geom["bias"], rng=r)))
        return points
    for T, kernel in itertools.product(out_channels or [geom["T"]], kernels or [geom["kernel"]]):
        for rs, rt in itertools.product(ranks, ranks):
            if rs <= geom["S"] and rt <= T:
                module = tucker2_stand_in(geom["S"], T, kernel, rs, rt, stride=geom["stride"],
                                          padding=geom["padding"], bias=geom["bias"], rng=rs * 1000 + rt)
                points.append(({"rs": rs, "rt": rt, "T": T, "kernel": "x".join(map(str, kernel))}, module))
    return points


def fit_time_vs_flops(flops, seconds) -> dict:
    """Least-squares ``seconds = a + b * flops``: a (s), b (s/FLOP), R^2 and 1/b in GFLOP/s."""
    x, y = np.asarray(flops, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError(f"the fit needs at least two configurations with different FLOPs, got {x.size}")
    b, a = np.polyfit(x, y, 1)
    ss_res = float(np.sum((y - (a + b * x)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {"a_s": float(a), "b_s_per_flop": float(b), "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0,
            "gflops": 1e-9 / b if b > 0 else float("inf")}


def numba_timer(module, x, repeats, warmup):
    """(wall, cpu) Stats of the engine's forward pass of ``module`` on ``x``."""
    return time_call(module.forward, x, repeats, warmup)


def sweep(net: Sequential, layer: str, x: np.ndarray, ranks: list, *, out_channels=None, kernels=None,
          repeats=3, warmup=1, threads=None, timer=numba_timer, progress=None) -> list:
    """Time every configuration on the input ``layer`` sees in ``net`` for the batch ``x``; list of row dicts.

    Every configuration is warmed up first (``progress(i, n, label)`` after each), then timed in
    ``repeats`` rounds of one call each, round robin, so that a drift of the machine's speed during
    the sweep shifts all points alike instead of bending the fit. ``timer(module, input, repeats,
    warmup) -> (wall Stats, cpu Stats)`` lets another backend time the same modules on the same
    input (``bench/vs_torch.py``).
    """
    repeats, warmup = check_repeats(repeats, warmup)
    threads = check_threads(threads)
    input_shape = tuple(x.shape[1:])
    geom = layer_geometry(net, layer, input_shape)
    points = sweep_points(geom, ranks, out_channels, kernels)
    if len(points) < 2:
        raise ValueError(f"ranks {ranks} give fewer than two valid configurations for {layer} "
                         f"(S={geom['S']}, T={geom['T']})")
    net.eval()
    with numba_threads(threads), no_grad():  # inference, as the paper timed it (and as table2 does)
        if layer == net.names()[0]:
            layer_input = x
        else:
            layer_input = capture_inputs(net, x)[layer]
        layer_input = np.ascontiguousarray(layer_input.reshape((x.shape[0],) + tuple(geom["volume"])))
        modules = [module for _, module in points]
        for i, module in enumerate(modules):  # compile and warm up every configuration first
            timer(module, layer_input, 1, warmup)
            if progress:
                progress(i + 1, len(points), points[i][0])
        walls, cpus = [[] for _ in modules], [[] for _ in modules]
        for _ in range(repeats):  # round robin: a change in the machine's speed touches every point alike
            for i, module in enumerate(modules):
                wall, cpu = timer(module, layer_input, 1, 0)
                walls[i] += wall.samples
                cpus[i] += cpu.samples
        rows = []
        for (label, module), wall, cpu in zip(points, map(Stats, walls), map(Stats, cpus)):
            rec = count_layer(module, geom["volume"])
            rows.append({"layer": layer, **label, "params": rec.params, "flops": rec.flops, "macs": rec.macs,
                         "wall_median_s": wall.median, "wall_mean_s": wall.mean, "wall_std_s": wall.std,
                         "cpu_median_s": cpu.median, "cpu_mean_s": cpu.mean, "cpu_std_s": cpu.std})
    return rows


def point_label(row: dict, varied: set) -> str:
    label = f"({row['rs']},{row['rt']})"
    if "T" in varied:
        label += f" T={row['T']}"
    if "kernel" in varied:
        label += f" k={row['kernel']}"
    return label


def plot(path, series: list, title: str) -> Path:
    """PNG of time (ms) against FLOPs; ``series`` = [(name, rows, fit, clock)], each with its fit line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path
    fig, ax = plt.subplots(figsize=(9, 6))
    for (name, rows, fit, clock), colour in zip(series, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        flops = np.array([r["flops"] for r in rows], dtype=np.float64)
        ms = np.array([r[f"{clock}_median_s"] for r in rows]) * 1e3
        varied = {k for k in ("T", "kernel") if len({r[k] for r in rows}) > 1}
        ax.scatter(flops / 1e6, ms, color=colour, s=18,
                   label=f"{name}: R$^2$={fit['r2']:.3f}, {fit['gflops']:.2f} GFLOP/s, a={fit['a_s'] * 1e3:.2f} ms")
        grid = np.linspace(0, flops.max(), 50)
        ax.plot(grid / 1e6, (fit["a_s"] + fit["b_s_per_flop"] * grid) * 1e3, color=colour, lw=1)
        for r, fx, ty in zip(rows, flops, ms):
            ax.annotate(point_label(r, varied), (fx / 1e6, ty), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", color=colour)
    ax.set_xlabel("FLOPs (millions, paper convention)")
    ax.set_ylabel(f"{series[0][3]} time, median (ms)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


CSV_COLUMNS = ["layer", "rs", "rt", "T", "kernel", "params", "flops", "macs", "wall_median_s", "wall_mean_s",
               "wall_std_s", "cpu_median_s", "cpu_mean_s", "cpu_std_s"]


def write_results(out_dir, rows, fit, meta, series) -> list:
    out_dir = Path(out_dir)
    paths = [write_csv(out_dir / "scaling.csv", CSV_COLUMNS, [[r[c] for c in CSV_COLUMNS] for r in rows]),
             write_json(out_dir / "scaling.json", {**meta, "fit": fit, "rows": rows}),
             plot(out_dir / "scaling.png", series,
                  f"{meta['layer']} Tucker-2 sweep, input {tuple(meta['input_shape'])}, {meta['threads']} thread(s)")]
    return paths


def register(sub):
    p = sub.add_parser("scaling", help="time a layer's Tucker-2 replacement at many ranks; fit time = a + b*FLOPs")
    p.add_argument("--weights", default=None,
                   help="network saved by save_model (any chain network, e.g. a C3D); default: the paper's, random")
    p.add_argument("--layer", default=None,
                   help="convolution or linear layer to sweep (paper network: c1, c2, l1, l2, l_out); "
                        "default: the network's first convolution")
    p.add_argument("--ranks", default="1,2,3,4,6", help="rank grid, comma-separated; all pairs (R_s, R_t) are timed")
    p.add_argument("--out-channels", default=None, help="optional comma-separated output channel counts T to add")
    p.add_argument("--kernel-sizes", default=None, help="optional core kernel sizes to add, e.g. 3x5x5,5x11x11")
    p.add_argument("--threads", type=int, default=None, help="Numba threads (1 = embedded setting); default all")
    p.add_argument("--backend", choices=("numba", "c"), default="numba",
                   help="numba (default): the engine; c: each configuration exported to C99, compiled with cc, "
                        "one thread")
    p.add_argument("--counter", choices=("instructions", "cache"), default=None,
                   help="with --backend c: count instead of timing, under Valgrind's Callgrind (instructions; cache: "
                        "also data reads, writes and last-level misses of simulated caches), per configuration and "
                        "sub-layer, each fitted against FLOPs; writes scaling_counts.csv/.json/.png")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="which time the fit uses")
    p.add_argument("--input-shape", type=int, nargs=4, default=None, metavar=("C", "F", "H", "W"),
                   help=f"clip shape (default: the weights file's, else {PAPER_INPUT_SHAPE})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/scaling", help="output folder (default runs/scaling)")
    p.set_defaults(func=run)


def load_network(args):
    """(network in eval mode with BatchNorm3d folded, input shape, layer name) from the parsed arguments."""
    weights = getattr(args, "weights", None)
    if weights:
        from ..compress import fold_batchnorms
        from ..io import load_model
        net, meta = load_model(weights)
        shape = tuple(args.input_shape or meta.get("input_shape") or PAPER_INPUT_SHAPE)
        net, _ = fold_batchnorms(net.eval())
    else:
        shape = tuple(args.input_shape or PAPER_INPUT_SHAPE)
        net = thetis_net(shape, seed=args.seed)
    layer = getattr(args, "layer", None)
    if layer is None:
        layer = next((name for name, m in net.named_children() if isinstance(m, Conv3d)), None)
        if layer is None:
            raise ValueError(f"the network has no convolution to sweep; name a layer with --layer (layers: {net.names()})")
    net.input_shape = shape
    return net.eval(), shape, layer


def prepare(args):
    """Network, input batch, rank grid and extra axes from the parsed arguments (``args.layer`` and
    ``args.input_shape`` are filled in where they were left to their defaults)."""
    net, shape, args.layer = load_network(args)
    args.input_shape = list(shape)
    layer_geometry(net, args.layer, shape)  # a bad --layer fails before anything is built or timed
    x = np.random.default_rng(args.seed).random((1,) + shape, dtype=np.float32)
    ranks = parse_int_list(args.ranks, "--ranks")
    out_channels = parse_int_list(args.out_channels, "--out-channels") if args.out_channels else None
    kernels = parse_kernels(args.kernel_sizes) if args.kernel_sizes else None
    return net, x, ranks, out_channels, kernels


def print_rows(rows, clock, name="tuckerref"):
    print(f"{name}: {'ranks':>8} {'T':>4} {'kernel':>8} {'FLOPs':>15} {clock + ' median ms':>16}")
    for r in rows:
        ranks = f"({r['rs']},{r['rt']})"
        print(f"{'':{len(name) + 1}} {ranks:>8} {r['T']:>4} {r['kernel']:>8} {r['flops']:>15,} "
              f"{r[f'{clock}_median_s'] * 1e3:>16.3f}")


def print_fit(fit, name="tuckerref"):
    print(f"{name}: time = {fit['a_s'] * 1e3:.3f} ms + FLOPs / ({fit['gflops']:.3f} GFLOP/s);  R^2 = {fit['r2']:.4f}")


def check_backend(args):
    """Refuse option combinations of --backend and --counter before any work (naming the option)."""
    backend, counter = getattr(args, "backend", "numba"), getattr(args, "counter", None)
    if backend == "c" and args.threads not in (None, 1):
        raise ValueError(f"--backend c runs single-threaded; --threads must be 1 or left out, got {args.threads}")
    if counter is not None:
        if backend != "c":
            raise ValueError(f"--counter {counter} counts the exported C: it needs --backend c, got --backend {backend}")
        from ..export.counters import check_counter
        check_counter(counter)


def count_sweep(net: Sequential, layer: str, x: np.ndarray, ranks: list, counter: str, *, out_channels=None,
                kernels=None, progress=None) -> list:
    """Valgrind's counts (:mod:`tuckerref.export.counters`) of every configuration's exported C on the input
    ``layer`` sees in ``net`` for the single clip ``x``: row dicts with the configuration's FLOPs, its
    counts (summed over its sub-layers) and ``sub``, each sub-layer's."""
    from ..export.counters import FIELDS, count_layers
    geom = layer_geometry(net, layer, tuple(x.shape[1:]))
    points = sweep_points(geom, ranks, out_channels, kernels)
    if len(points) < 2:
        raise ValueError(f"ranks {ranks} give fewer than two valid configurations for {layer} "
                         f"(S={geom['S']}, T={geom['T']})")
    with no_grad():
        layer_input = x if layer == net.names()[0] else capture_inputs(net.eval(), x)[layer]
    layer_input = np.ascontiguousarray(layer_input.reshape((1,) + tuple(geom["volume"])))
    rows = []
    for i, (label, module) in enumerate(points):
        counted = count_layers(module.eval(), layer_input, counter)
        rec = count_layer(module, geom["volume"])
        row = {"layer": layer, **label, "params": rec.params, "flops": rec.flops, "macs": rec.macs,
               "sub": [{"name": name, **c} for name, c in counted.items()]}
        for field in FIELDS:
            if all(field in c for c in counted.values()):
                row[field] = sum(c[field] for c in counted.values())
        rows.append(row)
        if progress:
            progress(i + 1, len(points), label)
    return rows


def run_counts(args, net, x, ranks, out_channels, kernels) -> int:
    """``scaling --backend c --counter ...``: counts instead of times, each fitted against FLOPs."""
    from ..export.counters import FIELDS, fit_counts, plot_counts
    rows = count_sweep(net, args.layer, x, ranks, args.counter, out_channels=out_channels, kernels=kernels,
                       progress=lambda i, n, r: print(f"  counted [{i}/{n}] ({r['rs']},{r['rt']}) T={r['T']} "
                                                      f"kernel {r['kernel']}", flush=True))
    fields = [f for f in FIELDS if f in rows[0]]
    fits = {f: fit_counts([r["flops"] for r in rows], [r[f] for r in rows]) for f in fields}
    print(f"{'ranks':>8} {'T':>4} {'kernel':>8} {'FLOPs':>15} " + " ".join(f"{FIELDS[f]:>18}" for f in fields))
    for r in rows:
        print(f"{'(%d,%d)' % (r['rs'], r['rt']):>8} {r['T']:>4} {r['kernel']:>8} {r['flops']:>15,} "
              + " ".join(f"{r[f]:>18,}" for f in fields))
    for f, fit in fits.items():
        print(f"{FIELDS[f]} = {fit['intercept']:,.0f} + {fit['per_flop']:.4g} * FLOPs;  R^2 = {fit['r2']:.4f} "
              f"(log against log {fit['r2_log']:.4f})")
    out = Path(args.out)
    columns = ["layer", "rs", "rt", "T", "kernel", "params", "flops", "macs"] + fields
    meta = {"layer": args.layer, "weights": args.weights, "input_shape": list(args.input_shape), "backend": "c",
            "counter": args.counter}
    paths = [write_csv(out / "scaling_counts.csv", columns, [[r[c] for c in columns] for r in rows]),
             write_json(out / "scaling_counts.json", {**meta, "fits": fits, "rows": rows})]
    png = plot_counts(out / "scaling_counts.png", [(args.layer, [r["flops"] for r in rows], {f: [r[f] for r in rows]
                                                                                             for f in fields})],
                      f"{args.layer} Tucker-2 sweep in exported C, input {tuple(args.input_shape)}: Callgrind counts")
    for path in paths + ([png] if png else []):
        print(f"wrote {path}")
    return 0


def run(args):
    from ..outputs import check_outputs
    check_outputs(dirs={"--out": args.out})
    check_backend(args)
    wait_policy = sleep_idle_workers()  # before anything starts Numba's threads
    net, x, ranks, out_channels, kernels = prepare(args)
    if getattr(args, "counter", None):
        return run_counts(args, net, x, ranks, out_channels, kernels)
    threads = check_threads(args.threads)
    backend = getattr(args, "backend", "numba")
    timer = numba_timer
    if backend == "c":
        from ..export.timing import CTimer
        timer, threads = CTimer(), 1
    try:
        rows = sweep(net, args.layer, x, ranks, out_channels=out_channels, kernels=kernels, repeats=args.repeats,
                     warmup=args.warmup, threads=threads, timer=timer,
                     progress=lambda i, n, r: print(f"  warmed up [{i}/{n}] ({r['rs']},{r['rt']}) T={r['T']} "
                                                    f"kernel {r['kernel']}", flush=True))
    finally:
        if backend == "c":
            timer.close()
    fit = fit_time_vs_flops([r["flops"] for r in rows], [r[f"{args.clock}_median_s"] for r in rows])
    print_rows(rows, args.clock)
    print_fit(fit)
    meta = {"layer": args.layer, "weights": args.weights, "input_shape": list(args.input_shape), "threads": threads,
            "repeats": args.repeats,
            "warmup": args.warmup, "clock": args.clock, "backend": backend, "omp_wait_policy": wait_policy,
            "register_file": register_file()}
    for path in write_results(args.out, rows, fit, meta, [(f"tuckerref ({backend})", rows, fit, args.clock)]):
        print(f"wrote {path}")
    return 0
