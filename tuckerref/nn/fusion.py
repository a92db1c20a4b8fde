"""Inference-time fusion: layer sequences that run as one kernel when no gradient is kept.

Under ``no_grad`` a Sequential runs its children through :func:`inference_forward`, which fuses

* a Tucker-2 block (eqs. 8-10: a Sequential of a bias-free 1x1x1 Conv3d, a bias-free core Conv3d
  and a 1x1x1 Conv3d) into :func:`tuckerref.kernels.tucker2.tucker2_conv3d`, which mixes the
  core's output channels by U_t before they reach memory;
* a convolution (a Conv3d or a Tucker-2 block) followed by a MaxPool3d whose stride is its kernel
  and which has no padding, and by a ReLU if one comes next (the paper's network), into one pass
  that writes only the pooled values (:func:`tuckerref.kernels.conv3d.conv3d_max_pool3d`).

The results are the same arrays (each value summed in the same order); only passes over memory
are saved. With gradients enabled every layer runs on its own, since backward needs their inputs.
Fused layers forget what an earlier forward pass with gradients kept, as their own forward would
under ``no_grad``, so a backward pass after it fails clearly instead of using stale inputs.
"""
from __future__ import annotations

from ..kernels.conv3d import conv3d_max_pool3d
from ..kernels.tucker2 import tucker2_conv3d
from .layers import Conv3d, MaxPool3d, ReLU, _require_input


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


def _forget(*layers):
    for layer in layers:
        layer._x = None


def tucker2_forward(layers: tuple, x, pool=None, relu=False):
    """Inference forward of a Tucker-2 block's (first, core, last) layers in one fused kernel
    (then its max pooling with kernel = stride = ``pool`` and, with ``relu``, a ReLU)."""
    first, core, last = layers
    _require_input(x, first, 5, first.in_channels)
    _forget(*layers)
    return tucker2_conv3d(x, first.weight.data, core.weight.data, last.weight.data,
                          None if last.bias is None else last.bias.data, core.stride, core.padding, pool=pool,
                          relu=relu, check_finite=False)


def _pools_in_one_pass(m) -> bool:
    """A MaxPool3d whose windows tile its input: stride = kernel, no padding."""
    return type(m) is MaxPool3d and m.stride == m.kernel_size and m.padding == (0, 0, 0)


def _conv_pool_forward(conv, pool: MaxPool3d, relu: ReLU | None, x):
    """``relu(pool(conv(x)))`` (without ``relu`` when it is None) in one pass, or None when ``conv``
    is neither a Conv3d nor a Tucker-2 block."""
    from .container import Sequential  # here: the container module imports this one
    block = tucker2_layers(conv.children()) if type(conv) is Sequential else None
    if type(conv) is not Conv3d and block is None:
        return None
    pool._cache = None
    if relu is not None:
        relu._y = None
    if block is not None:
        return tucker2_forward(block, x, pool=pool.kernel_size, relu=relu is not None)
    _require_input(x, conv, 5, conv.in_channels)
    _forget(conv)
    return conv3d_max_pool3d(x, conv.weight.data, None if conv.bias is None else conv.bias.data, conv.stride,
                             conv.padding, pool.kernel_size, relu=relu is not None, check_finite=False)


def inference_forward(modules, x):
    """Run ``modules`` in order on ``x`` without gradients, fusing the sequences the module docstring lists."""
    modules = list(modules)
    block = tucker2_layers(modules)
    if block is not None:
        return tucker2_forward(block, x)
    i = 0
    while i < len(modules):
        if i + 1 < len(modules) and _pools_in_one_pass(modules[i + 1]):
            relu = modules[i + 2] if i + 2 < len(modules) and type(modules[i + 2]) is ReLU else None
            y = _conv_pool_forward(modules[i], modules[i + 1], relu, x)
            if y is not None:
                x, i = y, i + (2 if relu is None else 3)
                continue
        x, i = modules[i].forward(x), i + 1
    return x
