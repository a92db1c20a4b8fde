"""Read an ONNX model whose graph is a chain of supported operators into a tuckerref ``Sequential``.

The graph is walked in its (topological) node order. Nodes whose inputs are all initializers or
constants are evaluated here (Constant, Identity, Cast, Shape, Gather, Slice, Concat, Unsqueeze,
Squeeze, Transpose, Reshape, arithmetic), so the shape tensors and transposed weights the exporters
emit become arrays. Every other node must read exactly one computed tensor, the previous node's
output, and becomes zero, one or two tuckerref layers. The mapping follows the ONNX operator
specification (default domain, any opset from 7 on):

* Conv (3-D kernel, group 1, dilations 1, symmetric pads; ``auto_pad`` VALID or a SAME that pads
  symmetrically) -> Conv3d; W (T, S, kD, kH, kW) is the engine's layout, B the bias.
* BatchNormalization, inference form (``training_mode`` 0): y = scale (x - mean) / sqrt(var + epsilon)
  + B -> BatchNorm3d with eps = epsilon and PyTorch momentum = 1 - ONNX momentum (ONNX updates
  running = momentum * running + (1 - momentum) * batch statistic).
* Relu -> ReLU.
* MaxPool / AveragePool (3-D, dilations 1, symmetric pads; ``ceil_mode`` 1 only where it gives the
  floor size) -> MaxPool3d / AvgPool3d with ``count_include_pad`` as the node says (ONNX's default 0).
* GlobalAveragePool, or ReduceMean over axes (2, 3, 4) -> AdaptiveAvgPool3d(1) (keepdims 0 adds a Flatten).
* Flatten (axis 1) or Reshape to (N, -1) / (N, features) -> Flatten.
* Gemm (transA 0, alpha = beta = 1): Y = A B' + C with B' = B^T (transB 1) or B -> Linear(weight B'^T).
* MatMul(X, B) with a constant (F, out) B, optionally then Add of a constant -> Linear(weight B^T).
* Dropout (its ratio as ``p``; inference output = input) -> Dropout; Identity -> nothing.

Anything else raises a ValueError naming the file, the node, its op type and why; names follow
:func:`_layer_names`.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .requirement import require_onnx

#: Batch size used to evaluate shape computations when the model's batch dimension is symbolic; a value
#: no exporter writes as a literal, so a Reshape that hard-codes a batch size is told apart from (N, -1).
PROBE_BATCH = 7919
_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$|^[0-9]+$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SUPPORTED_OPS = ("Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean",
                 "Flatten", "Reshape", "Gemm", "MatMul", "Add", "Dropout", "Identity")


@dataclass
class _Layer:
    """One layer read from the graph: the module, a prefix for a generated name, the node's name and the
    parameter path its initializer names suggest (``features.0`` for ``features.0.weight``)."""

    module: object
    kind: str
    node: str
    path: str | None = None
    from_matmul: bool = False


class _Reader:
    def __init__(self, path: Path, model, dtype):
        self.onnx = require_onnx()
        self.path, self.model, self.graph = path, model, model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if self.opset is None:
            raise ValueError(f"{path}: the model imports no default-domain ONNX opset")
        self.consts, self.origin = {}, {}
        for init in self.graph.initializer:
            self.consts[init.name] = self.onnx.numpy_helper.to_array(init)
            self.origin[init.name] = init.name
        self.consumed = {name for node in self.graph.node for name in node.input if name}
        self.consumed |= {o.name for o in self.graph.output}
        self.dtype = dtype
        self._read_input()
        self.layers: list[_Layer] = []

    # -- errors --------------------------------------------------------------------------------------------
    def fail(self, node, why):
        name = node.name or f"#{list(self.graph.node).index(node)} (output {node.output[0]!r})"
        raise ValueError(f"{self.path}: node {name!r} ({node.op_type}): {why}")

    # -- graph input ---------------------------------------------------------------------------------------
    def _read_input(self):
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: the graph has {len(inputs)} data inputs {[i.name for i in inputs]}; "
                             "a chain network has exactly one")
        inp = inputs[0]
        tt = inp.type.tensor_type
        elem = {self.onnx.TensorProto.FLOAT: np.float32, self.onnx.TensorProto.DOUBLE: np.float64}.get(tt.elem_type)
        if elem is None:
            raise ValueError(f"{self.path}: input {inp.name!r} has element type "
                             f"{self.onnx.TensorProto.DataType.Name(tt.elem_type)}; float or double is supported")
        if self.dtype is None:
            self.dtype = np.dtype(elem)
        if not tt.HasField("shape"):
            raise ValueError(f"{self.path}: input {inp.name!r} has no shape; a static (N, C, D, H, W) shape is needed")
        dims = list(tt.shape.dim)
        if len(dims) < 2:
            raise ValueError(f"{self.path}: input {inp.name!r} has {len(dims)} dimensions; a batch axis and at "
                             "least one more are needed, e.g. (N, C, D, H, W)")
        per_sample = []
        for k, d in enumerate(dims[1:], start=1):
            if not d.HasField("dim_value") or d.dim_value < 1:
                what = repr(d.dim_param) if d.HasField("dim_param") else "unknown"
                raise ValueError(f"{self.path}: input {inp.name!r} has a dynamic shape: dimension {k} is {what}; "
                                 "export the model with a static input shape (only the batch dimension, 0, "
                                 "may be symbolic)")
            per_sample.append(int(d.dim_value))
        first = dims[0]
        self.batch = int(first.dim_value) if first.HasField("dim_value") and first.dim_value > 0 else None
        self.input_shape = tuple(per_sample)
        self.current, self.shape = inp.name, tuple(per_sample)
        self.shapes = {inp.name: self.shape}

    @property
    def batch_value(self):
        return PROBE_BATCH if self.batch is None else self.batch

    # -- walk ----------------------------------------------------------------------------------------------
    def run(self):
        if not len(self.graph.node):
            raise ValueError(f"{self.path}: the graph has no nodes")
        for node in self.graph.node:
            if node.domain not in ("", "ai.onnx"):
                self.fail(node, f"operator domain {node.domain!r} is not supported (only the default ONNX domain)")
            computed = [i for i in node.input if i and i not in self.consts]
            if node.op_type == "Constant":
                self.consts[node.output[0]] = self._constant(node)
            elif node.op_type == "Shape" and computed:
                self._shape_of(node, computed[0])
            elif not computed:
                self._fold(node)
            else:
                self._step(node, computed)
        outputs = [o.name for o in self.graph.output]
        if outputs != [self.current]:
            raise ValueError(f"{self.path}: the graph outputs {outputs}, but the chain ends in {self.current!r}; "
                             "a chain network has one output, the last node's")
        self._check_declared_output(self.graph.output[0])
        return self._network()

    def _step(self, node, computed):
        if len(computed) > 1:
            self.fail(node, f"it takes {len(computed)} computed inputs {computed}: it merges branches "
                            "(e.g. a residual connection), so the graph is not a chain")
        x = computed[0]
        if x != self.current:
            if x in self.shapes:
                self.fail(node, f"it reads {x!r}, an earlier tensor, not the previous node's output {self.current!r}: "
                                "the graph branches, so it is not a chain")
            self.fail(node, f"its input {x!r} is neither the previous node's output nor an initializer or constant")
        handler = _HANDLERS.get(node.op_type)
        if handler is None:
            self.fail(node, f"operator {node.op_type} is not supported (supported: {', '.join(SUPPORTED_OPS)})")
        if node.op_type != "Add" and node.input[0] != x:
            self.fail(node, f"the computed tensor {x!r} must be its first input")
        for extra in node.output[1:]:
            if extra and extra in self.consumed:
                self.fail(node, f"its second output {extra!r} is used; only the first output is supported")
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        layers = handler(self, node, attrs)
        shape = self.shape
        for layer in layers:
            try:
                shape = layer.module.output_shape(shape)
            except ValueError as exc:
                self.fail(node, f"on an input of per-sample shape {shape}: {exc}")
        self.layers.extend(layers)
        self.current, self.shape = node.output[0], shape
        self.shapes[self.current] = shape

    def _check_declared_output(self, out):
        tt = out.type.tensor_type
        if not tt.HasField("shape"):
            return
        want = (self.batch,) + self.shape
        dims = list(tt.shape.dim)
        ok = len(dims) == len(want) and all(not d.HasField("dim_value") or w is None or d.dim_value == w
                                            for d, w in zip(dims, want))
        if not ok:
            got = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
            raise ValueError(f"{self.path}: the graph declares output {out.name!r} of shape {got}, but the layers "
                             f"read give {['N' if w is None else w for w in want]}")

    # -- constants -----------------------------------------------------------------------------------------
    def const(self, node, index, what, required=True):
        """Constant input ``index`` of ``node`` as an array (None if absent and not required)."""
        name = node.input[index] if index < len(node.input) else ""
        if not name:
            if required:
                self.fail(node, f"its {what} (input {index}) is missing")
            return None
        if name not in self.consts:
            self.fail(node, f"its {what} (input {index}, {name!r}) is computed by the graph, "
                            "not an initializer or a constant")
        return self.consts[name]

    def _constant(self, node):
        attrs = {a.name: a for a in node.attribute}
        get = self.onnx.helper.get_attribute_value
        if "value" in attrs:
            return self.onnx.numpy_helper.to_array(get(attrs["value"]))
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                           ("value_ints", np.int64)):
            if key in attrs:
                return np.array(get(attrs[key]), dtype=dtype)
        self.fail(node, f"a Constant holding {sorted(attrs)} is not supported (tensor, float(s) or int(s) only)")

    def _shape_of(self, node, x):
        if x not in self.shapes:
            self.fail(node, f"it takes the shape of {x!r}, which is not a tensor of the chain")
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        full = np.array((self.batch_value,) + self.shapes[x], dtype=np.int64)
        self.consts[node.output[0]] = full[slice(attrs.get("start", 0), attrs.get("end"))]

    def _fold(self, node):
        fn = _FOLDS.get(node.op_type)
        if fn is None:
            self.fail(node, f"operator {node.op_type} on constants is not supported "
                            f"(constant folding knows {', '.join(sorted(_FOLDS))})")
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        args = [self.consts[i] if i else None for i in node.input]
        try:
            value = fn(self, args, attrs)
        except (ValueError, IndexError, TypeError) as exc:
            self.fail(node, f"cannot evaluate it on its constant inputs: {exc}")
        self.consts[node.output[0]] = np.asarray(value)
        if node.op_type in ("Identity", "Transpose", "Cast") and node.input[0] in self.origin:
            self.origin[node.output[0]] = self.origin[node.input[0]]

    def _axes(self, node, attrs, index):
        """Axes of Squeeze/Unsqueeze/ReduceMean: the attribute (older opsets) or input ``index`` (newer)."""
        if "axes" in attrs:
            return [int(a) for a in attrs["axes"]]
        value = self.const(node, index, "axes", required=False)
        return None if value is None else [int(a) for a in np.ravel(value)]

    # -- helpers for layers --------------------------------------------------------------------------------
    def param_path(self, node, index, suffix):
        """``features.0`` when input ``index`` comes from an initializer named ``features.0<suffix>``."""
        name = self.origin.get(node.input[index]) if index < len(node.input) else None
        if name and name.endswith(suffix) and len(name) > len(suffix):
            path = name[: -len(suffix)]
            if all(_SEGMENT.match(s) for s in path.split(".")):
                return path
        return None

    def require_volume(self, node):
        if len(self.shape) != 4:
            self.fail(node, f"it needs a 5-D (N, C, D, H, W) input, gets per-sample shape {self.shape}")

    def require_features(self, node):
        if len(self.shape) != 1:
            self.fail(node, f"it needs a 2-D (N, features) input, gets per-sample shape {self.shape} "
                            "(flatten first)")

    def window(self, node, attrs, kernel):
        """(kernel, strides, symmetric padding) of a Conv/MaxPool/AveragePool node over the chain's volume."""
        kernel = [int(k) for k in kernel]
        if len(kernel) != 3:
            self.fail(node, f"a {len(kernel)}-D {node.op_type}; only 3-D (N, C, D, H, W) is supported")
        strides = [int(s) for s in attrs.get("strides", [1, 1, 1])]
        dilations = [int(d) for d in attrs.get("dilations", [1, 1, 1])]
        if len(strides) != 3 or min(strides) < 1:
            self.fail(node, f"strides {strides} must be three positive integers")
        if any(d != 1 for d in dilations):
            self.fail(node, f"dilations {dilations}: only dilation 1 is supported")
        dims = self.shape[1:]
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if auto_pad in ("NOTSET", ""):
            pads = [int(p) for p in attrs.get("pads", [0] * 6)]
            if len(pads) != 6:
                self.fail(node, f"pads {pads} must hold 6 values (begin D, H, W, end D, H, W)")
            begin, end = pads[:3], pads[3:]
        elif auto_pad == "VALID":
            begin = end = [0, 0, 0]
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = [max((math.ceil(n / s) - 1) * s + k - n, 0) for n, s, k in zip(dims, strides, kernel)]
            small = [t // 2 for t in total]
            begin = small if auto_pad == "SAME_UPPER" else [t - h for t, h in zip(total, small)]
            end = [t - b for t, b in zip(total, begin)]
        else:
            self.fail(node, f"auto_pad {auto_pad!r} is not an ONNX value")
        if begin != end:
            self.fail(node, f"asymmetric padding (begin {begin}, end {end}); only symmetric padding is supported")
        if min(begin) < 0:
            self.fail(node, f"negative padding {begin}")
        if int(attrs.get("ceil_mode", 0)):
            if any((n + 2 * p - k) % s for n, p, k, s in zip(dims, begin, kernel, strides)):
                self.fail(node, "ceil_mode 1 gives a larger output than floor mode on this input; "
                                "only ceil_mode 0 is supported")
        return tuple(kernel), tuple(strides), tuple(begin)

    # -- result --------------------------------------------------------------------------------------------
    def _network(self):
        from ..nn import Sequential
        tuckerref_made = self.model.producer_name == "tuckerref"
        children = _layer_names(self.layers, tuckerref_made)
        net = Sequential(children)
        net.input_shape = self.input_shape
        first = next((m for _, m in net.named_modules() if m.parameters() and not m._modules), None)
        if first is not None:
            first.needs_input_grad = False
        return net.eval()


# -- layer handlers: (reader, node, attrs) -> [_Layer] ---------------------------------------------------------
def _conv(r, node, attrs):
    from ..nn import Conv3d
    w = r.const(node, 1, "weight")
    if w.ndim != 5:
        r.fail(node, f"a {w.ndim - 2}-D convolution (weight shape {w.shape}); only 3-D convolutions are supported")
    r.require_volume(node)
    if int(attrs.get("group", 1)) != 1:
        r.fail(node, f"group {attrs['group']}: only group 1 is supported (no grouped or depthwise convolution)")
    if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != w.shape[2:]:
        r.fail(node, f"kernel_shape {attrs['kernel_shape']} disagrees with the weight's shape {w.shape}")
    if w.shape[1] != r.shape[0]:
        r.fail(node, f"its weight {w.shape} expects {w.shape[1]} input channels, the input has {r.shape[0]}")
    kernel, stride, padding = r.window(node, attrs, w.shape[2:])
    b = r.const(node, 2, "bias", required=False)
    if b is not None and b.shape != (w.shape[0],):
        r.fail(node, f"bias shape {b.shape} does not match {w.shape[0]} output channels")
    m = Conv3d(w.shape[1], w.shape[0], kernel, stride=stride, padding=padding, bias=b is not None, rng=0,
               dtype=r.dtype)
    m.load_state_dict(_state(weight=w, bias=b))
    return [_Layer(m, "conv", node.name, _paths(r, node, {1: ".weight", 2: ".bias"}))]


def _batchnorm(r, node, attrs):
    from ..nn import BatchNorm3d
    r.require_volume(node)
    if int(attrs.get("training_mode", 0)):
        r.fail(node, "training_mode 1: only the inference form (running statistics) is supported")
    if int(attrs.get("spatial", 1)) != 1:
        r.fail(node, "spatial 0 (per-element statistics) is not supported")
    channels = r.shape[0]
    arrays = {}
    for index, key, what in ((1, "weight", "scale"), (2, "bias", "B"), (3, "running_mean", "input_mean"),
                             (4, "running_var", "input_var")):
        a = r.const(node, index, what)
        if a.shape != (channels,):
            r.fail(node, f"its {key} has shape {a.shape}, the input has {channels} channels")
        arrays[key] = a
    eps = _tidy(attrs.get("epsilon", 1e-5))
    momentum = _tidy(1.0 - attrs.get("momentum", 0.9))
    m = BatchNorm3d(channels, eps=eps, momentum=momentum, dtype=r.dtype)
    state = OrderedDict((k, np.asarray(v, dtype=r.dtype)) for k, v in arrays.items())
    own = m.state_dict()
    if "num_batches_tracked" in own:
        state["num_batches_tracked"] = np.zeros_like(own["num_batches_tracked"])
    m.load_state_dict(state)
    return [_Layer(m, "bn", node.name, _paths(r, node, {1: ".weight", 2: ".bias"}))]


def _relu(r, node, attrs):
    from .. import nn
    # In place after a layer whose backward never reads its output (as models.thetis_net does).
    safe = (nn.Conv3d, nn.Linear, nn.MaxPool3d, nn.BatchNorm3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d)
    inplace = bool(r.layers) and type(r.layers[-1].module) in safe
    return [_Layer(nn.ReLU(inplace=inplace), "relu", node.name)]


def _pool_kernel(r, node, attrs):
    if "kernel_shape" not in attrs:
        r.fail(node, "it has no kernel_shape")
    if len(attrs["kernel_shape"]) != 3:
        r.fail(node, f"a {len(attrs['kernel_shape'])}-D {node.op_type}; only 3-D pooling is supported")
    r.require_volume(node)
    kernel, stride, padding = r.window(node, attrs, attrs["kernel_shape"])
    if any(2 * p > k for p, k in zip(padding, kernel)):
        r.fail(node, f"padding {padding} exceeds half the kernel {kernel} (PyTorch's limit)")
    return kernel, stride, padding


def _maxpool(r, node, attrs):
    from ..nn import MaxPool3d
    kernel, stride, padding = _pool_kernel(r, node, attrs)
    return [_Layer(MaxPool3d(kernel, stride=stride, padding=padding), "pool", node.name)]


def _avgpool(r, node, attrs):
    from ..nn import AvgPool3d
    kernel, stride, padding = _pool_kernel(r, node, attrs)
    m = AvgPool3d(kernel, stride=stride, padding=padding, count_include_pad=bool(attrs.get("count_include_pad", 0)))
    return [_Layer(m, "avgpool", node.name)]


def _global_pool(r, node, keepdims=True):
    from ..nn import AdaptiveAvgPool3d, Flatten
    r.require_volume(node)
    layers = [_Layer(AdaptiveAvgPool3d(1), "gap", node.name)]
    if not keepdims:
        layers.append(_Layer(Flatten(), "flatten", node.name))
    return layers


def _global_average_pool(r, node, attrs):
    return _global_pool(r, node)


def _reduce_mean(r, node, attrs):
    r.require_volume(node)
    axes = r._axes(node, attrs, 1)
    if axes is None or sorted(a % 5 for a in axes) != [2, 3, 4]:
        r.fail(node, f"a mean over axes {axes}; only the mean over (D, H, W) = axes (2, 3, 4) is supported")
    return _global_pool(r, node, keepdims=bool(attrs.get("keepdims", 1)))


def _flatten(r, node, attrs):
    from ..nn import Flatten
    axis = int(attrs.get("axis", 1))
    if axis % (len(r.shape) + 1) != 1:
        r.fail(node, f"axis {axis}: only axis 1 (keep the batch dimension) is supported")
    return [_Layer(Flatten(), "flatten", node.name)]


def _reshape(r, node, attrs):
    from ..nn import Flatten
    target = [int(v) for v in np.ravel(r.const(node, 1, "shape"))]
    full = (r.batch_value,) + r.shape
    resolved = [full[i] if v == 0 and not attrs.get("allowzero", 0) and i < len(full) else v
                for i, v in enumerate(target)]
    if resolved.count(-1) == 1:
        known = math.prod(v for v in resolved if v != -1)
        resolved = [math.prod(full) // known if v == -1 and known else v for v in resolved]
    if resolved != [r.batch_value, math.prod(r.shape)]:
        shown = target if r.batch is not None else [("N" if v == PROBE_BATCH else v) for v in target]
        r.fail(node, f"a Reshape to {shown} of an input of shape {['N' if r.batch is None else r.batch, *r.shape]}; "
                     "only flattening to (N, -1) / (N, features) is supported")
    return [_Layer(Flatten(), "flatten", node.name)]


def _linear_layer(r, node, weight, bias, from_matmul=False, bias_index=None):
    from ..nn import Linear
    out_f, in_f = weight.shape
    if in_f != r.shape[0]:
        r.fail(node, f"its weight maps {in_f} features, the input has {r.shape[0]}")
    m = Linear(in_f, out_f, bias=bias is not None, rng=0, dtype=r.dtype)
    m.load_state_dict(_state(weight=weight, bias=bias))
    suffixes = {1: ".weight"} if bias_index is None else {1: ".weight", bias_index: ".bias"}
    return _Layer(m, "fc", node.name, _paths(r, node, suffixes), from_matmul=from_matmul)


def _bias_vector(r, node, c, out_f, what):
    try:
        return np.broadcast_to(np.asarray(c), (1, out_f)).reshape(out_f)
    except ValueError:
        r.fail(node, f"its {what} of shape {np.shape(c)} is not a per-output-feature bias of {out_f} values")


def _gemm(r, node, attrs):
    r.require_features(node)
    if int(attrs.get("transA", 0)):
        r.fail(node, "transA 1: only transA 0 (Y = A B + C on a (N, features) A) is supported")
    for key in ("alpha", "beta"):
        if float(attrs.get(key, 1.0)) != 1.0:
            r.fail(node, f"{key} {attrs[key]}: only alpha = beta = 1 is supported")
    b = r.const(node, 1, "weight B")
    if b.ndim != 2:
        r.fail(node, f"its B has shape {b.shape}, not a matrix")
    weight = b if int(attrs.get("transB", 0)) else b.T
    c = r.const(node, 2, "bias C", required=False)
    bias = None if c is None else _bias_vector(r, node, c, weight.shape[0], "C")
    return [_linear_layer(r, node, weight, bias, bias_index=2)]


def _matmul(r, node, attrs):
    r.require_features(node)
    b = r.const(node, 1, "weight B")
    if b.ndim != 2:
        r.fail(node, f"its B has shape {b.shape}; only a (features, out) matrix is supported")
    return [_linear_layer(r, node, b.T, None, from_matmul=True)]


def _add(r, node, attrs):
    from ..nn import Linear
    prev = r.layers[-1] if r.layers else None
    if prev is None or not prev.from_matmul or prev.module.bias is not None:
        r.fail(node, "an Add of a constant is supported only as the bias right after a MatMul (MatMul + Add = Linear)")
    index = 1 if node.input[0] == r.current else 0
    old = prev.module
    bias = _bias_vector(r, node, r.const(node, index, "bias"), old.out_features, "bias")
    m = Linear(old.in_features, old.out_features, bias=True, rng=0, dtype=r.dtype)
    m.load_state_dict(_state(weight=old.weight.data, bias=bias))
    prev.module, prev.from_matmul = m, False
    prev.path = _common_path(prev.path, r.param_path(node, index, ".bias"))
    return []


def _dropout(r, node, attrs):
    from ..nn import Dropout
    if "ratio" in attrs:
        ratio = float(attrs["ratio"])
    else:
        value = r.const(node, 1, "ratio", required=False)
        ratio = 0.5 if value is None else float(np.ravel(value)[0])
    training = r.const(node, 2, "training_mode", required=False)
    if training is not None and bool(np.ravel(training)[0]):
        r.fail(node, "training_mode true: only inference-mode Dropout is supported")
    if int(attrs.get("is_test", 1)) == 0:
        r.fail(node, "is_test 0: only inference-mode Dropout is supported")
    if not 0.0 <= ratio < 1.0:
        r.fail(node, f"ratio {ratio} must be in [0, 1)")
    return [_Layer(Dropout(ratio), "drop", node.name)]


def _identity(r, node, attrs):
    return []


_HANDLERS = {"Conv": _conv, "BatchNormalization": _batchnorm, "Relu": _relu, "MaxPool": _maxpool,
             "AveragePool": _avgpool, "GlobalAveragePool": _global_average_pool, "ReduceMean": _reduce_mean,
             "Flatten": _flatten, "Reshape": _reshape, "Gemm": _gemm, "MatMul": _matmul, "Add": _add,
             "Dropout": _dropout, "Identity": _identity}


def _state(**arrays):
    return OrderedDict((k, v) for k, v in arrays.items() if v is not None)


def _paths(r, node, suffixes):
    """The parameter path of a node's weight initializer (``{input index: suffix}``, weight first), kept
    only if its other initializers do not name another path."""
    found = [r.param_path(node, i, s) for i, s in suffixes.items() if i < len(node.input) and node.input[i]]
    path = found[0] if found else None
    for other in found[1:]:
        path = _common_path(path, other)
    return path


def _common_path(weight_path, other):
    return weight_path if other is None or other == weight_path else None


def _tidy(value):
    """A float attribute stored as float32 (9.999999747e-06) back to the value written (1e-05)."""
    return float(f"{float(value):.7g}")


# -- constant folding: (reader, [arrays], attrs) -> array --------------------------------------------------------
def _np_dtype(onnx_type):
    from onnx.helper import tensor_dtype_to_np_dtype
    return tensor_dtype_to_np_dtype(onnx_type)


def _reshape_const(a, shape, allowzero):
    shape = [int(v) for v in np.ravel(shape)]
    shape = [a.shape[i] if v == 0 and not allowzero else v for i, v in enumerate(shape)]
    return a.reshape(shape)


def _unsqueeze(r, args, attrs):
    axes = attrs.get("axes", None if len(args) < 2 or args[1] is None else np.ravel(args[1]))
    out = args[0]
    rank = out.ndim + len(axes)
    for axis in sorted(int(a) % rank for a in axes):
        out = np.expand_dims(out, axis)
    return out


def _squeeze(r, args, attrs):
    axes = attrs.get("axes", None if len(args) < 2 or args[1] is None else np.ravel(args[1]))
    a = args[0]
    return np.squeeze(a) if axes is None else np.squeeze(a, axis=tuple(int(x) % a.ndim for x in axes))


def _slice(r, args, attrs):
    a = args[0]
    if "starts" in attrs:                                  # opset < 10: attributes
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = np.ravel(args[1]), np.ravel(args[2])
        axes = None if len(args) < 4 or args[3] is None else np.ravel(args[3])
        steps = None if len(args) < 5 or args[4] is None else np.ravel(args[4])
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * a.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        index[int(ax) % a.ndim] = slice(int(s), int(e), int(st))
    return a[tuple(index)]


def _divide(a, b):
    if np.issubdtype(np.result_type(a, b), np.integer):
        return (np.trunc(np.true_divide(a, b))).astype(np.result_type(a, b))
    return np.true_divide(a, b).astype(np.result_type(a, b))


_FOLDS = {
    "Identity": lambda r, a, at: a[0],
    "Cast": lambda r, a, at: a[0].astype(_np_dtype(at["to"])),
    "Transpose": lambda r, a, at: np.transpose(a[0], at.get("perm")),
    "Reshape": lambda r, a, at: _reshape_const(a[0], a[1], at.get("allowzero", 0)),
    "Shape": lambda r, a, at: np.array(a[0].shape, dtype=np.int64)[slice(at.get("start", 0), at.get("end"))],
    "Concat": lambda r, a, at: np.concatenate(a, axis=at["axis"]),
    "Gather": lambda r, a, at: np.take(a[0], a[1], axis=at.get("axis", 0)),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Add": lambda r, a, at: a[0] + a[1],
    "Sub": lambda r, a, at: a[0] - a[1],
    "Mul": lambda r, a, at: a[0] * a[1],
    "Div": lambda r, a, at: _divide(a[0], a[1]),
}


# -- names -----------------------------------------------------------------------------------------------------
def _layer_names(layers, tuckerref_made):
    """OrderedDict {child name: module}. A layer keeps the parameter path of its initializers when that is
    a plain identifier (``conv1`` for ``conv1.weight``); consecutive Conv3d (or Linear) layers with paths
    ``X.0``, ``X.1``, ... (X an identifier or a number) become a nested Sequential ``X`` (a compressed layer,
    ``X.0.weight``), unless other layers' paths also start with ``X.``. Layers
    without parameters keep their node name in a model tuckerref wrote. Every other layer gets a name of
    its kind: conv1, bn1, relu1, pool1, avgpool1, gap1, flatten1, fc1, drop1, ..."""
    from ..nn import Sequential
    groups, i = {}, 0
    while i < len(layers):                                 # nested groups X.0, X.1, ...
        head, _, index = (layers[i].path or "").rpartition(".")
        j = i
        if _SEGMENT.match(head) and index == "0":
            kind = type(layers[i].module)
            while (j + 1 < len(layers) and layers[j + 1].path == f"{head}.{j + 1 - i}"
                   and type(layers[j + 1].module) is kind):
                j += 1
            clash = any(l.path == head or (l.path or "").startswith(head + ".")
                        for k, l in enumerate(layers) if not i <= k <= j)
            if j > i and kind.__name__ in ("Conv3d", "Linear") and not clash:
                groups[i] = (head, j)
        i = j + 1 if i in groups else i + 1
    taken = {head for head, _ in groups.values()}
    chosen = {start: head for start, (head, _) in groups.items()}
    grouped = {k for start, (_, stop) in groups.items() if start in chosen for k in range(start, stop + 1)}
    for k, layer in enumerate(layers):
        if k in grouped:
            continue
        name = layer.path if layer.module.parameters() else (layer.node if tuckerref_made else None)
        if name and _IDENTIFIER.match(name) and name not in taken:
            taken.add(name)
            chosen[k] = name
    counters = {}
    children = OrderedDict()
    k = 0
    while k < len(layers):
        if k in groups:
            head, stop = groups[k]
            children[head] = Sequential(OrderedDict((str(m - k), layers[m].module) for m in range(k, stop + 1)))
            k = stop + 1
            continue
        name = chosen.get(k)
        if name is None:
            kind = layers[k].kind
            n = counters.get(kind, 0)
            while True:
                n += 1
                if f"{kind}{n}" not in taken:
                    break
            counters[kind] = n
            name = f"{kind}{n}"
            taken.add(name)
        children[name] = layers[k].module
        k += 1
    return children


# -- entry points ----------------------------------------------------------------------------------------------
def load_onnx_model(path):
    """``onnx.load`` of ``path`` (external data resolved from its folder); ValueError naming the file."""
    onnx = require_onnx()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ONNX model {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # protobuf DecodeError, missing external data, ...
        raise ValueError(f"{path} is not a readable ONNX model (truncated or foreign file?): "
                         f"{type(exc).__name__}: {exc}") from None
    if not model.HasField("graph") or not model.opset_import or model.ir_version < 3:
        raise ValueError(f"{path} is not an ONNX model (no graph, opset or IR version: a foreign or truncated file)")
    return model


def _check(model_or_path, source):
    try:
        require_onnx().checker.check_model(model_or_path)
    except Exception as exc:
        raise ValueError(f"{source} is not a valid ONNX model: {exc}") from None


def network_from_model(model, source="<in-memory model>", dtype=None, check=True):
    """The network of an ``onnx.ModelProto`` (checked first unless ``check`` is False); ``source`` names it
    in error messages."""
    if check:
        _check(model, source)
    return _Reader(source, model, None if dtype is None else np.dtype(dtype)).run()


def read_onnx_with_meta(path, dtype=None):
    """(network, meta) of :func:`read_onnx`; meta records the file, its producer and opset."""
    path = Path(path)
    model = load_onnx_model(path)
    _check(str(path), path)                                # the checker reads the file itself: no re-serialisation
    net = network_from_model(model, path, dtype, check=False)
    meta = {"imported_from": str(path),
            "onnx_producer": f"{model.producer_name} {model.producer_version}".strip(),
            "onnx_opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))}
    return net, meta


def read_onnx(path, dtype=None):
    """Read the chain network in ONNX model ``path`` into an eval-mode ``Sequential`` whose ``input_shape``
    is the model's per-sample input shape, (C, D, H, W) for a video network. ``dtype`` defaults to the input's (float32 or
    float64). Raises ValueError naming the file (and the node and op type) for anything unsupported."""
    return read_onnx_with_meta(path, dtype)[0]


def import_onnx(path, out_path, dtype=None):
    """:func:`read_onnx` then :func:`tuckerref.io.save_model` to ``out_path`` (nothing written on error)."""
    from ..io import save_model
    if Path(out_path).resolve() == Path(path).resolve():
        raise ValueError(f"output {out_path} is the input model; choose another path")
    net, meta = read_onnx_with_meta(path, dtype)
    save_model(out_path, net, meta=meta)
    return net
