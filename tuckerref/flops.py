"""Parameter, FLOP and multiply-accumulate accounting of a network, layer by layer (the paper's Tables 1 and 2;
docs/method.md sections 7 and 8).

Two cost measures are reported for every layer and every sub-layer of a (nested) ``Sequential``:

* ``flops``: the authors' convention, which reproduces the paper's Table 2 exactly (docs/method.md section 8):
  a convolution costs ``T * I' * (2 * S * Λ - 1)`` plus ``I'`` *once* if it has a bias (sic: not per
  output channel); a linear layer costs ``(2 * in - 1) * out`` plus ``out`` with a bias. Max pooling,
  ReLU, dropout and flatten cost 0 in this convention (their element counts are still reported).
  Layers the paper's network does not have get a documented extension that counts their floating-point
  arithmetic the same way (each multiplication and each addition one FLOP): a BatchNorm3d (eval mode,
  the per-channel affine map y = s_c x + t_c) costs 2 per element; an average pooling costs, per
  output element, the number of input elements its window sums (V - 1 additions and one scaling:
  V, padding positions excluded), so a global average pooling costs D·H·W per channel; an Identity
  costs 0.
* ``macs``: plain multiply-accumulate counts, ``T * S * Λ * I'`` for a convolution and ``in * out`` for a
  linear layer; these are Table 1's "multiplications" (Section 3.1.1; docs/method.md section 7). A BatchNorm3d counts one per
  element (its multiplication by s_c); poolings, ReLU, dropout, flatten and identity count 0. The full
  C3D (Tran et al. 2015, 3 x 16 x 112 x 112) comes to about 38.5 G.

Parameters are the trainable arrays (weights, biases, a BatchNorm3d's weight and bias); buffers such as
running statistics are not parameters.

Everything follows from :meth:`Module.output_shape`, so counting the full-size network needs no forward pass.
Table 1's closed forms are provided as functions (``conv_multiplications`` ...) to check the per-layer counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from .kernels.avg_pool import adaptive_windows, avg_pool_windows
from .nn import (AdaptiveAvgPool3d, AvgPool3d, BatchNorm3d, Conv3d, Dropout, Flatten, Identity, Linear, MaxPool3d,
                 Module, ReLU, Sequential)


# -- Table 1 closed forms (Λ = kernel volume, I = input positions, I' = output positions) ----------
def conv_multiplications(S: int, T: int, kernel_volume: int, out_positions: int) -> int:
    """Table 1, original convolution: S·T·Λ·I' multiplications."""
    return S * T * kernel_volume * out_positions


def tucker2_multiplications(S: int, T: int, Rs: int, Rt: int, kernel_volume: int,
                            in_positions: int, out_positions: int) -> int:
    """Table 1, Tucker-2 convolution (eqs. 8-10): S·R_s·I + R_s·R_t·Λ·I' + R_t·T·I' multiplications."""
    return S * Rs * in_positions + Rs * Rt * kernel_volume * out_positions + Rt * T * out_positions


def tucker1_multiplications(S: int, T: int, R: int, kernel_volume: int, out_positions: int) -> int:
    """Tucker-1 convolution: S·R·Λ·I' + R·T·I' multiplications; a linear layer is Λ = I' = 1."""
    return S * R * kernel_volume * out_positions + R * T * out_positions


def conv_parameters(S: int, T: int, kernel_volume: int) -> int:
    """Table 1, original convolution: S·T·Λ kernel weights (bias not counted)."""
    return S * T * kernel_volume


def tucker2_parameters(S: int, T: int, Rs: int, Rt: int, kernel_volume: int) -> int:
    """Table 1, Tucker-2 convolution: S·R_s + R_s·R_t·Λ + R_t·T weights (bias not counted)."""
    return S * Rs + Rs * Rt * kernel_volume + Rt * T


def tucker1_parameters(S: int, T: int, R: int, kernel_volume: int) -> int:
    """Tucker-1 convolution: S·R·Λ + R·T weights (bias not counted); a linear layer is Λ = 1."""
    return S * R * kernel_volume + R * T


# -- the paper's FLOP convention (docs/method.md section 8) -------------------------------------
def conv_flops(S: int, T: int, kernel_volume: int, out_positions: int, bias: bool) -> int:
    """Paper convention: T·I'·(2·S·Λ − 1), plus I' once (sic) when the convolution has a bias."""
    return T * out_positions * (2 * S * kernel_volume - 1) + (out_positions if bias else 0)


def linear_flops(in_features: int, out_features: int, bias: bool) -> int:
    """Paper convention: (2·in − 1)·out, plus out with a bias."""
    return (2 * in_features - 1) * out_features + (out_features if bias else 0)


# -- per-layer records --------------------------------------------------------------------------
@dataclass
class LayerCount:
    """Costs of one layer (``children`` holds its sub-layers when it is a Sequential).

    ``in_positions``/``out_positions`` are spatial positions (I and I' of Table 1: F·H·W of a
    C×F×H×W volume, 1 for a flat vector); ``in_elements``/``out_elements`` are whole per-sample sizes.
    """

    name: str
    kind: str
    input_shape: tuple
    output_shape: tuple
    params: int
    flops: int
    macs: int
    in_positions: int
    out_positions: int
    children: list = field(default_factory=list)

    @property
    def in_elements(self) -> int:
        return prod(self.input_shape)

    @property
    def out_elements(self) -> int:
        return prod(self.output_shape)

    def walk(self):
        """This record, then every sub-layer record (depth first)."""
        yield self
        for c in self.children:
            yield from c.walk()

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "input_shape": list(self.input_shape),
                "output_shape": list(self.output_shape), "params": self.params, "flops": self.flops,
                "macs": self.macs, "in_positions": self.in_positions, "out_positions": self.out_positions,
                "in_elements": self.in_elements, "out_elements": self.out_elements,
                "children": [c.as_dict() for c in self.children]}


def find_record(layers, name: str, what: str):
    """The record named ``name`` ("c1", "c1.0", ...) among ``layers`` and their sub-layer records.

    Works for any records with ``name`` and ``walk()`` (layer counts here, layer timings in
    :mod:`tuckerref.profile`); raises ``KeyError`` listing the top-level names.
    """
    for layer in layers:
        for rec in layer.walk():
            if rec.name == name:
                return rec
    raise KeyError(f"no {what} named {name!r} (top-level layers: {[layer.name for layer in layers]})")


@dataclass
class NetworkCount:
    """Per-layer costs of a network (``layers``: its top-level children) and their totals."""

    input_shape: tuple
    layers: list

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def __getitem__(self, name: str) -> LayerCount:
        """Record by dotted name ("c1", "c1.0", ...)."""
        return find_record(self.layers, name, "layer")

    def as_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "params": self.params, "flops": self.flops,
                "macs": self.macs, "layers": [layer.as_dict() for layer in self.layers]}


def _positions(shape: tuple) -> int:
    """Spatial positions of a per-sample shape: F·H·W of (C, F, H, W), 1 of a flat (n,) vector."""
    return prod(shape[1:]) if len(shape) > 1 else 1


def _count_conv(m: Conv3d, in_shape, out_shape):
    volume = prod(m.kernel_size)
    out_pos = _positions(out_shape)
    bias = m.bias is not None
    return (conv_flops(m.in_channels, m.out_channels, volume, out_pos, bias),
            conv_multiplications(m.in_channels, m.out_channels, volume, out_pos))


def _count_linear(m: Linear, in_shape, out_shape):
    return linear_flops(m.in_features, m.out_features, m.bias is not None), m.in_features * m.out_features


def _count_free(m, in_shape, out_shape):
    return 0, 0


def _count_batchnorm(m: BatchNorm3d, in_shape, out_shape):
    """Extension: eval mode's y = s_c x + t_c, a multiplication and an addition per element."""
    elements = prod(in_shape)
    return 2 * elements, elements


def window_sum_flops(windows, channels: int) -> int:
    """FLOPs of window means: per output element, V - 1 additions and one scaling for a window of V input
    elements; separable, so the total is channels x the product over dimensions of the summed lengths."""
    return channels * prod(int((e - s).sum()) for s, e in zip(windows.starts, windows.ends))


def _count_avg_pool(m: AvgPool3d, in_shape, out_shape):
    windows = avg_pool_windows(in_shape[1:], m.kernel_size, m.stride, m.padding, out_shape[1:])
    return window_sum_flops(windows, in_shape[0]), 0


def _count_adaptive_avg_pool(m: AdaptiveAvgPool3d, in_shape, out_shape):
    return window_sum_flops(adaptive_windows(in_shape[1:], out_shape[1:]), in_shape[0]), 0


#: Leaf layer type -> function (module, input shape, output shape) -> (paper FLOPs, MACs).
COUNTERS = {Conv3d: _count_conv, Linear: _count_linear, MaxPool3d: _count_free, ReLU: _count_free,
            Dropout: _count_free, Flatten: _count_free, Identity: _count_free, BatchNorm3d: _count_batchnorm,
            AvgPool3d: _count_avg_pool, AdaptiveAvgPool3d: _count_adaptive_avg_pool}


def _counter(m: Module):
    for cls in type(m).__mro__:
        if cls in COUNTERS:
            return COUNTERS[cls]
    raise ValueError(f"no FLOP counter for layer type {type(m).__name__} ({m!r}); "
                     f"known: {sorted(c.__name__ for c in COUNTERS)} and Sequential")


def count_layer(m: Module, input_shape, name: str = "") -> LayerCount:
    """Costs of module ``m`` (recursively for a Sequential) on a per-sample ``input_shape``."""
    input_shape = tuple(int(v) for v in input_shape)
    if isinstance(m, Sequential):
        children, output_shape = [], input_shape
        for child_name, child in m.named_children():
            rec = count_layer(child, output_shape, f"{name}.{child_name}" if name else child_name)
            children.append(rec)
            output_shape = rec.output_shape
        params = sum(c.params for c in children)
        flops = sum(c.flops for c in children)
        macs = sum(c.macs for c in children)
    else:
        try:
            output_shape = tuple(m.output_shape(input_shape))
        except ValueError as exc:
            raise ValueError(f"layer {name or type(m).__name__!r}: {exc}") from None
        children = []
        flops, macs = _counter(m)(m, input_shape, output_shape)
        params = m.num_parameters()
    return LayerCount(name=name, kind=type(m).__name__, input_shape=input_shape, output_shape=output_shape,
                      params=params, flops=flops, macs=macs, in_positions=_positions(input_shape),
                      out_positions=_positions(output_shape), children=children)


def count_network(net: Sequential, input_shape=None) -> NetworkCount:
    """Per-layer costs of ``net`` for one sample of ``input_shape`` (default: ``net.input_shape``)."""
    if input_shape is None:
        input_shape = getattr(net, "input_shape", None)
        if input_shape is None:
            raise ValueError("count_network needs input_shape: the network does not record one")
    if not isinstance(net, Sequential):
        raise ValueError(f"count_network expects a Sequential network, got {type(net).__name__}")
    top = count_layer(net, input_shape)
    return NetworkCount(input_shape=top.input_shape, layers=top.children)
