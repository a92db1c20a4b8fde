"""Folding a batch normalisation into the convolution before it, for inference.

In eval mode a BatchNorm3d normalises with its running statistics, so after a convolution with
output z(t, .) (eq. 1, linear in the weight K(t, ...) and bias b(t) of output channel t) it is the
per-channel affine map

    y(t, .) = (z(t, .) - mean_t) * gamma_t / sqrt(var_t + eps) + beta_t.

One convolution computes both, with

    w'(t, s, i, j, l) = w(t, s, i, j, l) * gamma_t / sqrt(var_t + eps)
    b'(t)             = (b(t) - mean_t) * gamma_t / sqrt(var_t + eps) + beta_t

(b = 0 when the convolution has no bias; gamma = 1, beta = 0 without affine parameters). The
folded network equals the original in eval mode; in training mode the two differ, since the
batch normalisation would use batch statistics. The coefficients are computed in float64 and
stored in the convolution's dtype.
"""
from __future__ import annotations

import copy

import numpy as np

from .nn import BatchNorm3d, Conv3d, Module, Sequential
from .nn.module import Parameter


def _last_convolution(module: Module, name: str):
    """(conv, its dotted name) when ``module``'s output is a Conv3d's output (the module itself, or
    the last child of a Sequential, recursively, as for a Tucker-2 block), else None."""
    if type(module) is Conv3d:
        return module, name
    if type(module) is Sequential and len(module):
        last_name, last = list(module.named_children())[-1]
        return _last_convolution(last, f"{name}.{last_name}")
    return None


def fold_into(conv: Conv3d, bn: BatchNorm3d):
    """Fold ``bn``'s eval-mode affine map into ``conv``'s weight and bias, in place (module docstring)."""
    if bn.num_features != conv.out_channels:
        raise ValueError(f"cannot fold {bn!r} ({bn.num_features} channels) into {conv!r} "
                         f"({conv.out_channels} output channels)")
    scale, shift = bn.affine_map()  # s = gamma / sqrt(var + eps), t = beta - mean s
    dtype = conv.weight.data.dtype
    weight = conv.weight.data.astype(np.float64) * scale[:, None, None, None, None]
    bias = shift if conv.bias is None else conv.bias.data.astype(np.float64) * scale + shift
    conv.weight.data = weight.astype(dtype)
    conv.bias = Parameter(bias.astype(dtype))


def _fold(module: Module, prefix: str, folded: list):
    if type(module) is not Sequential:
        return
    for name, child in list(module.named_children()):
        _fold(child, f"{prefix}{name}.", folded)
    names = module.names()
    for before, name in zip(names, names[1:]):
        bn = module[name]
        if type(bn) is not BatchNorm3d or bn.running_mean is None or before not in module._modules:
            continue
        target = _last_convolution(module[before], prefix + before)
        if target is None or target[0].out_channels != bn.num_features:
            continue
        fold_into(target[0], bn)
        delattr(module, name)
        folded.append((target[1], prefix + name))


def fold_batchnorm(net: Module, report: bool = False):
    """A copy of ``net`` in which every Conv3d immediately followed by a BatchNorm3d (with running
    statistics) has the batch normalisation folded into its weight and bias (a bias is created if
    absent) and the BatchNorm3d child removed; Sequentials are searched recursively, and a Sequential
    whose output is a convolution's (a Tucker-2 block) counts as that convolution. ``net`` itself is
    not modified. Any other BatchNorm3d stays in place. With ``report``, returns ``(net, pairs)``,
    ``pairs`` the folded ``(conv_name, bn_name)`` by their ``state_dict`` prefixes.
    """
    net = copy.deepcopy(net)
    folded: list = []
    _fold(net, "", folded)
    return (net, folded) if report else net


__all__ = ["fold_batchnorm", "fold_into"]
