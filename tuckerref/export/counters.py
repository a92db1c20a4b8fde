"""Counted, not timed: the exported C's cost per layer under Valgrind, set against FLOPs.

Wall time on a shared machine moves by a third from run to run; instruction counts and the counts of
a simulated cache do not. :func:`count_layers` exports a network with :func:`tuckerref.export.export_c`,
builds it with ``-O2 -g -fno-inline`` (every layer keeps its own function), runs main.c's
layer-by-layer pass (``-t 1 -W 0``) under ``valgrind --tool=callgrind`` and reads, for every
computing layer, the inclusive counts of its C function (its ``_frame``/``_rows`` helpers included):

* counter ``instructions``: instructions executed (Callgrind's Ir);
* counter ``cache``: also data reads (Dr) and writes (Dw) and last-level misses (DLmr + DLmw) of
  Callgrind's simulated caches (``--cache-sim=yes``, Cachegrind's cache model).

The same clip gives the same counts on every run. :func:`fit_counts` sets a count against FLOPs
(least squares with an intercept, through the origin and on log against log, R^2 of each), and
:func:`misses_per_flop` compares the last-level misses per FLOP of a Tucker-2 block's 1x1x1 factors
(eqs. (8), (10)) with its core's (eq. (9)): the cache inefficiency of 1x1x1 convolutions that the
paper borrows from Kim et al. (2016) to explain why its observed speed-up fell short of the FLOPs'.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

#: The counters ``--counter`` offers.
COUNTERS = ("instructions", "cache")
#: Callgrind events read for each counter, and the names the results use for them.
EVENTS = {"instructions": ("Ir",), "cache": ("Ir", "Dr", "Dw", "DLmr", "DLmw")}
#: What each result field counts.
FIELDS = {"instructions": "instructions", "data_reads": "data reads", "data_writes": "data writes",
          "ll_misses": "last-level misses"}
#: Flags of the counted build: optimised, but every layer's function kept out of line.
COUNT_CFLAGS = ("-O2", "-g", "-fno-inline", "-std=c99", "-Wall", "-Werror")
#: Layer kinds that compute with weights: the rows counted.
COUNTED_KINDS = ("conv3d", "pointwise", "linear")


def check_counter(counter: str, option: str = "--counter") -> str:
    """``counter`` if it is one of :data:`COUNTERS` and Valgrind is installed; else ValueError naming ``option``."""
    if counter not in COUNTERS:
        raise ValueError(f"{option} must be one of {', '.join(COUNTERS)}, got {counter!r}")
    missing = [tool for tool in ("valgrind", "callgrind_annotate") if shutil.which(tool) is None]
    if missing:
        raise ValueError(f"{option} {counter} counts the exported C under Valgrind's Callgrind, but "
                         f"{' and '.join(missing)} is not on PATH (Debian, Ubuntu: apt-get install valgrind)")
    return counter


def callgrind(binary, args, cwd, counter: str, ll_bytes=None) -> dict:
    """{C function: {event: inclusive count}} of one run of ``binary args`` under Callgrind; ``ll_bytes``
    sets the simulated last-level cache's size (16-way, 64-byte lines; default: Valgrind's, the host's)."""
    events = EVENTS[counter]
    out = Path(cwd) / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    if counter == "cache":
        cmd.append("--cache-sim=yes")
        if ll_bytes:
            cmd.append(f"--LL={int(ll_bytes)},16,64")
    proc = subprocess.run(cmd + [str(binary), *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} {binary} failed with status {proc.returncode}:\n{proc.stderr[-2000:]}")
    report = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", f"--show={','.join(events)}",
                             str(out)], capture_output=True, text=True, check=True).stdout
    return parse_annotate(report, events)


def parse_annotate(report: str, events) -> dict:
    """{function: {event: count}} from ``callgrind_annotate --inclusive=yes`` output, each function's
    first (largest) line; "." counts as 0."""
    result = {}
    for line in report.splitlines():
        # "1,145,108,539 (49.70%) 313,582,836 (49.75%) ... 5,184 (76.48%)  net.c:layer_c1 [/path/net]"
        match = re.match(r"^(.*?)\s\S*:(\w+) \[", line)
        if not match or match.group(2) in result:
            continue
        tokens = re.sub(r"\([^)]*\)", " ", match.group(1)).split()
        if len(tokens) == len(events) and all(re.fullmatch(r"[\d,]+|\.", t) for t in tokens):
            result[match.group(2)] = {e: int(t.replace(",", "")) if t != "." else 0 for e, t in zip(events, tokens)}
    return result


def count_layers(net, x, counter: str = "cache", *, workdir=None, cflags=COUNT_CFLAGS, ll_bytes=None) -> dict:
    """Counts of every convolution and linear (sub-)layer of ``net`` on the clip ``x`` ((C, F, H, W) or a
    batch of one): {layer path: {"flops", "instructions"[, "data_reads", "data_writes", "ll_misses"]}}."""
    from .timing import compile_c
    from .writer import export_c
    check_counter(counter)
    clip = np.ascontiguousarray(x, dtype=np.float32)
    if clip.ndim == 5:
        if clip.shape[0] != 1:
            raise ValueError(f"counting runs one clip; got a batch of {clip.shape[0]}")
        clip = clip[0]
    with tempfile.TemporaryDirectory(prefix="tuckerref-count-") as tmp:
        outdir = Path(workdir) if workdir is not None else Path(tmp)
        result = export_c(net, outdir, input_shape=clip.shape)
        binary = compile_c(outdir, cflags)
        clip.tofile(outdir / "clip.f32")
        counted = callgrind(binary.resolve(), ["-t", "1", "-W", "0", "clip.f32", "logits.f32"], outdir, counter,
                            ll_bytes)
    rows = {}
    for step in result.steps:
        if step.kind not in COUNTED_KINDS:
            continue
        c = counted.get(result.functions[step.path])
        if c is None:  # callgrind_annotate leaves out functions that never ran
            raise RuntimeError(f"Callgrind reported no counts for {step.path} ({result.functions[step.path]})")
        row = {"flops": int(step.flops), "instructions": c["Ir"]}
        if counter == "cache":
            row.update(data_reads=c["Dr"], data_writes=c["Dw"], ll_misses=c["DLmr"] + c["DLmw"])
        rows[step.path] = row
    return rows


def r_squared(x, y, intercept: bool = True) -> float:
    """R^2 of the least-squares fit y = a + b x (``intercept``) or y = b x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    a = np.column_stack([x, np.ones_like(x)]) if intercept else x[:, None]
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    residual = y - a @ coef
    total = y - y.mean() if intercept else y
    denominator = float(total @ total)
    return 1.0 - float(residual @ residual) / denominator if denominator else 1.0


def fit_counts(flops, counts) -> dict:
    """A count against FLOPs: slope and intercept of the least-squares line, R^2 with an intercept,
    through the origin, and of log count against log FLOPs (where small layers weigh as much as large)."""
    x, y = np.asarray(flops, float), np.asarray(counts, float)
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError(f"a fit against FLOPs needs at least two layers with different FLOPs, got {x.size}")
    b, a = np.polyfit(x, y, 1)
    positive = (x > 0) & (y > 0)
    log = r_squared(np.log(x[positive]), np.log(y[positive])) if positive.sum() >= 2 else float("nan")
    return {"per_flop": float(b), "intercept": float(a), "r2": r_squared(x, y), "r2_origin": r_squared(x, y, False),
            "r2_log": log, "points": int(x.size)}


def misses_per_flop(rows: dict) -> list:
    """[(block, {sub-layer: last-level misses per FLOP})] for every Tucker-2 block (sub-layers .0, .1
    and .2, .1 the core) among ``rows`` (:func:`count_layers` with counter "cache")."""
    blocks = []
    for path in rows:
        block, _, part = path.rpartition(".")
        if part == "1" and all(f"{block}.{k}" in rows for k in (0, 2)):
            blocks.append((block, {f"{block}.{k}": rows[f"{block}.{k}"]["ll_misses"] / rows[f"{block}.{k}"]["flops"]
                                   for k in (0, 1, 2)}))
    return blocks


def describe_misses(block: str, ratios: dict) -> str:
    """One line: the 1x1x1 factors' last-level misses per FLOP against the core's."""
    core = ratios[f"{block}.1"]
    factors = [(k, ratios[f"{block}.{k}"]) for k in (0, 2)]
    if core == 0:
        return (f"{block}: last-level misses per FLOP, U_s ({block}.0) {factors[0][1]:.2e}, U_t ({block}.2) "
                f"{factors[1][1]:.2e}; the core had no last-level misses at this clip size")
    return (f"{block}: last-level misses per FLOP, U_s ({block}.0) {factors[0][1]:.2e} (x{factors[0][1] / core:,.0f} "
            f"the core's), U_t ({block}.2) {factors[1][1]:.2e} (x{factors[1][1] / core:,.0f}), core ({block}.1) "
            f"{core:.2e}")


def plot_counts(path, series: list, title: str) -> Path | None:
    """PNG of each count against FLOPs on log axes, ``series`` = [(label, flops, {field: counts})]; None
    (nothing written) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path
    fields = [f for f in FIELDS if all(f in counts for _, _, counts in series)]
    fig, axes = plt.subplots(1, len(fields), figsize=(4.5 * len(fields), 4.2), squeeze=False)
    for ax, field in zip(axes[0], fields):
        for (label, flops, counts), colour in zip(series, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
            x, y = np.asarray(flops, float), np.asarray(counts[field], float)
            shown = (x > 0) & (y > 0)
            fit = fit_counts(x, y)
            ax.scatter(x[shown], y[shown], s=16, color=colour, label=f"{label}: R$^2$ {fit['r2']:.4f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("FLOPs (paper convention)")
        ax.set_ylabel(FIELDS[field])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def count_networks(nets: dict, x, counter: str = "cache", ll_bytes=None) -> dict:
    """Counts of several networks on one clip, with the fits against FLOPs over all their layers:
    {"counter", "input_shape", "networks": {name: {layer: counts}}, "fits": {field: fit},
    "misses_per_flop": [[network, block, {sub-layer: ratio}]]} (JSON-able)."""
    check_counter(counter)
    clip = np.asarray(x, dtype=np.float32)
    networks = {name: count_layers(net, clip, counter, ll_bytes=ll_bytes) for name, net in nets.items()}
    rows = [r for layers in networks.values() for r in layers.values()]
    fields = [f for f in FIELDS if all(f in r for r in rows)]
    fits = {f: fit_counts([r["flops"] for r in rows], [r[f] for r in rows]) for f in fields}
    misses = [[name, block, ratios] for name, layers in networks.items() if counter == "cache"
              for block, ratios in misses_per_flop(layers)]
    return {"counter": counter, "input_shape": list(clip.shape[-4:]), "cflags": " ".join(COUNT_CFLAGS),
            "ll_bytes": ll_bytes,
            "networks": networks, "fits": fits, "misses_per_flop": misses}


def render_counts(table: dict) -> str:
    """Markdown: every counted layer with its FLOPs and counts, then each fit's R^2 and the misses per FLOP."""
    from ..report import markdown_table
    fields = list(table["fits"])
    head = ["network", "layer", "FLOPs"] + [FIELDS[f] for f in fields] + ["instructions / FLOP"]
    if "ll_misses" in fields:
        head.append("LL misses / FLOP")
    body = []
    for name, layers in table["networks"].items():
        for path, r in layers.items():
            row = [name, path, f"{r['flops']:,}"] + [f"{r[f]:,}" for f in fields]
            row.append(f"{r['instructions'] / r['flops']:.3f}")
            if "ll_misses" in fields:
                row.append(f"{r['ll_misses'] / r['flops']:.2e}")
            body.append(row)
    shape = " x ".join(map(str, table["input_shape"]))
    parts = [f"Exported C ({table['cflags']}), one clip {shape}, counted by Valgrind's Callgrind"
             + (" with simulated caches" if table["counter"] == "cache" else "")
             + (f" (last level {table['ll_bytes'] // 1024:,} KiB)" if table.get("ll_bytes") else "")
             + "; the same clip gives the same counts",
             markdown_table(head, body)]
    parts.append("\n".join(f"{FIELDS[f]} against FLOPs over {fit['points']} layers: R^2 {fit['r2']:.4f} (with an "
                           f"intercept), {fit['r2_origin']:.4f} (through the origin), {fit['r2_log']:.4f} (log against "
                           f"log), {fit['per_flop']:.4g} per FLOP" for f, fit in table["fits"].items()))
    if table["misses_per_flop"]:
        parts.append("\n".join(f"{name} {describe_misses(block, ratios)}"
                               for name, block, ratios in table["misses_per_flop"]))
    return "\n\n".join(parts)
