"""``tuckerref export-c``: write a standalone C99 implementation of a saved network."""
from __future__ import annotations

import shlex
from pathlib import Path

from ..outputs import check_outputs
from .defaults import WEIGHTS_FORMATS


def register(sub):
    p = sub.add_parser("export-c", help="write net.h, net.c, weights, main.c and a Makefile for a saved network")
    p.add_argument("weights", metavar="WEIGHTS.h5", help="network saved by save_model (e.g. by train or compress)")
    p.add_argument("outdir", metavar="OUTDIR", help="directory to write the C sources into")
    p.add_argument("--input-shape", type=int, nargs=4, default=None, metavar=("C", "F", "H", "W"),
                   help="clip shape to generate for (default: the shape recorded in WEIGHTS.h5)")
    p.add_argument("--weights-format", choices=WEIGHTS_FORMATS, default="array",
                   help="array: parameters compiled in (weights.c); blob: weights.bin read at run time")
    p.add_argument("--pad-input", action="store_true",
                   help="a first convolution reads a copy of the clip in zero-padded rows: faster, at the cost of "
                        "that copy (a ring of kD padded frames) in the scratch arena")
    p.set_defaults(func=run)


def run(args):
    check_outputs(dirs={"OUTDIR": args.outdir}, inputs=[args.weights])
    from ..export import export_c
    from ..io import load_model
    net, meta = load_model(args.weights)
    input_shape = tuple(args.input_shape) if args.input_shape else getattr(net, "input_shape", None)
    if input_shape is None:
        raise ValueError(f"{args.weights} records no input shape; pass --input-shape C F H W")
    result = export_c(net, args.outdir, input_shape=input_shape, weights_format=args.weights_format,
                      pad_input=args.pad_input)
    print(f"wrote {', '.join(f.name for f in result.files)} to {result.outdir}")
    print(f"{len([s for s in result.steps if s.kind != 'identity'])} computing layers, "
          f"{result.param_floats:,} parameters, scratch {result.scratch_floats:,} floats "
          f"({result.layerwise_scratch_floats:,} layer by layer), "
          f"input {' x '.join(map(str, input_shape))}")
    if result.folded:
        print("folded BatchNorm3d into the convolution before it: "
              + ", ".join(f"{bn} into {conv}" for conv, bn in result.folded))
    from ..export.memory import format_footprint
    print(format_footprint(result.footprint))
    print(f"footprint (flash: parameter bytes; RAM: scratch floats, stack bytes) written to {result.outdir}/footprint.json")
    print(run_instructions(result.outdir, args.weights_format))
    return 0


def run_instructions(outdir, weights_format) -> str:
    """How to build and run the exported program, as commands that work from any directory:
    absolute, shell-quoted paths, and with ``-w`` naming the weights blob (the program otherwise
    opens ``weights.bin`` in the working directory)."""
    outdir = Path(outdir).resolve()
    run = [str(outdir / "net")]
    if weights_format == "blob":
        run += ["-w", str(outdir / "weights.bin")]
    return (f"build: make -C {shlex.quote(str(outdir))}    "
            f"run: {shlex.join(run)} [-t N] INPUT.f32 LOGITS.f32")
