"""``tuckerref table2``: the paper's Table 2 for the original and the compressed network, with measured times.

For each convolution and linear layer (c1, c2, l1, l2, l_out in the paper's network; any chain network's,
e.g. a C3D's, from ``--weights``): method, S/R_in, T/R_out, weights, FLOPs (paper convention, docs/method.md
section 8, extended as :mod:`tuckerref.flops` says) and time, each with its sub-layer breakdown, then the
improvement factors: storage (weights), theoretical speed-up (FLOPs ratio) and observed speed-up
(time ratio). A BatchNorm3d after a convolution is folded into it in both networks (eval mode, so the
original's outputs do not change; the folded pairs are printed). The other layers (ReLU, pooling,
dropout, flatten, an unfolded BatchNorm3d) are summed in an "other" row;
the total time is the whole forward pass. Sub-layers are timed one by one; with the numba backend
a Tucker-2 block's own time is its fused forward pass, and the total is the inference pass with all
its fusions (:mod:`tuckerref.nn.fusion`), every figure of both networks timed round robin
(:func:`tuckerref.profile.profile_networks`), so the total speed-up is also given round by round
(median, quartiles and range of the per-round ratios), and both passes are also timed as compiled
inference programs (:mod:`tuckerref.nn.program`), whose speed-up is printed under the table and
recorded as ``total.program``. Prints the table and writes ``table2.md`` and
``table2.json`` (atomically) to ``--out``. Idle OpenMP worker threads sleep during the run
(:func:`tuckerref.profile.sleep_idle_workers`, recorded as ``omp_wait_policy``), so that CPU-time
readings do not carry a spinning worker's tick-sampled time; the JSON also records the target's
vector registers and widest vector (``register_file``).

Timing backends: ``--backend`` offers the keys of :data:`tuckerref.profile.PROFILERS`; a backend is
a function ``(net, x, *, repeats, warmup, threads) -> NetworkProfile`` whose layer names are the
network's dotted child names. :func:`build_table` takes such a function, so other backends (exported
C code, PyTorch in ``bench/vs_torch.py``) produce the same table from the same networks and input.

Counting instead of timing: ``--backend c --counter instructions|cache`` runs both networks' exported C
under Valgrind's Callgrind (:mod:`tuckerref.export.counters`) and reports, per layer and sub-layer,
instructions (and with ``cache`` data reads, writes and last-level misses of simulated caches), the
fit of each count against FLOPs (R^2) and each Tucker-2 block's last-level misses per FLOP, factors
against core; it writes ``table2_counts.md``, ``.json`` and, with matplotlib, ``.png``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..flops import count_network
from ..models import PAPER_INPUT_SHAPE, thetis_net
from ..nn import Conv3d, Linear, Sequential, feature_volume
from ..profile import (PROFILERS, check_repeats, check_threads, get_profiler, profile_each, profile_network,
                       register_file, sleep_idle_workers)
from ..report import compact, markdown_table, milliseconds, ratio, write_json, write_text


def _io(m):
    """(inputs, outputs) of a Conv3d (channels) or Linear (features)."""
    if isinstance(m, Conv3d):
        return m.in_channels, m.out_channels
    if isinstance(m, Linear):
        return m.in_features, m.out_features
    raise ValueError(f"cannot describe layer {m!r}: expected Conv3d, Linear or a Sequential of them")


def describe(original, compressed, volume) -> tuple:
    """(method, S, T, R_in, R_out) of a layer and its replacement; R_in is "-" for Tucker-1."""
    S, T = _io(original)
    if isinstance(original, Linear) and len(volume) == 4:
        S = volume[0]  # l1 reads the flattened C x F x H x W volume: its S is the channel count, as in the paper
    if not isinstance(compressed, Sequential):
        return "none", S, T, S, T
    subs = list(compressed.children())
    if len(subs) == 3:
        return "Tucker-2", S, T, _io(subs[0])[1], _io(subs[1])[1]
    if len(subs) == 2:
        return "Tucker-1", S, T, "-", _io(subs[0])[1]
    raise ValueError(f"unrecognised replacement of {original!r}: a Sequential of {len(subs)} layers")


def parameter_layers(net: Sequential) -> list:
    """Names of the convolutions and linear layers of ``net``: the table's rows."""
    for name, m in net.named_children():
        if isinstance(m, Sequential):
            raise ValueError(f"layer {name!r} is already decomposed; table2 needs the original (uncompressed) network")
    return [name for name, m in net.named_children() if isinstance(m, (Conv3d, Linear))]


def _unflattened_input(net, count, name) -> tuple:
    """Per-sample input shape of layer ``name``, the volume before the Flatten that feeds it (if one does)."""
    from ..compress import flatten_before
    try:
        flatten_before(net, name)
    except ValueError:
        return count[name].input_shape
    return feature_volume(net, count.input_shape, name)


def _timing(t, clock):
    s = t.clock(clock)
    return {"median_s": s.median, "mean_s": s.mean, "std_s": s.std}


def build_table(original: Sequential, compressed: Sequential, x: np.ndarray, profiler, *, repeats=5, warmup=1,
                threads=None, clock="wall") -> dict:
    """Counts and times of both networks on the batch ``x``, arranged as the paper's Table 2 (JSON-able dict)."""
    input_shape = tuple(x.shape[1:])
    names = parameter_layers(original)
    missing = [n for n in names if n not in compressed.names()]
    if missing:
        raise ValueError(f"the compressed network lacks layers {missing} of the original")
    counts = {"original": count_network(original, input_shape), "compressed": count_network(compressed, input_shape)}
    profiles = dict(zip(("original", "compressed"), profile_each(profiler, [original, compressed], x, repeats=repeats,
                                                                 warmup=warmup, threads=threads)))
    rows = []
    for name in names:
        method, S, T, r_in, r_out = describe(original[name], compressed[name],
                                             _unflattened_input(original, counts["original"], name))
        row = {"layer": name, "method": method, "S": S, "T": T, "R_in": r_in, "R_out": r_out}
        for which in ("original", "compressed"):
            c, t = counts[which][name], profiles[which][name]
            row[which] = {"params": c.params, "flops": c.flops, "macs": c.macs, "time": _timing(t, clock),
                          "sub": [{"name": sc.name, "params": sc.params, "flops": sc.flops,
                                   "time": _timing(st, clock)} for sc, st in zip(c.children, t.children)]}
        rows.append(row)
    other, total = {}, {}
    for which in ("original", "compressed"):
        others = [t for t in profiles[which].layers if t.name not in names]
        other[which] = {"layers": [t.name for t in others], "time_s": sum(t.clock(clock).median for t in others),
                        "params": sum(counts[which][t.name].params for t in others),
                        "flops": sum(counts[which][t.name].flops for t in others)}
        total[which] = {"params": counts[which].params, "flops": counts[which].flops, "macs": counts[which].macs,
                        "time": _timing(profiles[which].total, clock)}
    for r in rows + [total]:
        o, c = r["original"], r["compressed"]
        r["improvement"] = {"weights": o["params"] / c["params"], "theoretical_speedup": o["flops"] / c["flops"],
                            "observed_speedup": o["time"]["median_s"] / c["time"]["median_s"]}
    if profiler is profile_network:  # timed round robin: round k of both networks belongs together
        total["improvement"]["observed_speedup_rounds"] = round_ratios(
            profiles["original"].total.clock(clock).samples, profiles["compressed"].total.clock(clock).samples)
        o, c = (profiles[which].program.clock(clock) for which in ("original", "compressed"))
        total["program"] = {"original": _timing(profiles["original"].program, clock),
                            "compressed": _timing(profiles["compressed"].program, clock),
                            "observed_speedup": o.median / c.median,
                            "observed_speedup_rounds": round_ratios(o.samples, c.samples)}
    return {"input_shape": list(input_shape), "batch": int(x.shape[0]), "clock": clock,
            "backend": profiles["original"].backend, "repeats": profiles["original"].repeats,
            "warmup": profiles["original"].warmup, "threads": profiles["original"].threads,
            "rows": rows, "other": other, "total": total,
            "counts": {k: v.as_dict() for k, v in counts.items()},
            "profiles": {k: v.as_dict() for k, v in profiles.items()}}


def round_ratios(before: list, after: list) -> dict:
    """Spread of the speed-up over the rounds of a round-robin measurement: before[k] / after[k] for
    each round k, as its median, quartiles and range. On a shared machine the ratio of the two
    medians (Table 2's figure) moves from run to run; this says by how much within one run."""
    ratios = np.asarray(before, dtype=float) / np.asarray(after, dtype=float)
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "min": float(ratios.min()),
            "max": float(ratios.max()), "rounds": int(ratios.size)}


def _breakdown(parts: list) -> str:
    return f" ({' + '.join(parts)})" if len(parts) > 1 else ""


def render(table: dict) -> str:
    """Markdown rendering in the paper's layout (original row, compressed row, improvement row per layer)."""
    head = ["layer", "method", "S/R_in", "T/R_out", "weights", "FLOPs", f"{table['clock']} time ms (median ± std)"]
    body = []
    for r in table["rows"]:
        o, c, imp = r["original"], r["compressed"], r["improvement"]
        t = lambda d: f"{milliseconds(d['time']['median_s'])} ± {milliseconds(d['time']['std_s'])}"  # noqa: E731
        body.append([r["layer"], "original", r["S"], r["T"], f"{o['params']:,}", compact(o["flops"]), t(o)])
        body.append(["", r["method"], r["R_in"], r["R_out"],
                     f"{c['params']:,}" + _breakdown([f"{s['params']:,}" for s in c["sub"]]),
                     compact(c["flops"]) + _breakdown([compact(s["flops"]) for s in c["sub"]]),
                     t(c) + _breakdown([milliseconds(s["time"]["median_s"]) for s in c["sub"]])])
        body.append(["", "improvement", "", "", f"x{imp['weights']:.2f}", f"x{imp['theoretical_speedup']:.2f}",
                     f"x{imp['observed_speedup']:.2f}"])
    oth = table["other"]
    body.append(["other", ", ".join(oth["original"]["layers"]) if len(oth["original"]["layers"]) < 6
                 else f"{len(oth['original']['layers'])} {'other' if oth['original'].get('params') else 'parameter-free'} layers",
                 "", "",
                 f"{oth['original'].get('params', 0):,}", compact(oth["original"].get("flops", 0)),
                 f"{milliseconds(oth['original']['time_s'])} -> {milliseconds(oth['compressed']['time_s'])} (sum)"])
    tot = table["total"]
    for which in ("original", "compressed"):
        d = tot[which]
        body.append(["total" if which == "original" else "", which, "", "", f"{d['params']:,}", compact(d["flops"]),
                     f"{milliseconds(d['time']['median_s'])} ± {milliseconds(d['time']['std_s'])}"])
    imp = tot["improvement"]
    body.append(["", "improvement", "", "", f"x{imp['weights']:.2f}", f"x{imp['theoretical_speedup']:.2f}",
                 f"x{imp['observed_speedup']:.2f}"])
    speed_head = ["layer", "theoretical speed-up (FLOPs)", "observed speed-up (time)"]
    speed = [[r["layer"], ratio(r["original"]["flops"], r["compressed"]["flops"]),
              ratio(r["original"]["time"]["median_s"], r["compressed"]["time"]["median_s"])]
             for r in table["rows"] + [dict(tot, layer="total")]]
    title = (f"Table 2, input {tuple(table['input_shape'])} batch {table['batch']}, backend {table['backend']}, "
             f"{table['threads']} thread(s), {table['clock']} time over {table['repeats']} repeats "
             f"(warm-up {table['warmup']}); sub-layer breakdowns in brackets")
    if table["backend"] == "numba":
        title += ("\n\nEach sub-layer is timed alone. A Tucker-2 block runs fused (its 1x1x1 output mix in the "
                  "core's register tiles), so it can take less than the sum of its sub-layers; the whole pass "
                  "(total) also fuses each convolution with the max pooling and ReLU after it, so it can take "
                  "less than the sum of the rows. Both networks are timed round robin, one call of every "
                  "figure per round.")
    if table.get("folded_batchnorm"):
        title += ("\n\nBatchNorm3d folded into the convolution before it in both networks (eval statistics): "
                  + ", ".join(f"{bn} -> {conv}" for conv, bn in table["folded_batchnorm"]) + ".")
    parts = [title, markdown_table(head, body), markdown_table(speed_head, speed)]
    spread = imp.get("observed_speedup_rounds")
    if spread:
        parts.append(f"Total speed-up round by round (original / compressed, {spread['rounds']} rounds): "
                     f"{_spread(spread)}.")
    program = tot.get("program")
    if program:
        parts.append(f"The same passes as compiled inference programs (tuckerref.nn.program: checks, weight packing "
                     f"and allocations done once): original {milliseconds(program['original']['median_s'])} ms, "
                     f"compressed {milliseconds(program['compressed']['median_s'])} ms, observed speed-up "
                     f"**x{program['observed_speedup']:.2f}**; round by round "
                     f"{_spread(program['observed_speedup_rounds'])}.")
    return "\n\n".join(parts)


def _spread(rounds: dict) -> str:
    return (f"median x{rounds['median']:.2f}, quartiles x{rounds['q1']:.2f}-x{rounds['q3']:.2f}, "
            f"range x{rounds['min']:.2f}-x{rounds['max']:.2f}")


def register(sub):
    p = sub.add_parser("table2", help="the paper's Table 2: weights, FLOPs and measured time, original vs compressed")
    p.add_argument("--weights", default=None, help="original network saved by save_model (default: random, --seed)")
    p.add_argument("--plan", choices=("auto", "table2", "algorithm1"), default="auto",
                   help="auto (default): table2 for the paper's network, algorithm1 for any other")
    p.add_argument("--ranks", default=None,
                   help="'paper' (default for plan table2), 'vbmf' (default otherwise), 'full', 'fraction:F' "
                        "or JSON like '{\"conv2a\": [16, 32]}'")
    p.add_argument("--method", choices=("auto", "hooi", "hosvd"), default="hosvd",
                   help="decomposition algorithm (no column of the table depends on it; hosvd is quicker)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="Numba threads (1 = embedded setting); default all")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall (perf_counter) or process CPU time (process_time, as the paper) for the table")
    p.add_argument("--backend", choices=sorted(PROFILERS), default="numba", help="what is timed")
    p.add_argument("--counter", choices=("instructions", "cache"), default=None,
                   help="with --backend c: count instead of timing, under Valgrind's Callgrind (instructions; cache: "
                        "also data reads, writes and last-level misses of simulated caches), per layer and "
                        "sub-layer, fitted against FLOPs; writes table2_counts.md/.json/.png")
    p.add_argument("--input-shape", type=int, nargs=4, default=None, metavar=("C", "F", "H", "W"),
                   help=f"clip shape (default: the weights file's, else {PAPER_INPUT_SHAPE})")
    p.add_argument("--batch", type=int, default=1,
                   help="clips per forward pass (default 1, as the paper's batch-1 latency; the numba backend only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/table2", help="output folder (default runs/table2)")
    p.set_defaults(func=run)


def load_networks(args, record=None):
    """(original, compressed, input shape) from the parsed arguments; ``record`` (a dict), if given,
    receives the plan and ranks used and the BatchNorm3d layers folded, [[conv, batchnorm], ...]."""
    if args.weights:
        from ..io import load_model
        net, meta = load_model(args.weights)
        shape = tuple(args.input_shape or meta.get("input_shape") or PAPER_INPUT_SHAPE)
    else:
        shape = tuple(args.input_shape or PAPER_INPUT_SHAPE)
        net = thetis_net(shape, seed=args.seed)
    net.input_shape = shape
    parameter_layers(net)
    from ..compress import compress_network, fold_batchnorms, parse_ranks, resolve_plan
    plan = resolve_plan(net, args.plan)
    ranks = parse_ranks(args.ranks) if args.ranks else ("paper" if plan == "table2" else "vbmf")
    net, folded = fold_batchnorms(net.eval())  # the original as it runs in eval mode, BatchNorm folded
    net.input_shape = shape
    compressed = compress_network(net, plan=plan, ranks=ranks, input_shape=shape, method=getattr(args, "method", "hosvd"))
    compressed.input_shape = shape
    if record is not None:
        record.update(plan=plan, ranks=args.ranks or ranks, folded_batchnorm=[list(pair) for pair in folded])
    return net.eval(), compressed.eval(), shape


def write_outputs(out_dir, table: dict, text: str, stem="table2") -> list:
    out_dir = Path(out_dir)
    return [write_text(out_dir / f"{stem}.md", text), write_json(out_dir / f"{stem}.json", table)]


def run(args):
    from ..outputs import check_outputs
    check_outputs(dirs={"--out": args.out}, inputs=[args.weights])
    wait_policy = sleep_idle_workers()  # before anything starts Numba's threads
    check_repeats(args.repeats, args.warmup)
    check_threads(args.threads)
    if args.batch < 1:  # argparse has made it an int
        raise ValueError(f"--batch must be a positive integer, got {args.batch!r}")
    counter = getattr(args, "counter", None)
    if counter is not None:
        if args.backend != "c":
            raise ValueError(f"--counter {counter} counts the exported C: it needs --backend c, got --backend {args.backend}")
        if args.batch != 1:
            raise ValueError(f"--counter counts one clip; --batch must be 1, got {args.batch}")
        from ..export.counters import check_counter
        check_counter(counter)  # valgrind present, before the networks are built
    record = {}
    original, compressed, shape = load_networks(args, record)
    if counter is not None:
        return run_counts(args, original, compressed, shape, record)
    x = np.random.default_rng(args.seed).random((args.batch,) + shape, dtype=np.float32)
    table = build_table(original, compressed, x, get_profiler(args.backend), repeats=args.repeats,
                        warmup=args.warmup, threads=args.threads, clock=args.clock)
    table.update(record, method=args.method, weights=args.weights, omp_wait_policy=wait_policy,
                 register_file=register_file())
    text = render(table)
    print(text)
    for path in write_outputs(args.out, table, text):
        print(f"wrote {path}")
    return 0


def run_counts(args, original, compressed, shape, record) -> int:
    """``table2 --backend c --counter ...``: Valgrind's counts of both networks' exported C instead of times."""
    from ..export.counters import count_networks, plot_counts, render_counts
    x = np.random.default_rng(args.seed).random(shape, dtype=np.float32)
    table = count_networks({"original": original, "compressed": compressed}, x, args.counter)
    table.update(record, method=args.method, weights=args.weights)
    text = render_counts(table)
    print(text)
    out = Path(args.out)
    paths = [write_text(out / "table2_counts.md", text), write_json(out / "table2_counts.json", table)]
    series = [(name, [r["flops"] for r in layers.values()],
               {f: [r[f] for r in layers.values()] for f in table["fits"]}) for name, layers in table["networks"].items()]
    png = plot_counts(out / "table2_counts.png", series,
                      f"exported C, one clip {' x '.join(map(str, shape))}: Callgrind counts against FLOPs per layer")
    for path in paths + ([png] if png else []):
        print(f"wrote {path}")
    return 0
