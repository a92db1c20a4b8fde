"""Write a tuckerref network as an ONNX model (default domain, opset 17 or 18) that other runtimes run.

Each leaf layer, in order (a compressed layer's nested Sequential contributes its Conv3d/Linear
children, so a Tucker-2 block is three Conv nodes), becomes one node, following the ONNX operator
specification:

* Conv3d -> Conv (pads begin = end = padding, dilations 1, group 1); initializers ``<path>.weight``,
  ``<path>.bias``, the network's state_dict names;
* BatchNorm3d -> BatchNormalization (eval form: running statistics, epsilon = eps, ONNX momentum =
  1 - PyTorch momentum), or folded into the Conv3d before it on request;
* ReLU -> Relu; MaxPool3d -> MaxPool; AvgPool3d -> AveragePool (count_include_pad as the layer);
* AdaptiveAvgPool3d -> GlobalAveragePool for output (1, 1, 1), else an AveragePool when every input
  size is a multiple of the output size (then the adaptive windows are kernel = stride = in / out);
* Flatten -> Flatten(axis 1); Linear -> Gemm(transB 1): Y = X W^T + b;
* Dropout, Dropout3d and Identity are the identity in evaluation and are left out (``keep_dropout``
  writes a Dropout node with its ratio instead, so the layer reads back).

Initializers are float32; the input is (N, C, D, H, W) with a fixed batch size or a symbolic one.
The model passes ``onnx.checker.check_model`` (with shape inference) before it is written, atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .requirement import require_onnx

OPSETS = (17, 18)
INPUT_NAME, OUTPUT_NAME = "input", "output"


def _leaves(module, prefix=""):
    """(path, leaf module) in execution order; nested Sequentials (compressed layers) are walked into."""
    from ..nn import Sequential
    if isinstance(module, Sequential):
        for name, child in module.named_children():
            yield from _leaves(child, f"{prefix}.{name}" if prefix else name)
    elif module._modules:
        raise ValueError(f"export to ONNX handles Sequential containers and leaf layers; {prefix or 'the network'} "
                         f"is a {type(module).__name__} with children")
    else:
        yield prefix or type(module).__name__.lower(), module


class _Writer:
    def __init__(self, onnx, opset, keep_dropout):
        self.onnx, self.opset, self.keep_dropout = onnx, opset, keep_dropout
        self.nodes, self.initializers = [], []
        self.current = INPUT_NAME

    def tensor(self, name, array):
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array, dtype=np.float32, order="C"),
                                                                   name))
        return name

    def node(self, op, path, inputs, **attrs):
        out = f"{path}_output"
        self.nodes.append(self.onnx.helper.make_node(op, [self.current] + list(inputs), [out], name=path, **attrs))
        self.current = out

    def params(self, path, layer, *names):
        """Initializer names of the layer's parameters (skipping absent ones, such as a missing bias)."""
        return [self.tensor(f"{path}.{n}", getattr(layer, n).data) for n in names if getattr(layer, n) is not None]

    def add(self, path, layer, shape):
        """Append the node(s) of ``layer`` (per-sample input ``shape``)."""
        kind = type(layer).__name__
        if kind == "Conv3d":
            self.node("Conv", path, self.params(path, layer, "weight", "bias"), kernel_shape=list(layer.kernel_size),
                      strides=list(layer.stride), pads=list(layer.padding) * 2, dilations=[1, 1, 1], group=1)
        elif kind == "Linear":
            self.node("Gemm", path, self.params(path, layer, "weight", "bias"), transB=1)
        elif kind == "ReLU":
            self.node("Relu", path, [])
        elif kind == "MaxPool3d":
            self.node("MaxPool", path, [], **_pool_attrs(layer.kernel_size, layer.stride, layer.padding))
        elif kind == "AvgPool3d":
            self._avg_pool(path, layer)
        elif kind == "AdaptiveAvgPool3d":
            self._adaptive_pool(path, layer, shape)
        elif kind == "BatchNorm3d":
            self._batchnorm(path, layer)
        elif kind == "Flatten":
            self.node("Flatten", path, [], axis=1)
        elif kind in ("Dropout", "Dropout3d"):
            if self.keep_dropout and layer.p > 0:
                self.node("Dropout", path, [self.tensor(f"{path}.ratio", np.array(layer.p))])
        elif kind != "Identity":
            raise ValueError(f"layer {path!r} ({kind}) has no ONNX export")

    def _avg_pool(self, path, layer):
        if getattr(layer, "divisor_override", None) is not None:
            raise ValueError(f"layer {path!r}: AvgPool3d with divisor_override has no ONNX AveragePool equivalent")
        if getattr(layer, "ceil_mode", False):
            raise ValueError(f"layer {path!r}: AvgPool3d with ceil_mode=True is not exported (PyTorch and ONNX "
                             "runtimes differ on windows that start in the padding)")
        self.node("AveragePool", path, [], count_include_pad=int(bool(layer.count_include_pad)),
                  **_pool_attrs(layer.kernel_size, layer.stride, layer.padding))

    def _adaptive_pool(self, path, layer, shape):
        out = _adaptive_output(layer, shape)
        dims = tuple(shape[1:])
        if out == (1, 1, 1):
            self.node("GlobalAveragePool", path, [])
        elif all(d % o == 0 for d, o in zip(dims, out)):
            kernel = tuple(d // o for d, o in zip(dims, out))
            self.node("AveragePool", path, [], count_include_pad=0, **_pool_attrs(kernel, kernel, (0, 0, 0)))
        else:
            raise ValueError(f"layer {path!r}: AdaptiveAvgPool3d to {out} on a {dims} input has overlapping windows "
                             "of different sizes, which no ONNX pooling node expresses (only output (1, 1, 1) or "
                             "sizes dividing the input)")

    def _batchnorm(self, path, layer):
        if not getattr(layer, "track_running_stats", True) or getattr(layer, "running_mean", None) is None:
            raise ValueError(f"layer {path!r}: a BatchNorm3d without running statistics normalises by batch "
                             "statistics even in evaluation; ONNX's inference BatchNormalization needs running ones")
        channels = layer.num_features
        scale = layer.weight.data if getattr(layer, "weight", None) is not None else np.ones(channels)
        bias = layer.bias.data if getattr(layer, "bias", None) is not None else np.zeros(channels)
        inputs = [self.tensor(f"{path}.weight", scale), self.tensor(f"{path}.bias", bias),
                  self.tensor(f"{path}.running_mean", _buffer(layer, "running_mean")),
                  self.tensor(f"{path}.running_var", _buffer(layer, "running_var"))]
        momentum = 0.1 if layer.momentum is None else layer.momentum
        self.node("BatchNormalization", path, inputs, epsilon=float(layer.eps), momentum=float(1.0 - momentum))


def _buffer(layer, name):
    return np.asarray(getattr(layer, name))


def _pool_attrs(kernel, stride, padding):
    return {"kernel_shape": list(kernel), "strides": list(stride), "pads": list(padding) * 2, "ceil_mode": 0}


def _adaptive_output(layer, shape):
    size = layer.output_size
    size = (size,) * 3 if np.isscalar(size) else tuple(size)
    return tuple(int(shape[1 + i]) if s is None else int(s) for i, s in enumerate(size))


def to_onnx(net, input_shape=None, batch_size=1, dynamic_batch=False, fold_batchnorm=False, opset=17,
            keep_dropout=False, check=True):
    """The ONNX ``ModelProto`` of ``net`` in evaluation form for per-sample ``input_shape`` (C, D, H, W)
    (default ``net.input_shape``) and a batch of ``batch_size`` (or a symbolic ``N`` with ``dynamic_batch``).

    ``fold_batchnorm`` folds every BatchNorm3d that follows a Conv3d into it first
    (:func:`tuckerref.fold.fold_batchnorm`); the network itself is not changed. ``check`` runs
    ``onnx.checker.check_model`` with shape inference on the result."""
    onnx = require_onnx()
    if opset not in OPSETS:
        raise ValueError(f"opset must be one of {OPSETS}, got {opset!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    input_shape = getattr(net, "input_shape", None) if input_shape is None else input_shape
    if input_shape is None:
        raise ValueError("the network records no input shape; pass input_shape (C, D, H, W)")
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 4 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (C, D, H, W) with positive sizes, got {input_shape}")
    if fold_batchnorm:
        from ..fold import fold_batchnorm as fold
        net = fold(net)
    writer = _Writer(onnx, opset, keep_dropout)
    shape = input_shape
    for path, layer in _leaves(net):
        try:
            writer.add(path, layer, shape)
            shape = layer.output_shape(shape)
        except ValueError as exc:
            raise ValueError(f"layer {path!r} ({type(layer).__name__}) on per-sample input {shape}: {exc}") from None
    if writer.current == INPUT_NAME:                       # nothing but identities: the graph still needs a node
        writer.nodes.append(onnx.helper.make_node("Identity", [INPUT_NAME], ["identity_output"], name="identity"))
        writer.current = "identity_output"
    writer.nodes[-1].output[0] = OUTPUT_NAME
    batch = "N" if dynamic_batch else int(batch_size)
    graph = onnx.helper.make_graph(
        writer.nodes, "tuckerref", [onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT,
                                                                       [batch, *input_shape])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, [batch, *shape])],
        initializer=writer.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]
    from .. import __version__
    model = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="tuckerref",
                                   producer_version=__version__, ir_version=onnx.helper.find_min_ir_version_for(opsets))
    model.doc_string = "tuckerref network in evaluation form; input NCDHW float32"
    if check:
        _check(onnx, model)
    return model


def _check(onnx, model_or_bytes):
    try:
        onnx.checker.check_model(model_or_bytes, full_check=True)
    except Exception as exc:
        raise ValueError(f"the ONNX model written for this network fails onnx.checker: {exc}") from None


def export_onnx(net, path, input_shape=None, **options):
    """Write :func:`to_onnx` of ``net`` to ``path`` atomically (nothing written on error); returns the model.
    The model is serialised once, and that serialisation is what the checker sees and the file holds."""
    from ..io import atomic_path
    onnx = require_onnx()
    model = to_onnx(net, input_shape=input_shape, check=False, **options)
    try:
        data = model.SerializeToString()
    except ValueError as exc:                              # protobuf's 2 GiB limit on one message
        raise ValueError(f"the network does not fit in one .onnx file: {exc}") from None
    _check(onnx, data)
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_bytes(data)
    return model
