"""Fully connected layer, y = x W^T + b (PyTorch ``linear``), and its gradients.

    Y(n, o) = b(o) + sum_i W(o, i) X(n, i)
    dL/dX(n, i) = sum_o G(n, o) W(o, i)
    dL/dW(o, i) = sum_n G(n, o) X(n, i)
    dL/db(o)    = sum_n G(n, o)

Plain Numba loops (no BLAS): the layers are small (at most 5184 x 128) and
memory bound; each loop is contiguous in its innermost index.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._checks import common_dtype, float_array, require_finite
from ._threads import threads_for


@njit(parallel=True, fastmath=True, cache=True)
def _linear_forward(x, w, out):
    # n sample, o output feature, i input feature.
    N, I = x.shape
    O = w.shape[0]
    for task in prange(N * O):
        n = task // O
        o = task % O
        a = out[n, o]
        xr = x[n]
        wr = w[o]
        for i in range(I):
            a += wr[i] * xr[i]
        out[n, o] = a


@njit(parallel=True, fastmath=True, cache=True)
def _linear_grad_input(g, w, gx):
    # n sample, o output feature, i input feature.
    N, O = g.shape
    I = w.shape[1]
    for n in prange(N):
        row = gx[n]
        for o in range(O):
            gv = g[n, o]
            wr = w[o]
            for i in range(I):
                row[i] += gv * wr[i]


@njit(parallel=True, fastmath=True, cache=True)
def _linear_grad_weight(g, x, gw):
    # o output feature, n sample, i input feature.
    N, O = g.shape
    I = x.shape[1]
    for o in prange(O):
        row = gw[o]
        for n in range(N):
            gv = g[n, o]
            xr = x[n]
            for i in range(I):
                row[i] += gv * xr[i]


def _validate(x, weight, bias, *, check_finite):
    x = float_array(x, "x", 2, layout="N, in_features")
    weight = float_array(weight, "weight", 2, layout="out_features, in_features")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"feature mismatch: x has shape {x.shape} but weight has shape {weight.shape} "
                         f"(expects {weight.shape[1]} input features)")
    if bias is not None:
        bias = float_array(bias, "bias", 1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias has shape {bias.shape} but weight has {weight.shape[0]} outputs")
    if check_finite:
        for a, name in ((x, "x"), (weight, "weight"), (bias, "bias")):
            if a is not None:
                require_finite(a, name)
    dtype = common_dtype(x, weight, bias)
    return (x.astype(dtype, copy=False), weight.astype(dtype, copy=False),
            None if bias is None else bias.astype(dtype, copy=False))


def linear(x, weight, bias=None, *, check_finite=True):
    """y = x W^T + b for x (N, in), weight (out, in), bias (out,)."""
    x, weight, bias = _validate(x, weight, bias, check_finite=check_finite)
    return linear_into(x, weight, bias, np.empty((x.shape[0], weight.shape[0]), x.dtype))


def linear_into(x, weight, bias, out):
    """Write out = x W^T + b into the caller's buffer ``out``; returns ``out``.

    For a caller that checks once and runs many times (a compiled inference program), so nothing is
    checked here. The contract is what :func:`linear` checks: x (N, in) and weight (out, in)
    C-contiguous of one dtype (float32 or float64), bias (out,) of that dtype or None, ``out`` an
    (N, out) array of that dtype. Every element of ``out`` is overwritten, with the values of
    :func:`linear`, bit for bit. Small layers run on one thread (:func:`._threads.threads_for`).
    """
    out[...] = 0 if bias is None else bias
    with threads_for(out.size * x.shape[1]):
        _linear_forward(x, weight, out)
    return out


def linear_backward(x, weight, grad_out, *, need_grad_x=True, check_finite=True):
    """Gradients of :func:`linear`: ``(grad_x, grad_weight, grad_bias)``."""
    x, weight, _ = _validate(x, weight, None, check_finite=check_finite)
    grad_out = float_array(grad_out, "grad_out", 2)
    if grad_out.shape != (x.shape[0], weight.shape[0]):
        raise ValueError(f"grad_out has shape {grad_out.shape}, expected {(x.shape[0], weight.shape[0])}")
    grad_out = grad_out.astype(x.dtype, copy=False)
    grad_w = np.zeros_like(weight)
    grad_x = np.zeros_like(x) if need_grad_x else None
    with threads_for(grad_out.size * x.shape[1]):
        _linear_grad_weight(grad_out, x, grad_w)
        if need_grad_x:
            _linear_grad_input(grad_out, weight, grad_x)
    return grad_x, grad_w, grad_out.sum(axis=0)
