"""``tuckerref fold IN.h5 OUT.h5``: fold each BatchNorm3d that follows a convolution into it (eval statistics)."""
from __future__ import annotations

from ..fold import fold_batchnorm
from ..io import load_model, save_model


def register(sub):
    p = sub.add_parser("fold", help="fold BatchNorm3d layers into the convolutions before them (for inference)")
    p.add_argument("input", help="network saved by save_model (HDF5)")
    p.add_argument("output", help="where to write the folded network (HDF5, written atomically)")
    p.set_defaults(func=run)


def run(args):
    net, meta = load_model(args.input)
    folded, pairs = fold_batchnorm(net, report=True)
    save_model(args.output, folded, meta={"folded_from": str(args.input), "folded": [list(p) for p in pairs],
                                          "source_meta": meta})
    print(f"{args.input} -> {args.output}: {len(pairs)} BatchNorm3d folded")
    for conv, bn in pairs:
        print(f"  {bn} -> {conv}")
    left = [name for name, m in folded.named_modules() if type(m).__name__ == "BatchNorm3d"]
    if left:
        print(f"  left in place (not after a convolution): {', '.join(left)}")
    return 0
