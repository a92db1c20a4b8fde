"""``tuckerref compress IN.h5 OUT.h5``: one-shot Tucker compression of a saved chain network
(the paper's Section 3.2 and Algorithm 1; docs/method.md section 9)."""
from __future__ import annotations

import time

from ..outputs import check_outputs
from .defaults import ALGORITHMS, PLANS


def register(sub):
    p = sub.add_parser("compress", help="Tucker-2/Tucker-1 compress a saved network (VBMF or given ranks)")
    p.add_argument("input", help="network saved by save_model (HDF5): the paper's, a C3D or any chain network")
    p.add_argument("output", help="where to write the compressed network (HDF5, written atomically)")
    p.add_argument("--plan", choices=PLANS, default="auto",
                   help="auto (default): table2 for the paper's network, algorithm1 for any other; "
                        "table2: Tucker-2 on convs and l1, Tucker-1 on l2 (the paper's Table 2, its network only); "
                        "algorithm1: Tucker-1 on the first conv, Tucker-2 on the others and on the first linear "
                        "layer (as a conv), Tucker-1 on later linear layers")
    p.add_argument("--ranks", default="vbmf",
                   help="'vbmf', 'paper' (table2 only), 'full', 'fraction:F' (0 < F <= 1 of each mode) or JSON "
                        "like '{\"c1\": [2, 2], \"l2\": 1}' (Tucker-2 ranks are [R_s, R_t]; unnamed layers get "
                        "VBMF ranks; null leaves a layer)")
    p.add_argument("--method", choices=ALGORITHMS, default="auto",
                   help="Tucker algorithm: auto (default: HOOI up to 2^20 kernel elements, HOSVD above), hooi, hosvd")
    p.set_defaults(func=run)


def run(args):
    check_outputs(files={"OUTPUT": args.output}, inputs=[args.input])
    from ..compress import compress_network, format_report, parse_ranks, resolve_plan
    from ..io import load_model, save_model
    ranks = parse_ranks(args.ranks)
    net, meta = load_model(args.input)
    plan = resolve_plan(net, args.plan)
    start = time.perf_counter()
    compressed, rows = compress_network(net, plan=plan, ranks=ranks, method=args.method, report=True)
    seconds = time.perf_counter() - start
    out_meta = {"compressed_from": str(args.input), "plan": plan, "ranks_option": args.ranks,
                "method": args.method, "ranks": {r.name: list(r.ranks) for r in rows if r.ranks},
                "folded_batchnorm": [[r.name, r.folded] for r in rows if r.folded],
                "compression_seconds": seconds, "layers": [r.as_dict() for r in rows], "source_meta": meta}
    save_model(args.output, compressed, meta=out_meta)
    print(f"{args.input} -> {args.output}  (plan {plan}, ranks {args.ranks}, method {args.method}: "
          f"{', '.join(sorted({r.algorithm for r in rows if r.algorithm != '-'})) or 'none'} ran)")
    print(format_report(rows))
    print(f"compressed in {seconds:.1f} s")
    return 0
