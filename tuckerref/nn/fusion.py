"""Inference-time fusion: layer sequences that run as one kernel when no gradient is kept.

Under ``no_grad`` a Sequential runs its children through :func:`inference_forward`, which fuses

* a Tucker-2 block (eqs. 8-10: a Sequential of a bias-free 1x1x1 Conv3d, a bias-free core Conv3d
  and a 1x1x1 Conv3d) into :func:`tuckerref.kernels.tucker2.tucker2_conv3d`, which mixes the
  core's output channels by U_t before they reach memory, or, when a pooling follows and the core
  has more channels than a register tile holds, streams the block a few frames at a time
  (:mod:`tuckerref.kernels.stream_pool`); a Tucker-1 block (a bias-free core Conv3d and a 1x1x1
  Conv3d) followed by a pooling likewise (:func:`tuckerref.kernels.tucker2.tucker1_conv3d`);
* a convolution (a Conv3d or a Tucker-2 block) followed by a MaxPool3d whose stride is its kernel
  and which has no padding, and by a ReLU if one comes next (the paper's network), into one pass
  that writes only the pooled values (:func:`tuckerref.kernels.conv_pool.conv3d_max_pool3d`); a
  convolution, ReLU, MaxPool3d sequence (C3D's order) likewise, since relu(max(x)) = max(relu(x))
  for every window (max and ReLU are both monotone and NaN passes through both).

The results are the same arrays (each value summed in the same order); only passes over memory
are saved. With gradients enabled every layer runs on its own, since backward needs their inputs.
Fused layers forget what an earlier forward pass with gradients kept, as their own forward would
under ``no_grad``, so a backward pass after it fails clearly instead of using stale inputs.
"""
from __future__ import annotations

from typing import NamedTuple

from ..kernels.conv_pool import conv3d_max_pool3d
from ..kernels.tucker2 import tucker1_conv3d, tucker2_conv3d
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


def tucker1_layers(modules) -> tuple | None:
    """(None, core, last) when ``modules`` are the two Conv3d layers of a Tucker-1 block (a bias-free
    convolution, then a 1x1x1 convolution of its channels), else None."""
    modules = list(modules)
    if len(modules) != 2 or not all(type(m) is Conv3d for m in modules):
        return None
    core, last = modules
    if not _is_pointwise(last) or core.bias is not None or core.out_channels != last.in_channels:
        return None
    return None, core, last


def _forget(*layers):
    for layer in layers:
        layer._x = None


def tucker2_forward(layers: tuple, x, pool=None, relu=False):
    """Inference forward of a Tucker-2 block's (first, core, last) layers in one fused kernel
    (then its max pooling with kernel = stride = ``pool`` and, with ``relu``, a ReLU); ``first``
    None: a Tucker-1 block's (core, last), which needs the pooling."""
    first, core, last = layers
    if first is None:
        _require_input(x, core, 5, core.in_channels)
        _forget(core, last)
        return tucker1_conv3d(x, core.weight.data, last.weight.data, None if last.bias is None else last.bias.data,
                              core.stride, core.padding, pool=pool, relu=relu, check_finite=False)
    _require_input(x, first, 5, first.in_channels)
    _forget(*layers)
    return tucker2_conv3d(x, first.weight.data, core.weight.data, last.weight.data,
                          None if last.bias is None else last.bias.data, core.stride, core.padding, pool=pool,
                          relu=relu, check_finite=False)


def _pools_in_one_pass(m) -> bool:
    """A MaxPool3d whose windows tile its input: stride = kernel, no padding."""
    return type(m) is MaxPool3d and m.stride == m.kernel_size and m.padding == (0, 0, 0)


def pooled_block(conv):
    """The layers of ``conv`` when it is a Tucker-2 block (first, core, last) or a Tucker-1 block
    (None, core, last), None when it is a plain Conv3d, and False when it is none of these (then no
    convolution is fused with the pooling after it). A block is a Sequential whose
    :meth:`~tuckerref.nn.module.Module.chain` is three (two) such Conv3d layers (asked of the module,
    so that this module needs no container class: the container imports this one)."""
    if type(conv) is Conv3d:
        return None
    chain = conv.chain()
    block = None if chain is None else (tucker2_layers(chain) or tucker1_layers(chain))
    return False if block is None else block


def _conv_pool_forward(conv, block, pool: MaxPool3d, relu: ReLU | None, x):
    """``relu(pool(conv(x)))`` (without ``relu`` when it is None) in one pass; ``block`` is
    :func:`pooled_block` of ``conv``."""
    pool._cache = None
    if relu is not None:
        relu._y = None
    if block is not None:
        return tucker2_forward(block, x, pool=pool.kernel_size, relu=relu is not None)
    _require_input(x, conv, 5, conv.in_channels)
    _forget(conv)
    return conv3d_max_pool3d(x, conv.weight.data, None if conv.bias is None else conv.bias.data, conv.stride,
                             conv.padding, pool.kernel_size, relu=relu is not None, check_finite=False)


class Group(NamedTuple):
    """One step of an inference pass: ``kind`` "block" (a Tucker-2 block's three layers, ``block``),
    "pooled" (``modules`` = (conv, pool) or (conv, pool, relu), also for a conv, relu, pool sequence;
    ``block`` the conv's Tucker-2 layers
    or None) or "layer" (``modules`` = (one module,), run by its own forward)."""

    kind: str
    modules: tuple
    block: tuple | None = None


def inference_groups(modules) -> list:
    """``modules`` split into the :class:`Group` steps that :func:`inference_forward` runs, fused where
    the module docstring says."""
    modules = list(modules)
    block = tucker2_layers(modules)
    if block is not None:
        return [Group("block", tuple(modules), block)]
    groups, i = [], 0
    while i < len(modules):
        if (i + 2 < len(modules) and type(modules[i + 1]) is ReLU and _pools_in_one_pass(modules[i + 2])
                and pooled_block(modules[i]) is not False):
            groups.append(Group("pooled", (modules[i], modules[i + 2], modules[i + 1]), pooled_block(modules[i])))
            i += 3
            continue
        if i + 1 < len(modules) and _pools_in_one_pass(modules[i + 1]):
            block = pooled_block(modules[i])
            if block is not False:
                size = 3 if i + 2 < len(modules) and type(modules[i + 2]) is ReLU else 2
                groups.append(Group("pooled", tuple(modules[i:i + size]), block))
                i += size
                continue
        groups.append(Group("layer", (modules[i],)))
        i += 1
    return groups


def run_group(group: Group, x):
    """One :class:`Group` of an inference pass on ``x``."""
    if group.kind == "block":
        return tucker2_forward(group.block, x)
    if group.kind == "pooled":
        conv, pool, *relu = group.modules
        return _conv_pool_forward(conv, group.block, pool, relu[0] if relu else None, x)
    return group.modules[0].forward(x)


def inference_forward(modules, x):
    """Run ``modules`` in order on ``x`` without gradients, fusing the sequences the module docstring lists."""
    for group in inference_groups(modules):
        x = run_group(group, x)
    return x
