"""``tuckerref import-onnx MODEL.onnx OUT.h5``: read a chain-shaped ONNX model into a weights file."""
from __future__ import annotations

from ..outputs import check_outputs


def register(sub):
    p = sub.add_parser("import-onnx", help="read an ONNX model (e.g. from torch.onnx.export) into a weights file")
    p.add_argument("model", metavar="MODEL.onnx", help="ONNX model with a static input shape whose graph is a chain "
                   "of Conv, BatchNormalization, Relu, MaxPool, AveragePool, GlobalAveragePool, Flatten/Reshape, "
                   "Gemm or MatMul + Add, Dropout and Identity nodes (external data is read from its folder)")
    p.add_argument("output", metavar="OUT.h5", help="where to write the network (HDF5, written atomically)")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="parameter type (default: the model input's type)")
    p.set_defaults(func=run)


def run(args):
    check_outputs(files={"OUT.h5": args.output}, inputs=[args.model])
    from ..onnx_io.reader import import_onnx
    net = import_onnx(args.model, args.output, dtype=args.dtype)
    print(f"{args.model} -> {args.output}: {len(list(net.children()))} layers, {net.num_parameters():,} parameters, "
          f"input {' x '.join(map(str, net.input_shape))}, output {net.output_shape(net.input_shape)}")
    for name, shape in net.shapes(net.input_shape):
        print(f"  {name:<12} {type(net[name]).__name__:<18} -> {shape}")
    return 0
