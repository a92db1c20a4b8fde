"""Element-wise kernels: ReLU and (inverted) dropout.

ReLU:    y = max(x, 0),          dL/dx = G * [y > 0]
Dropout: y = x * m / (1 - p),    m ~ Bernoulli(1 - p), dL/dx = G * m / (1 - p)
Dropout3d draws one m per (sample, channel) and so zeroes whole feature maps.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._threads import threads_for


@njit(parallel=True, cache=True)  # no fastmath: NaN must survive
def _relu_inplace(flat):
    for i in prange(flat.size):
        if flat[i] < 0:
            flat[i] = 0


@njit(parallel=True, cache=True)  # no fastmath: NaN must survive
def _relu_backward(y, g, gx):
    for i in prange(y.size):
        gx[i] = g[i] if y[i] > 0 else 0


def relu(x, *, inplace=False):
    """max(x, 0); NaN stays NaN, as in PyTorch."""
    y = x if inplace else np.array(x, copy=True)
    if not y.flags.c_contiguous:
        raise ValueError(f"relu needs a C-contiguous array, got strides {y.strides}")
    with threads_for(y.size):  # the ReLUs after l1 and l2 touch 128 and 84 values: no second thread
        _relu_inplace(y.reshape(-1))
    return y


def relu_backward(y, grad_out):
    """dL/dx from the ReLU *output* y: G where y > 0, else 0."""
    if y.shape != grad_out.shape:
        raise ValueError(f"relu_backward: output shape {y.shape} and grad shape {grad_out.shape} differ")
    y = np.ascontiguousarray(y)
    g = np.ascontiguousarray(grad_out, dtype=y.dtype)
    gx = np.empty_like(y)
    _relu_backward(y.reshape(-1), g.reshape(-1), gx.reshape(-1))
    return gx


def dropout_mask(shape, p, rng: np.random.Generator, *, channelwise=False, dtype=np.float32):
    """Inverted-dropout mask m / (1 - p): element-wise, or per (N, C) when ``channelwise``.

    A channel-wise mask has shape (N, C, 1, 1, 1) and broadcasts over the clip.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    mshape = tuple(shape[:2]) + (1,) * (len(shape) - 2) if channelwise else tuple(shape)
    keep = rng.random(mshape) >= p
    return (keep / (1.0 - p)).astype(dtype)
