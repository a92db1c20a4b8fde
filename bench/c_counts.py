"""Counted, not timed: the exported C's cost per layer under Valgrind, against FLOPs.

Wall time on a shared machine moves by a third from run to run; instruction and simulated cache
counts do not. This exports the paper's network and its Table 2 compression (paper ranks) with
``tuckerref.export``, builds each with ``-O2 -g -fno-inline`` (every layer keeps its own function),
runs main.c's layer-by-layer pass (``-t 1 -W 0``) under ``valgrind --tool=callgrind --cache-sim=yes``
and reads, per convolution and linear (sub-)layer, the inclusive counts of its function:
instructions (Ir), data reads (Dr) and writes (Dw), and last-level misses (DLmr + DLmw, Valgrind's
simulated caches). It prints them with FLOPs, fits instructions against FLOPs (least squares
through the origin and with an intercept, R^2 of each) and compares the last-level misses per FLOP
of each Tucker-2 factor (the 1x1x1 convolutions) with the core's.

    .venv/bin/python bench/c_counts.py [--input-shape 4 8 36 48]

Repeated runs give the same counts (the clip is fixed and Valgrind's caches are simulated).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tuckerref.compress import compress_network
from tuckerref.export import compile_c, export_c
from tuckerref.models import thetis_net
from tuckerref.report import markdown_table

EVENTS = ("Ir", "Dr", "Dw", "DLmr", "DLmw")


def counts(outdir: Path, clip: np.ndarray) -> dict:
    """{layer function: {event: inclusive count}} of one layer-by-layer pass under Callgrind."""
    binary = compile_c(outdir, ("-O2", "-g", "-fno-inline", "-std=c99", "-Wall", "-Werror"))
    clip.tofile(outdir / "clip.f32")
    out = outdir / "callgrind.out"
    subprocess.run(["valgrind", "--tool=callgrind", "--cache-sim=yes", f"--callgrind-out-file={out}",
                    str(binary), "-t", "1", "-W", "0", "clip.f32", "logits.f32"],
                   cwd=outdir, check=True, capture_output=True)
    report = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", f"--show={','.join(EVENTS)}",
                             str(out)], capture_output=True, text=True, check=True).stdout
    result = {}
    for line in report.splitlines():
        # "1,145,108,539 (49.70%) 313,582,836 (49.75%) ... 0  5,184 (76.48%)  net.c:layer_c1 [/path/net]"
        match = re.match(r"^(.*?)\s\S*:(layer_\w+) \[", line)
        if not match or match.group(2) in result:
            continue
        tokens = re.sub(r"\([^)]*\)", " ", match.group(1)).split()
        if len(tokens) == len(EVENTS) and all(re.fullmatch(r"[\d,]+|\.", t) for t in tokens):
            result[match.group(2)] = {e: int(t.replace(",", "")) if t != "." else 0 for e, t in zip(EVENTS, tokens)}
    return result


def r_squared(x, y, intercept: bool) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    a = np.column_stack([x, np.ones_like(x)]) if intercept else x[:, None]
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    residual = y - a @ coef
    total = y - y.mean() if intercept else y
    return 1.0 - float(residual @ residual) / float(total @ total)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-shape", type=int, nargs=4, default=(4, 8, 36, 48), metavar=("C", "F", "H", "W"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        sys.exit("bench/c_counts.py needs valgrind and callgrind_annotate (Debian: valgrind)")
    shape = tuple(args.input_shape)
    original = thetis_net(shape, seed=args.seed).eval()
    nets = {"original": original,
            "compressed": compress_network(original, "table2", "paper", method="hosvd").eval()}
    clip = np.random.default_rng(args.seed).standard_normal(shape).astype(np.float32)
    rows, flops, instructions, misses, cores = [], [], [], {}, set()
    with tempfile.TemporaryDirectory() as tmp:
        for name, net in nets.items():
            result = export_c(net, Path(tmp) / name, input_shape=shape)
            counted = counts(result.outdir, clip)
            for step in result.steps:
                if step.kind not in ("conv3d", "pointwise", "linear"):
                    continue
                c = counted.get("layer_" + re.sub(r"\W", "_", step.path))
                if c is None:
                    continue
                ll = c["DLmr"] + c["DLmw"]
                rows.append([name, step.path, step.kind, f"{step.flops:,}", f"{c['Ir']:,}", f"{c['Dr']:,}",
                             f"{c['Dw']:,}", f"{ll:,}", f"{c['Ir'] / step.flops:.3f}", f"{ll / step.flops:.2e}"])
                flops.append(step.flops)
                instructions.append(c["Ir"])
                misses[(name, step.path)] = ll / step.flops
                if step.kind == "conv3d" and step.path.endswith(".1"):
                    cores.add(step.path[:-2])  # the core of a Tucker-2 block

    print(f"Exported C, -O2 -g -fno-inline, one clip {' x '.join(map(str, shape))}, counted by Valgrind (callgrind, "
          "simulated caches)\n")
    print(markdown_table(["network", "layer", "kind", "FLOPs", "instructions", "data reads", "data writes",
                          "LL misses", "instr/FLOP", "LL misses/FLOP"], rows))
    print(f"\ninstructions against FLOPs over {len(flops)} layers: R^2 {r_squared(flops, instructions, True):.4f} "
          f"(with intercept), {r_squared(flops, instructions, False):.4f} (through the origin), "
          f"{r_squared(np.log(flops), np.log(instructions), True):.4f} (log against log: small layers count alike)")
    for block in sorted(cores):
        core = misses.get(("compressed", f"{block}.1"))
        factors = [(f"{block}.{k}", misses.get(("compressed", f"{block}.{k}"))) for k in (0, 2)]
        if not core:
            print(f"{block}: no last-level misses in the core at this clip size (everything fits the simulated cache)")
        else:
            print(f"{block}: LL misses per FLOP, factors "
                  + ", ".join(f"{p} {m:.2e} (x{m / core:.1f} the core's)" for p, m in factors if m is not None)
                  + f", core {block}.1 {core:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
