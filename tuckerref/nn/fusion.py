"""Inference-time fusion: layer sequences that run as one kernel when no gradient is kept.

A Tucker-2 block (eqs. 8-10: a Sequential of a bias-free 1x1x1 Conv3d, a bias-free core Conv3d
and a 1x1x1 Conv3d) runs as :func:`tuckerref.kernels.tucker2.tucker2_conv3d`, which mixes the
core's output channels by U_t before they reach memory. The result is the same array (each value
summed in the same order); only the pass over memory between the core and U_t is saved. With
gradients enabled the three layers run one by one, since backward needs the core's output.
"""
from __future__ import annotations

from ..kernels.tucker2 import tucker2_conv3d
from .layers import Conv3d


def _is_pointwise(conv: Conv3d) -> bool:
    return conv.kernel_size == (1, 1, 1) and conv.stride == (1, 1, 1) and conv.padding == (0, 0, 0)


def tucker2_layers(modules) -> tuple | None:
    """(first, core, last) when ``modules`` are the three Conv3d layers of a Tucker-2 block, else None."""
    modules = list(modules)
    if len(modules) != 3 or not all(type(m) is Conv3d for m in modules):
        return None
    first, core, last = modules
    if not (_is_pointwise(first) and _is_pointwise(last)) or first.bias is not None or core.bias is not None:
        return None
    if first.out_channels != core.in_channels or core.out_channels != last.in_channels:
        return None
    return first, core, last


def tucker2_forward(layers: tuple, x):
    """Inference forward of a Tucker-2 block's (first, core, last) layers in one fused kernel."""
    first, core, last = layers
    return tucker2_conv3d(x, first.weight.data, core.weight.data, last.weight.data,
                          None if last.bias is None else last.bias.data, core.stride, core.padding,
                          check_finite=False)
