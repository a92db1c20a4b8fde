"""``tuckerref export-onnx W.h5 OUT.onnx``: write a saved network (compressed ones included) as an ONNX model."""
from __future__ import annotations

from ..outputs import check_outputs


def register(sub):
    p = sub.add_parser("export-onnx", help="write a saved network as an ONNX model other runtimes can run")
    p.add_argument("weights", metavar="W.h5", help="network saved by save_model (e.g. by import-onnx, train, compress)")
    p.add_argument("output", metavar="OUT.onnx", help="where to write the model (written atomically)")
    p.add_argument("--input-shape", type=int, nargs=4, default=None, metavar=("C", "F", "H", "W"),
                   help="clip shape (default: the shape recorded in W.h5)")
    p.add_argument("--batch", type=int, default=1, help="fixed batch size of the model's input (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch dimension N instead of --batch")
    p.add_argument("--fold-batchnorm", action="store_true",
                   help="fold each BatchNorm3d that follows a Conv3d into it (otherwise BatchNormalization nodes)")
    p.add_argument("--opset", type=int, choices=(17, 18), default=17, help="ONNX opset (default 17)")
    p.add_argument("--keep-dropout", action="store_true",
                   help="write Dropout nodes (the identity at inference) so the layers read back; default: left out")
    p.set_defaults(func=run)


def run(args):
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    check_outputs(files={"OUT.onnx": args.output}, inputs=[args.weights])
    from ..io import load_model
    from ..onnx_io.writer import export_onnx
    net, _ = load_model(args.weights)
    model = export_onnx(net, args.output, input_shape=args.input_shape, batch_size=args.batch,
                        dynamic_batch=args.dynamic_batch, fold_batchnorm=args.fold_batchnorm, opset=args.opset,
                        keep_dropout=args.keep_dropout)
    ops = [n.op_type for n in model.graph.node]
    counts = ", ".join(f"{op} x{ops.count(op)}" for op in dict.fromkeys(ops))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    print(f"{args.weights} -> {args.output}: opset {args.opset}, input {dims}, {len(ops)} nodes ({counts}), "
          f"{sum(int(_size(t)) for t in model.graph.initializer):,} float32 parameters")
    return 0


def _size(tensor):
    n = 1
    for d in tensor.dims:
        n *= d
    return n
