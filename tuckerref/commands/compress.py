"""``tuckerref compress IN.h5 OUT.h5``: one-shot Tucker compression of a saved network
(the paper's Section 3.2 and Algorithm 1; docs/method.md section 9)."""
from __future__ import annotations

from ..outputs import check_outputs
from .defaults import METHODS, PLANS


def register(sub):
    p = sub.add_parser("compress", help="Tucker-2/Tucker-1 compress a saved network (VBMF or given ranks)")
    p.add_argument("input", help="network saved by save_model (HDF5)")
    p.add_argument("output", help="where to write the compressed network (HDF5, written atomically)")
    p.add_argument("--plan", choices=PLANS, default="table2",
                   help="table2: Tucker-2 on convs and l1, Tucker-1 on l2 (the paper's Table 2); "
                        "algorithm1: as the paper's Algorithm 1 is written")
    p.add_argument("--ranks", default="vbmf",
                   help="'vbmf', 'paper' (table2 only) or JSON like '{\"c1\": [2, 2], \"l2\": 1}' "
                        "(Tucker-2 ranks are [R_s, R_t]; unnamed layers get VBMF ranks; null leaves a layer)")
    p.add_argument("--method", choices=METHODS, default="hooi", help="Tucker algorithm (default hooi)")
    p.set_defaults(func=run)


def run(args):
    check_outputs(files={"OUTPUT": args.output}, inputs=[args.input])
    from ..compress import compress_network, format_report, parse_ranks
    from ..io import load_model, save_model
    ranks = parse_ranks(args.ranks)
    net, meta = load_model(args.input)
    compressed, rows = compress_network(net, plan=args.plan, ranks=ranks, method=args.method, report=True)
    out_meta = {"compressed_from": str(args.input), "plan": args.plan, "ranks_option": args.ranks,
                "method": args.method, "ranks": {r.name: list(r.ranks) for r in rows if r.ranks},
                "layers": [r.as_dict() for r in rows], "source_meta": meta}
    save_model(args.output, compressed, meta=out_meta)
    print(f"{args.input} -> {args.output}  (plan {args.plan}, ranks {args.ranks}, {args.method})")
    print(format_report(rows))
    return 0
